"""Models: shapes through forward/backward, which layers are sparse and why, seeds, and the 1D CNN against
the same network in PyTorch."""
import numpy as np
import pytest
import torch

from nmref.lbc import LBC
from nmref.models import MODELS, build_model
from nmref.sparsity import SRSTE, Dense, make_method

INPUTS = {"mlp": (1, 40), "cnn1d": (1, 40), "cnn2d": (3, 16, 16), "resnet8": (3, 8, 8), "resnet20": (3, 8, 8)}


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_shapes(name, rng):
    model = build_model(name, make_method("srste", "2:4"), input_shape=INPUTS[name], num_classes=7, rng=0)
    x = rng.standard_normal((3, *INPUTS[name])).astype(np.float32)
    logits = model.forward(x, train=True)
    assert logits.shape == (3, 7) and logits.dtype == np.float32
    dx = model.backward(rng.standard_normal(logits.shape).astype(np.float32))
    assert dx.shape == x.shape
    for p in model.params():
        assert p.grad.shape == p.value.shape and p.grad.dtype == p.value.dtype, p.name
    assert model.forward(x, train=False).shape == (3, 7)


def test_cnn1d_sparse_layers_and_reasons():
    model = build_model("cnn1d", make_method("srste", "2:4"))
    assert sorted(model.sparse_layers()) == ["3", "6"]
    assert isinstance(model[0].method, Dense) and "Cin=1 is not divisible by m=4" in model.notes["0"]
    assert isinstance(model[10].method, Dense) and "last layer" in model.notes["10"]
    assert model[3].method is not model[6].method and isinstance(model[3].method, SRSTE)
    assert model[3].method.weight is model[3].weight
    text = model.describe()
    assert "Cin=1 is not divisible by m=4" in text and "SRSTE(2, 4, lam=0.0002)" in text
    assert "18432 of them in 2 sparse layers" in text


def test_channels_fit_every_pattern_up_to_8_16():
    for pattern in ("1:4", "2:4", "2:8", "4:8", "8:16"):
        assert sorted(build_model("cnn1d", make_method("ste", pattern)).sparse_layers()) == ["3", "6"]
        assert len(build_model("resnet8", make_method("ste", pattern)).sparse_layers()) == 8


def test_sparse_last_strict_and_straddle():
    assert "10" in build_model("cnn1d", make_method("ste", "2:4"), sparse_last=True).sparse_layers()
    mlp = build_model("mlp", make_method("ste", "8:16"))
    assert sorted(mlp.sparse_layers()) == ["3"] and "in_features=40 is not divisible by m=16" in mlp.notes["1"]
    with pytest.raises(ValueError, match=r"layer 0 \(Conv1d weight \(32, 1, 5\)\) cannot be made 2:4"):
        build_model("cnn1d", make_method("ste", "2:4"), strict_sparse=True)
    straddled = build_model("cnn1d", make_method("ste", "2:4", straddle=True))
    assert "0" in straddled.sparse_layers()


def test_a_pattern_no_layer_takes_is_an_error_not_a_dense_model():
    with pytest.raises(ValueError, match=r"no layer can take the pattern 2:3: .*divisible by m=3 .*dense model\); "
                                         r"choose m in \(2, 4, 8, 16, 32, 64\) .*--describe"):
        build_model("cnn1d", make_method("ste", "2:3"))
    with pytest.raises(ValueError, match=r"choose m in \(2, 4, 5, 8, 10, 16, 20, 32, 40, 64, 128, 256\)"):
        build_model("mlp", make_method("srste", "1:3"))
    assert sorted(build_model("mlp", make_method("ste", "1:3"), input_shape=(1, 9)).sparse_layers()) == ["1"]
    assert build_model("cnn1d", make_method("dense")).sparse_layers() == {}


def test_nchw_flatten_layout_groups_over_cin_times_kernel():
    model = build_model("cnn1d", make_method("ste", "2:4"), layout="nchw_flatten")
    assert model[3].layout == "nchw_flatten" and model[10].layout == "linear"
    assert "Cin*kernel=5 is not divisible by m=4" in model.notes["0"]
    model = build_model("cnn1d", make_method("ste", "8:16"), layout="nchw_flatten")
    assert sorted(model.sparse_layers()) == ["3", "6"]                # 96 and 192 divisible by 16


def test_same_seed_same_initial_weights_whatever_the_method():
    dense = build_model("cnn1d", None, rng=5)
    lbc = build_model("cnn1d", make_method("lbc", "2:4"), rng=5)
    other = build_model("cnn1d", None, rng=6)
    for name, p in dense.named_params().items():
        np.testing.assert_array_equal(p.value, lbc.named_params()[name].value)
    assert not np.array_equal(dense[3].weight.value, other[3].weight.value)


def test_lbc_scores_are_named_and_grouped():
    model = build_model("cnn1d", make_method("lbc", "2:4"))
    params = model.named_params()
    assert {n for n, p in params.items() if p.group == "scores"} == {"3.weight.scores", "6.weight.scores"}
    assert all(p.name == n for n, p in params.items())
    assert isinstance(model[3].method, LBC) and params["3.weight.scores"].value.shape == (64 * 3 * 32 // 4, 6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="model='vgg' is not one of"):
        build_model("vgg")
    with pytest.raises(ValueError, match="layout='linear' is not one of"):
        build_model("cnn1d", layout="linear")
    with pytest.raises(ValueError, match=r"cnn1d takes inputs \(C, L\)"):
        build_model("cnn1d", input_shape=(3, 32, 32))


def torch_cnn1d(model):
    """The same network in PyTorch (float64), weights copied from the nmref model."""
    net = torch.nn.Sequential(
        torch.nn.Conv1d(1, 32, 5, 1, 2, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
        torch.nn.Conv1d(32, 64, 3, 2, 1, bias=False), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
        torch.nn.Conv1d(64, 64, 3, 2, 1, bias=False), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(640, 10)).double()
    state = {name: torch.from_numpy(p.value.copy()) for name, p in model.named_params().items()}
    net.load_state_dict(state, strict=False)
    return net


def test_cnn1d_matches_pytorch_forward_and_gradients(rng):
    model = build_model("cnn1d", None, rng=1, dtype=np.float64)
    net = torch_cnn1d(model)
    x = rng.standard_normal((6, 1, 40))
    upstream = rng.standard_normal((6, 10))
    logits = model.forward(x, train=True)
    model.backward(upstream)
    x_t = torch.from_numpy(x)
    out = net(x_t)
    (out * torch.from_numpy(upstream)).sum().backward()
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    torch_params = dict(net.named_parameters())
    for name, p in model.named_params().items():
        expected = torch_params[name].grad.numpy()
        assert np.linalg.norm(p.grad - expected) <= 1e-10 * np.linalg.norm(expected), name


def test_cifar_resnets_have_the_paper_stages_and_shortcuts():
    """He et al. 2016, CIFAR: 16-32-64 channels, stride 2 at the first block of stages 2 and 3 only, a 1x1
    projection there, 6 n + 2 layers (resnet8: n = 1, resnet20: n = 3)."""
    for name, blocks in (("resnet8", 1), ("resnet20", 3)):
        layers = build_model(name).weight_layers()
        convs = [(k, l.weight.value.shape, l.stride) for k, l in layers.items()
                 if "shortcut" not in k and hasattr(l, "stride")]
        assert len(convs) + 1 == 6 * blocks + 2 and convs[0][1:] == ((16, 3, 3, 3), (1, 1))
        assert layers[list(layers)[-1]].weight.value.shape == (10, 64)
        strided = [k for k, _, s in convs if s == (2, 2)]
        assert strided == [f"{3 + blocks * stage}.conv1" for stage in (1, 2)]    # blocks start at layer 3
        shortcuts = {k: (l.weight.value.shape, l.stride) for k, l in layers.items() if "shortcut" in k}
        assert sorted(shortcuts.values()) == [((32, 16, 1, 1), (2, 2)), ((64, 32, 1, 1), (2, 2))]
        assert [l.weight.value.shape[0] for k, l in layers.items() if k.endswith("conv2")] == \
            [16] * blocks + [32] * blocks + [64] * blocks
    cnn2d = build_model("cnn2d")
    assert [l.stride for l in cnn2d.weight_layers().values() if hasattr(l, "stride")] == [(1, 1)] * 3


@pytest.mark.parametrize("seed", [-1, "x", 1.5, True])
def test_bad_seed_is_named(seed):
    with pytest.raises(ValueError, match=f"seed={seed!r} must be an int >= 0"):
        build_model("mlp", rng=seed)
