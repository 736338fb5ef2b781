"""Training loop: determinism, bit-for-bit resume (also after a crash mid-epoch), crash-safe checkpoints,
per-method smoke runs with N:M checks of the final checkpoint, init-from, settings validation."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nmref import train as train_mod
from nmref.masks import is_nm, nm_mask
from nmref.train import ConfigError, TrainConfig, lr_factor, read_checkpoint, read_metrics, timing_free, train

QUICK = dict(model="mlp", batch_size=256, progress=False)


def run(tmp_path, name, **settings):
    return train(TrainConfig(out=str(tmp_path / name), **{**QUICK, **settings}))


def checkpoint_arrays(result):
    arrays, meta = read_checkpoint(result["checkpoint"])
    return arrays, meta


def assert_same_run(a, b):
    arrays_a, meta_a = checkpoint_arrays(a)
    arrays_b, meta_b = checkpoint_arrays(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype, key
        assert arrays_a[key].tobytes() == arrays_b[key].tobytes(), key
    assert meta_a["shuffle_rng"] == meta_b["shuffle_rng"]
    assert (meta_a["epoch"], meta_a["step"]) == (meta_b["epoch"], meta_b["step"])
    rows_a = [timing_free(r) for r in read_metrics(a["out"])]
    rows_b = [timing_free(r) for r in read_metrics(b["out"])]
    assert rows_a == rows_b and len(rows_a) == meta_a["epoch"]


def test_same_seed_same_run_bit_for_bit(tmp_path):
    a = run(tmp_path, "a", method="srste", epochs=2)
    b = run(tmp_path, "b", method="srste", epochs=2)
    assert_same_run(a, b)
    c = run(tmp_path, "c", method="srste", epochs=2, seed=1)
    assert [r["train_loss"] for r in c["history"]] != [r["train_loss"] for r in a["history"]]


@pytest.mark.parametrize("method, settings", [
    ("srste", {}), ("lbc", {"t_f": 2}), ("fixed", {"fix_at": 1}),
    ("ste", {"model": "cnn1d", "train_samples": 256, "test_samples": 128, "batch_size": 128}),  # BatchNorm stats
])
def test_resume_gives_the_uninterrupted_run(tmp_path, method, settings):
    whole = run(tmp_path, "whole", method=method, epochs=4, **settings)
    first = run(tmp_path, "parts", method=method, epochs=4, stop_after=2, **settings)
    assert len(first["history"]) == 2 and not first["finished"]
    resumed = run(tmp_path, "parts", method=method, epochs=4, resume=True, **settings)
    assert resumed["finished"] and len(resumed["history"]) == 4
    assert_same_run(whole, resumed)


def test_resume_after_a_crash_mid_epoch(tmp_path, monkeypatch):
    whole = run(tmp_path, "whole", method="srste", epochs=3)
    real_loss, calls = train_mod.softmax_cross_entropy, []

    def crashing_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 20:                                  # inside epoch 2 (8 steps per epoch)
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)
    monkeypatch.setattr(train_mod, "softmax_cross_entropy", crashing_loss)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "crashed", method="srste", epochs=3)
    monkeypatch.setattr(train_mod, "softmax_cross_entropy", real_loss)
    assert len(read_metrics(tmp_path / "crashed")) == 2
    resumed = run(tmp_path, "crashed", method="srste", epochs=3, resume=True)
    assert_same_run(whole, resumed)


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_savez, saves = np.savez, []

    def savez_failing_the_second_time(file, **arrays):
        saves.append(1)
        if len(saves) == 2:
            file.write(b"PK half a zip")
            raise OSError("disk full")
        real_savez(file, **arrays)
    monkeypatch.setattr(np, "savez", savez_failing_the_second_time)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, "a", method="ste", epochs=3)
    monkeypatch.undo()
    assert not list((tmp_path / "a").glob("*.tmp"))
    arrays, meta = read_checkpoint(tmp_path / "a" / "checkpoint.npz")
    assert meta["epoch"] == 1 and len(meta["history"]) == 1
    whole = run(tmp_path, "whole", method="ste", epochs=3)
    assert_same_run(whole, run(tmp_path, "a", method="ste", epochs=3, resume=True))


def test_overwrite_starts_afresh(tmp_path):
    run(tmp_path, "a", epochs=2)
    again = run(tmp_path, "a", epochs=1, overwrite=True)
    assert len(read_metrics(again["out"])) == 1 and read_checkpoint(again["checkpoint"])[1]["epoch"] == 1


@pytest.mark.parametrize("method", ["dense", "ste", "srste", "fixed", "lbc"])
def test_method_smoke_columns_and_final_nm(tmp_path, method):
    result = train(TrainConfig(method=method, pattern="2:4", epochs=2, batch_size=256, progress=False,
                               out=str(tmp_path / method)))
    row = result["final"]
    for column in train_mod.METRIC_COLUMNS + train_mod.TIMING_COLUMNS:
        assert column in row
    assert 0.1 < row["test_acc"] <= 1 and math.isfinite(row["train_loss"])
    rows_csv = (tmp_path / method / "metrics.csv").read_text().splitlines()
    assert len(rows_csv) == 3 and rows_csv[0].split(",")[: len(train_mod.METRIC_COLUMNS)] == list(
        train_mod.METRIC_COLUMNS)
    arrays, meta = read_checkpoint(result["checkpoint"])
    masks = {k[5:]: v for k, v in arrays.items() if k.startswith("mask/")}
    if method == "dense":
        assert not masks and row["density"] == 1.0 and "sad_step" not in row
        return
    assert sorted(masks) == ["3.weight", "6.weight"]                 # cnn1d: first conv and last Linear dense
    for name, mask in masks.items():
        masked = arrays[f"param/{name}"] * mask
        assert mask.dtype == bool and is_nm(masked, 2, 4, "conv")
        assert mask.sum() == mask.size // 2
    assert row["density"] == pytest.approx(0.5)
    assert {"sad_step", "sad_epoch", "sad_init", "sad_epoch_frac", "sad_step/3"} <= set(row)
    if method == "lbc":
        assert row["is_nm"] is True and row["alive_per_group"] == 1.0
        assert result["history"][0]["alive_per_group"] > 1.0
    if method == "fixed":
        assert row["sad_init"] == 0 and row["sad_step"] == 0
    from nmref.check import check_file
    assert check_file(result["checkpoint"], "2:4")["compliant"]


def test_lbc_scores_get_their_own_weight_decay(tmp_path):
    config = TrainConfig(method="lbc", model="mlp", weight_decay=1e-5, score_weight_decay=3e-4).resolved()
    from nmref.models import build_model
    model = build_model("mlp", train_mod.method_factory(config))
    optimizer = train_mod.make_optimizer(model, config)
    decay = {g["params"][0].group: g["weight_decay"] for g in optimizer.groups}
    assert decay == {"weights": 1e-5, "scores": 3e-4}
    assert all(g["momentum"] == 0.9 and g["lr"] == 0.1 for g in optimizer.groups)


def test_config_options_reach_every_sparse_layers_method():
    """Each method option of the config (none at its default here) is what the model's methods get."""
    cases = {"srste": dict(lam=3e-3), "fixed": dict(fix_at=1),
             "lbc": dict(t_i=1, t_f=3, power=4, removal="faithful", score_weight_decay=7e-4)}
    for method, options in cases.items():
        config = TrainConfig(method=method, model="mlp", epochs=4, **options).resolved(need_data=False)
        layers = train_mod.model_for(config, (1, 40)).sparse_layers()
        assert layers
        for name, layer in layers.items():
            for key, value in options.items():
                assert getattr(layer.method, key) == value, (method, name, key)


def test_every_lbc_forward_sees_this_steps_removal(tmp_path, monkeypatch):
    """The loop calls before_step (removal of the k lowest scores) before each step's forward, so the first
    forward of an epoch whose k grew already has at most C - k alive combinations per group."""
    from nmref.lbc import LBC
    seen, original = [], LBC.masked

    def masked(self, w):
        seen.append((self.epoch, self.k, int(self.current_alive().sum(axis=1).max())))
        return original(self, w)
    monkeypatch.setattr(LBC, "masked", masked)
    run(tmp_path, "lbc", method="lbc", epochs=3, t_f=2, train_samples=256, test_samples=64, batch_size=128)
    assert {(e, k) for e, k, _ in seen} == {(0, 0), (1, 4), (2, 5)}                   # 2:4, C = 6
    assert all(alive <= 6 - k for _, k, alive in seen)


def test_init_from_dense_then_fixed_keeps_the_dense_weights_mask(tmp_path):
    dense = run(tmp_path, "dense", method="dense", epochs=1)
    fixed = run(tmp_path, "fixed", method="fixed", epochs=1, init_from=dense["checkpoint"])
    dense_arrays, _ = read_checkpoint(dense["checkpoint"])
    fixed_arrays, _ = read_checkpoint(fixed["checkpoint"])
    expected = nm_mask(dense_arrays["param/1.weight"], 2, 4, "linear")
    np.testing.assert_array_equal(fixed_arrays["mask/1.weight"], expected)
    fresh = run(tmp_path, "fresh", method="fixed", epochs=1)
    assert fresh["history"][0]["train_loss"] != fixed["history"][0]["train_loss"]


def test_lr_schedule_per_iteration():
    total, warmup = 120, 5
    assert [lr_factor(s, total, warmup, "cosine") for s in range(6)] == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert lr_factor(total - 1, total, warmup, "cosine") < 1e-3
    assert lr_factor(62, total, warmup, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 57 / 115)))
    assert lr_factor(59, total, warmup, "step") == 1.0 and lr_factor(60, total, warmup, "step") == pytest.approx(0.1)
    assert lr_factor(90, total, warmup, "step") == pytest.approx(0.01)
    assert lr_factor(100, total, warmup, "constant") == 1.0 and lr_factor(2, total, warmup, "constant") == 0.4


def test_logged_losses_are_per_sample_means_with_a_partial_last_batch(tmp_path, monkeypatch):
    """train_loss and test_loss weight each batch's mean loss by its size: 300 = 256 + 44 training samples,
    100 = 64 + 36 test samples."""
    real_loss, calls = train_mod.softmax_cross_entropy, []

    def recording_loss(logits, labels, *args, **kwargs):
        loss, dlogits = real_loss(logits, labels, *args, **kwargs)
        calls.append((float(loss), len(labels)))
        return loss, dlogits
    monkeypatch.setattr(train_mod, "softmax_cross_entropy", recording_loss)
    row = run(tmp_path, "a", epochs=1, train_samples=300, test_samples=100, eval_batch_size=64)["final"]
    assert [n for _, n in calls] == [256, 44, 64, 36]
    mean = lambda part: sum(loss * n for loss, n in part) / sum(n for _, n in part)   # noqa: E731
    assert row["train_loss"] == pytest.approx(mean(calls[:2]), rel=1e-6)
    assert row["test_loss"] == pytest.approx(mean(calls[2:]), rel=1e-12)


def test_logged_lr_follows_the_schedule(tmp_path):
    result = run(tmp_path, "a", epochs=2, schedule="constant", warmup_frac=0.0)
    assert [r["lr"] for r in result["history"]] == [0.1, 0.1]


@pytest.mark.parametrize("settings, message", [
    ({"method": "magic"}, "method='magic': choose one of"),
    ({"method": "srste", "pattern": "5:4"}, "keeping N=5 of M=4 is impossible"),
    ({"model": "vgg"}, "model='vgg': choose one of"),
    ({"dataset": "cifar10"}, "data_path=None: dataset 'cifar10' is read from files"),
    ({"epochs": 0}, "epochs=0: must be an integer >= 1"),
    ({"momentum": 1.5}, r"momentum=1.5: must be in \[0, 1\)"),
    ({"init_from": "/nonexistent.npz"}, "init_from='/nonexistent.npz': no such file"),
    ({"seed": -1}, "seed=-1: must be an integer >= 0"),
    ({"seed": 1.5}, "seed=1.5: must be an integer >= 0"),
    ({"lr": float("inf")}, "lr=inf: must be a finite number"),
    ({"lr": float("nan")}, "lr=nan: must be a finite number"),
    ({"weight_decay": float("inf")}, "weight_decay=inf: must be a finite number"),
    ({"momentum": "0.9"}, "momentum='0.9': must be a finite number"),
    ({"method": "lbc", "t_i": 5, "epochs": 2}, r"t_i=5: must be < t_f \(t_f=None: epochs / 2 = 1\)"),
    ({"method": "lbc", "t_f": 1000, "epochs": 2}, r"t_f=1000: must be <= epochs - 1 = 1"),
    ({"method": "lbc", "t_f": 2, "epochs": 2}, r"t_f=2: must be <= epochs - 1 = 1"),
    ({"method": "lbc", "epochs": 1}, r"t_f=None: must be <= epochs - 1 = 0 \(t_f=None: epochs / 2 = 0.5\)"),
    ({"method": "fixed", "fix_at": 100, "epochs": 2}, "fix_at=100: must be < epochs=2"),
    ({"method": "fixed", "fix_at": 2, "epochs": 2}, "fix_at=2: must be < epochs=2"),
])
def test_bad_settings_fail_fast(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, "bad", **settings)


def test_bad_settings_write_nothing(tmp_path):
    for settings in ({"method": "lbc", "t_i": 5, "epochs": 2}, {"method": "ste", "pattern": "2:3"}):
        with pytest.raises(ConfigError):
            run(tmp_path, "bad", **settings)
        assert not (tmp_path / "bad").exists()


def test_schedule_limits_are_exact(tmp_path):
    """The largest t_f and fix_at that validation accepts do end the run N:M (LBC) / fixed (Fixed)."""
    lbc = run(tmp_path, "lbc", method="lbc", model="cnn1d", epochs=3, t_i=1, t_f=2, batch_size=500)
    assert [r["is_nm"] for r in lbc["history"]] == [False, False, True]
    fixed = run(tmp_path, "fixed", method="fixed", model="cnn1d", epochs=2, fix_at=1, batch_size=500)
    assert [r["density"] for r in fixed["history"]] == [1.0, 0.5]


def test_diverging_run_raises_training_diverged(tmp_path):
    with pytest.raises(train_mod.TrainingDiverged, match=r"training diverged at epoch 1, step \d+ \(the "
                                                         r"(weights|logits) became NaN or inf\); lower --lr") as err:
        run(tmp_path, "div", method="srste", lr=1e6)
    assert isinstance(err.value, ConfigError) and err.value.epoch == 1 and err.value.step >= 1


def test_run_directory_protection_and_resume_checks(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=True but .* does not exist"):
        run(tmp_path, "a", resume=True)
    run(tmp_path, "a", epochs=1)
    with pytest.raises(FileExistsError, match="already holds a run"):
        run(tmp_path, "a", epochs=1)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.1 -> 0.05\)"):
        run(tmp_path, "a", epochs=1, lr=0.05, resume=True)
    again = run(tmp_path, "a", epochs=1, resume=True)
    assert len(again["history"]) == 1 and again["finished"]


# ---- the whole loop against PyTorch, float64 --------------------------------------------------------
class TorchSRSTE(torch.autograd.Function):
    """W~ = E * W, 2:4 magnitude mask along Cin at each kernel position; dW = g + lam (1 - E) W."""

    @staticmethod
    def forward(ctx, w, lam):
        cout, cin, k = w.shape
        groups = w.detach().permute(0, 2, 1).reshape(-1, 4)
        pruned = torch.argsort(groups.abs(), dim=1, stable=True)[:, :2]
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(1, pruned, False)
        mask = mask.reshape(cout, k, cin).permute(0, 2, 1)
        ctx.save_for_backward(w, mask)
        ctx.lam = lam
        return w * mask

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        return g + ctx.lam * (~mask) * w, None


class TorchSRSTEConv1d(torch.nn.Conv1d):
    def forward(self, x):
        return F.conv1d(x, TorchSRSTE.apply(self.weight, 2e-4), None, self.stride, self.padding)


def torch_run(config, init, data):
    """The nmref loop written in PyTorch: cnn1d, SGD with coupled weight decay, warm-up + cosine per step."""
    nn = torch.nn
    conv = TorchSRSTEConv1d if config.method == "srste" else nn.Conv1d
    net = nn.Sequential(nn.Conv1d(1, 32, 5, 1, 2, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                        conv(32, 64, 3, 2, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                        conv(64, 64, 3, 2, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                        nn.Flatten(), nn.Linear(640, 10)).double()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()}, strict=False)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    x, y = torch.from_numpy(data.x_train.astype(np.float64)), torch.from_numpy(data.y_train)
    shuffle = np.random.default_rng([config.seed, 1])
    per_epoch = -(-len(y) // config.batch_size)
    total, step = config.epochs * per_epoch, 0
    for _ in range(config.epochs):
        order = torch.from_numpy(shuffle.permutation(len(y)))
        for begin in range(0, len(y), config.batch_size):
            for group in opt.param_groups:
                group["lr"] = config.lr * lr_factor(step, total, round(config.warmup_frac * total), "cosine")
            idx = order[begin: begin + config.batch_size]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return {k: v.detach().numpy() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("method", ["dense", "srste"])
def test_loop_matches_pytorch_in_float64(tmp_path, method):
    from nmref.data import load
    config = TrainConfig(method=method, dtype="float64", epochs=2, batch_size=256, progress=False,
                         out=str(tmp_path / method)).resolved()
    init = {k: p.value.copy() for k, p in train_mod.model_for(config, (1, 40)).named_params().items()}
    arrays, _ = read_checkpoint(train(config)["checkpoint"])
    expected = torch_run(config, init, load("mnist1d"))
    for name, value in expected.items():
        ours = arrays.get(f"param/{name}", arrays.get(f"buffer/{name}"))
        if ours is None:
            assert name.endswith("num_batches_tracked")
            continue
        assert np.linalg.norm(ours - value) <= 1e-9 * np.linalg.norm(value), name


def test_train_and_test_subsets(tmp_path):
    from nmref.data import load
    result = train(TrainConfig(out=str(tmp_path / "sub"), epochs=1, train_samples=300, test_samples=100,
                               progress=False))
    assert (result["n_train"], result["n_test"]) == (300, 100)
    full = load("mnist1d")
    with pytest.raises(ConfigError, match="train_samples"):
        train(TrainConfig(out=str(tmp_path / "big"), epochs=1, train_samples=len(full.y_train) + 1, progress=False))
    with pytest.raises(ConfigError, match="test_samples"):
        TrainConfig(test_samples=-1).resolved()


def test_out_on_a_file_path_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="out=.*is not a folder"):
        TrainConfig(out=str(blocker)).resolved(need_data=False)
    with pytest.raises(ConfigError, match="out=.*lies under .*which is not a folder"):
        TrainConfig(out=str(blocker / "run")).resolved(need_data=False)
