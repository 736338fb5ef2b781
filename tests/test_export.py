"""nmref export: PyTorch loads the exported state dict (strict) into the equivalent nn.Sequential and gives
nmref's eval-mode forward; nmref check accepts the export in every format."""
import json

import numpy as np
import pytest
import torch

from nmref.check import check_file, main
from nmref.export import export_checkpoint
from nmref.layers import BatchNorm, Conv2d, Flatten, Linear, ReLU, Sequential
from nmref.optim import SGD
from nmref.sparsity import SRSTE

FORMATS = ("safetensors", "pt", "npz")


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64))


def train_a_few_steps(model, x, steps=3):
    """Plain SGD on a random linear functional of the output: weights move, masks and BN stats are real."""
    rng = np.random.default_rng(7)
    opt = SGD(model.params(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        y = model.forward(x, train=True)
        model.backward(rng.standard_normal(y.shape).astype(y.dtype))
        opt.step()
    model.forward(x, train=False)                       # the masks of the stored weights, as a checkpoint holds


def save_nmref_checkpoint(model, path, extra=None):
    """The documented checkpoint layout: param/<name>, mask/<name> (sparse layers), buffer/<name>, meta."""
    entries = {f"param/{k}": p.value for k, p in model.named_params().items()}
    entries.update({f"mask/{k}.weight": layer.method.mask for k, layer in model.sparse_layers().items()})
    entries.update({f"buffer/{k}": v for k, v in model.buffers().items()})
    entries["meta"] = np.array(json.dumps({"model": "hand-built", "step": 3}))
    entries.update(extra or {})
    np.savez(path, **entries)


def load_exported(path):
    if path.suffix == ".pt":
        return torch.load(path, weights_only=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    with np.load(path) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


def check_export_matches_torch(model, torch_model, x, ckpt, tmp_path, capsys):
    expected = model.forward(x, train=False)
    for fmt in FORMATS:
        out = tmp_path / f"export.{fmt}"
        assert main(["export", str(ckpt), str(out)]) == 0
        assert "masks" in capsys.readouterr().out
        state = load_exported(out)
        masks = {k: v for k, v in state.items() if k.endswith("_mask")}
        assert masks and all(v.dtype == torch.bool for v in masks.values())
        torch_model.load_state_dict({k: v for k, v in state.items() if k not in masks}, strict=True)
        torch_model.eval()
        with torch.no_grad():
            got = torch_model(torch.from_numpy(x)).numpy()
        assert rel(got, expected) < 1e-5, fmt
        for name, mask in masks.items():
            weight = state[name[: -len("_mask")]]
            assert torch.equal(weight != 0, mask & (weight != 0)) and not mask.all()
        report = check_file(out, "2:4")
        assert report["compliant"], fmt
        assert {t["mask"] for t in report["tensors"]} == set(masks)


def test_mlp_export_loads_into_torch_sequential(tmp_path, capsys):
    rng = np.random.default_rng(0)
    sparse = lambda: SRSTE(2, 4)                                                   # noqa: E731
    model = Sequential(Linear(16, 12, method=sparse, rng=rng), BatchNorm(12), ReLU(),
                       Linear(12, 8, method=sparse, rng=rng), ReLU(), Linear(8, 3, rng=rng))
    x = rng.standard_normal((32, 16)).astype(np.float32)
    train_a_few_steps(model, x)
    ckpt = tmp_path / "ckpt.npz"
    save_nmref_checkpoint(model, ckpt, {"optimizer/momentum/0.weight": np.zeros((12, 16), np.float32)})
    torch_model = torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.BatchNorm1d(12), torch.nn.ReLU(),
                                      torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    check_export_matches_torch(model, torch_model, x, ckpt, tmp_path, capsys)
    state = export_checkpoint(ckpt, tmp_path / "again.npz")
    assert int(state["1.num_batches_tracked"]) == 3
    np.testing.assert_array_equal(state["1.running_var"], model[1].running_var)
    assert not np.allclose(state["1.running_var"], 1.0)                           # real statistics
    assert "optimizer/momentum/0.weight" not in state and "5.weight_mask" not in state


def test_conv_export_keeps_the_oihw_layout(tmp_path, capsys):
    rng = np.random.default_rng(1)
    model = Sequential(Conv2d(8, 4, 3, padding=1, method=lambda: SRSTE(2, 4), rng=rng), BatchNorm(4), ReLU(),
                       Flatten(), Linear(4 * 6 * 6, 3, rng=rng))
    x = rng.standard_normal((4, 8, 6, 6)).astype(np.float32)
    train_a_few_steps(model, x)
    ckpt = tmp_path / "conv.npz"
    save_nmref_checkpoint(model, ckpt)
    torch_model = torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                      torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3))
    check_export_matches_torch(model, torch_model, x, ckpt, tmp_path, capsys)
    report = check_file(tmp_path / "export.safetensors", "2:4", layout="nchw_flatten")
    assert not report["compliant"]                                                # NHWC groups, not NCHW


def test_method_parameters_are_left_out(tmp_path):
    ckpt = tmp_path / "lbc.npz"
    w = np.ones((4, 8), np.float32)
    mask = np.tile([True, True, False, False], (4, 2))
    np.savez(ckpt, **{"param/0.weight": w, "param/0.weight.scores": np.ones((8, 6)), "mask/0.weight": mask})
    state = export_checkpoint(ckpt, tmp_path / "out.npz")
    assert sorted(state) == ["0.weight", "0.weight_mask"]
    np.testing.assert_array_equal(state["0.weight"], w * mask)


def test_bad_inputs_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "plain.npz", w=np.ones((4, 4)))
    assert main(["export", str(tmp_path / "plain.npz"), str(tmp_path / "out.pt")]) == 2
    assert "not an nmref checkpoint" in capsys.readouterr().err
    np.savez(tmp_path / "ckpt.npz", **{"param/0.weight": np.ones((4, 4))})
    assert main(["export", str(tmp_path / "ckpt.npz"), str(tmp_path / "out.onnx")]) == 2
    assert "unknown extension" in capsys.readouterr().err
    for ext in FORMATS:                                                          # was a traceback (exit 1)
        assert main(["export", str(tmp_path / "ckpt.npz"), str(tmp_path / "nodir" / f"out.{ext}")]) == 2
        assert capsys.readouterr().err.strip().endswith("nodir' does not exist; create it first")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "ckpt.npz").read_bytes()[:50])
    assert main(["export", str(tmp_path / "cut.npz"), str(tmp_path / "out.npz")]) == 2
    assert capsys.readouterr().err.count("\n") == 1



TORCH_EQUIVALENT = {
    "mlp": lambda: torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(40, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10)),
    "cnn1d": lambda: torch.nn.Sequential(
        torch.nn.Conv1d(1, 32, 5, 1, 2, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Conv1d(32, 64, 3, 2, 1, bias=False), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
        torch.nn.Conv1d(64, 64, 3, 2, 1, bias=False), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(640, 10)),
}


@pytest.mark.parametrize("model_name", ["mlp", "cnn1d"])
def test_trained_nmref_checkpoint_exports_to_torch(model_name, tmp_path, capsys):
    from nmref.data import load
    from nmref.models import build_model
    from nmref.train import TrainConfig, load_init, method_factory, train
    config = TrainConfig(dataset="mnist1d", model=model_name, method="srste", pattern="2:4", epochs=1,
                         out=str(tmp_path / "run"), progress=False)
    ckpt = train(config)["checkpoint"]
    report = check_file(ckpt, "2:4")
    assert report["compliant"] and report["format"] == "nmref-checkpoint"
    sparse_names = {t["name"] for t in report["tensors"]}
    assert sparse_names == ({"1.weight", "3.weight"} if model_name == "mlp" else {"3.weight", "6.weight"})
    model = build_model(model_name, method_factory(config), input_shape=(1, 40), num_classes=10)
    load_init(model, ckpt)
    x = load("mnist1d").x_test[:64]
    for fmt in FORMATS:
        out = tmp_path / f"export.{fmt}"
        assert main(["export", str(ckpt), str(out)]) == 0
        state = load_exported(out)
        assert {k[: -len("_mask")] for k in state if k.endswith("_mask")} == sparse_names
        torch_model = TORCH_EQUIVALENT[model_name]()
        shapes = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("_mask")}
        assert shapes == {k: tuple(v.shape) for k, v in torch_model.state_dict().items()}, fmt   # 0-d counters too
        torch_model.load_state_dict({k: v for k, v in state.items() if not k.endswith("_mask")}, strict=True)
        with torch.no_grad():
            got = torch_model.eval()(torch.from_numpy(x)).numpy()
        assert rel(got, model.forward(x, train=False)) < 1e-5, fmt
        assert main(["check", str(out), "--pattern", "2:4"]) == 0
    capsys.readouterr()
