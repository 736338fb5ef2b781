"""The same tests on NumPy and on CuPy (``xp`` parameter; the CuPy half is skipped where CuPy sees no GPU).

Every test checks the backend against an oracle that does not depend on it: the public SR-STE / LBC code's
golden files, PyTorch autograd on the CPU, the NumPy reference mask, or a CPU run of the same seed.
Tolerances are docs/tolerances.md's."""
import numpy as np
import pytest

from nmref import Param, SRSTE, STE, nm_mask, to_device, to_host
from nmref.backend import array_module, gpu_available
from nmref.masks import nm_mask_reference
from nmref.sparsity import masked_grad

from test_golden_srste import FILES as SRSTE_FILES, load as load_golden


def rel(a, b):
    a, b = np.asarray(to_host(a), np.float64), np.asarray(to_host(b), np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    if request.param == "numpy":
        return np
    cupy = pytest.importorskip("cupy")
    if not gpu_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    return cupy


def device(xp):
    return "cpu" if xp is np else "gpu"


# ---------------------------------------------------------------- masks and the three weight-gradient rules
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape, layout, n, m", [((7, 12), "linear", 2, 4), ((5, 16), "linear", 1, 4),
                                                 ((3, 24), "linear", 2, 8), ((6, 8, 3, 3), "conv", 2, 4),
                                                 ((4, 16, 1, 5), "conv", 4, 8), ((3, 8, 5), "conv", 2, 4)])
def test_nm_mask_identical_to_the_reference(xp, dtype, shape, layout, n, m):
    rng = np.random.default_rng(sum(shape) + n + m)
    w = rng.standard_normal(shape).astype(dtype)
    ties = rng.integers(-2, 3, shape).astype(dtype)                # many ties, zeros and -0.0
    ties[..., 0] = -0.0
    for host_w in (w, ties):
        mask = nm_mask(to_device(host_w, device(xp)), n, m, layout)
        assert array_module(mask) is xp and mask.dtype == bool
        np.testing.assert_array_equal(to_host(mask), nm_mask_reference(host_w, n, m, layout))


@pytest.mark.parametrize("name", SRSTE_FILES)
def test_srste_mask_and_gradient_match_public_code(xp, name):
    d = load_golden(name)
    n, m, lam = int(d["n"]), int(d["m"]), float(d["lam"])
    layout = "conv" if "conv" in name else "linear"
    w, g = xp.asarray(d["weight"]), xp.asarray(d["grad_masked"])
    method = SRSTE(n, m, lam=lam).bind(Param(w.copy(), "weight"), layout)
    w_tilde = method.masked(w)
    np.testing.assert_array_equal(to_host(method.mask), d["mask"])
    np.testing.assert_array_equal(to_host(w_tilde), d["masked_weight"])
    assert rel(method.weight_grad(g, w), d["weight_grad"]) < 1e-12
    ste = STE(n, m).bind(Param(w.copy()), layout)
    ste.masked(w)
    np.testing.assert_array_equal(to_host(ste.weight_grad(g, w)), d["grad_masked"])        # STE: dW = g
    np.testing.assert_array_equal(to_host(masked_grad(g, w, method.mask)), d["grad_masked"] * d["mask"])


def test_srste_conv_sgd_5_steps_match_public_code(xp):
    from nmref.layers import Conv2d
    from nmref.losses import mse_loss
    from nmref.optim import SGD
    d = load_golden("srste_conv_sgd_5steps.npz")
    n, m, lam = int(d["n"]), int(d["m"]), float(d["lam"])
    cout, cin, kh, kw = d["weight0"].shape
    conv = Conv2d(cin, cout, (kh, kw), padding=1, bias=False, method=lambda: SRSTE(n, m, lam=lam), rng=0,
                  dtype=np.float64)
    conv.weight.value = d["weight0"].copy()
    conv.to_device(device(xp))
    opt = SGD(conv.params(), lr=float(d["lr"]), momentum=float(d["momentum"]), weight_decay=float(d["weight_decay"]))
    losses = []
    for x, target in zip(d["inputs"], d["targets"]):
        loss, dy = mse_loss(conv.forward(xp.asarray(x)), xp.asarray(target))
        losses.append(float(loss))
        conv.backward(dy)
        opt.step()
    assert array_module(conv.weight.value) is xp
    assert rel(np.array(losses), d["losses"]) < 1e-12
    assert rel(conv.weight.value, d["weight_final"]) < 1e-12


@pytest.mark.parametrize("pattern", ["1to4", "2to4", "4to8"])
def test_lbc_forward_and_gradients_match_public_code(xp, pattern):
    from nmref.layers import Conv2d
    from nmref.lbc import LBC
    d = load_golden(f"lbc_conv_{pattern}.npz")
    n, m = int(d["n"]), int(d["m"])
    cout, cin, kh, kw = d["weight"].shape
    layer = Conv2d(cin, cout, (kh, kw), padding=1, bias=False, method=lambda: LBC(n, m), rng=0, dtype=np.float64)
    layer.weight.value[...] = d["weight"]
    layer.method.scores.value[...] = d["alpha"]
    layer.to_device(device(xp))
    out = layer.forward(xp.asarray(d["x"]))
    np.testing.assert_array_equal(to_host(layer.method.mask), d["mask"])
    assert rel(out, d["out"]) < 1e-10
    layer.backward(xp.asarray(d["grad_out"]))
    assert rel(layer.weight.grad, d["weight_grad"]) < 1e-10
    assert rel(layer.method.scores.grad, d["alpha_grad"]) < 1e-10
    assert array_module(layer.method.scores.grad) is xp


# ---------------------------------------------------------------- layers, losses and the optimizer vs PyTorch
def _torch():
    return pytest.importorskip("torch")


def _run_layer(xp, layer, x, seed=0):
    """forward + backward of an nmref layer on xp with a random upstream gradient: (y, dx, grads by name)."""
    layer.to_device(device(xp))
    y = layer.forward(xp.asarray(x), train=True)
    dy = np.random.default_rng(seed).standard_normal(y.shape)                   # same shape as y
    dx = layer.backward(xp.asarray(dy))
    return to_host(y), to_host(dx), {k: to_host(p.grad) for k, p in layer.named_params().items()}, dy


def _torch_grads(fn, x, dy, *params):
    torch = _torch()
    xt = torch.tensor(x, requires_grad=True)
    pt = [torch.tensor(p, requires_grad=True) for p in params]
    yt = fn(xt, *pt)
    (yt * torch.tensor(dy)).sum().backward()
    return yt.detach().numpy(), xt.grad.numpy(), [p.grad.numpy() for p in pt]


def test_linear_with_srste_matches_torch(xp):
    from nmref.layers import Linear
    torch = _torch()
    lam = 2e-4
    layer = Linear(24, 8, method=lambda: SRSTE(2, 4, lam=lam), rng=1, dtype=np.float64)
    w, b = layer.weight.value.copy(), layer.bias.value.copy()
    mask = nm_mask_reference(w, 2, 4, "linear")
    x = np.random.default_rng(2).standard_normal((5, 24))
    y, dx, grads, dy = _run_layer(xp, layer, x)
    yt, dxt, (dw_tilde, db) = _torch_grads(torch.nn.functional.linear, x, dy, w * mask, b)      # grads wrt W~
    assert rel(y, yt) < 1e-10 and rel(dx, dxt) < 1e-10
    assert rel(grads["weight"], dw_tilde + lam * (~mask) * w) < 1e-10
    assert rel(grads["bias"], db) < 1e-10


@pytest.mark.parametrize("kind", ["conv2d", "conv1d"])
def test_convolutions_with_ste_match_torch(xp, kind):
    from nmref.layers import Conv1d, Conv2d
    torch = _torch()
    rng = np.random.default_rng(3)
    if kind == "conv2d":
        layer = Conv2d(8, 6, 3, stride=2, padding=1, method=lambda: STE(2, 4), rng=4, dtype=np.float64)
        x, conv = rng.standard_normal((2, 8, 7, 6)), torch.nn.functional.conv2d
    else:
        layer = Conv1d(8, 6, 3, stride=1, padding=1, method=lambda: STE(2, 4), rng=4, dtype=np.float64)
        x, conv = rng.standard_normal((3, 8, 11)), torch.nn.functional.conv1d
    w, b = layer.weight.value.copy(), layer.bias.value.copy()
    mask = nm_mask_reference(w, 2, 4, "conv")
    y, dx, grads, dy = _run_layer(xp, layer, x)
    stride = 2 if kind == "conv2d" else 1
    yt, dxt, (dw_tilde, db) = _torch_grads(lambda x, w, b: conv(x, w, b, stride=stride, padding=1), x, dy, w * mask, b)
    assert rel(y, yt) < 1e-10 and rel(dx, dxt) < 1e-10
    assert rel(grads["weight"], dw_tilde) < 1e-10 and rel(grads["bias"], db) < 1e-10


def test_batchnorm_pooling_relu_match_torch(xp):
    from nmref.layers import BatchNorm, GlobalAvgPool, MaxPool1d, MaxPool2d, ReLU
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(5)
    bn = BatchNorm(4, dtype=np.float64)
    bn.weight.value[...] = rng.uniform(0.5, 1.5, 4)
    bn.bias.value[...] = rng.standard_normal(4)
    gamma, beta = bn.weight.value.copy(), bn.bias.value.copy()
    x = rng.standard_normal((3, 4, 5, 6))
    y, dx, grads, dy = _run_layer(xp, bn, x)
    yt, dxt, (dg, db) = _torch_grads(lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True),
                                     x, dy, gamma, beta)
    assert rel(y, yt) < 1e-10 and rel(dx, dxt) < 1e-10
    assert rel(grads["weight"], dg) < 1e-10 and rel(grads["bias"], db) < 1e-10
    running_var = 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1)
    assert rel(bn.running_var, running_var) < 1e-12 and array_module(bn.running_var) is xp
    cases = [(MaxPool2d(2), rng.standard_normal((2, 3, 6, 8)), lambda x: F.max_pool2d(x, 2)),
             (MaxPool1d(3), rng.standard_normal((2, 3, 12)), lambda x: F.max_pool1d(x, 3)),
             (ReLU(), rng.standard_normal((4, 7)), F.relu),
             (GlobalAvgPool(), rng.standard_normal((2, 5, 3, 4)), lambda x: x.mean(dim=(2, 3)))]
    for layer, x, fn in cases:
        y, dx, _, dy = _run_layer(xp, layer, x)
        yt, dxt, _ = _torch_grads(fn, x, dy)
        assert rel(y, yt) < 1e-12 and rel(dx, dxt) < 1e-12, type(layer).__name__


def test_cross_entropy_with_label_smoothing_matches_torch(xp):
    from nmref.losses import accuracy, softmax_cross_entropy
    torch = _torch()
    rng = np.random.default_rng(6)
    logits, labels = rng.standard_normal((9, 5)) * 3, rng.integers(0, 5, 9)
    loss, dlogits = softmax_cross_entropy(xp.asarray(logits), xp.asarray(labels), label_smoothing=0.1)
    zt = torch.tensor(logits, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(labels), label_smoothing=0.1)
    lt.backward()
    assert rel(loss, lt.item()) < 1e-12 and rel(dlogits, zt.grad.numpy()) < 1e-12
    assert accuracy(xp.asarray(logits), xp.asarray(labels)) == float((logits.argmax(1) == labels).mean())


def test_sgd_groups_match_torch(xp):
    from nmref.optim import SGD
    torch = _torch()
    rng = np.random.default_rng(7)
    values = [rng.standard_normal((4, 8)), rng.standard_normal(8), rng.standard_normal((3, 6))]
    params = [Param(xp.asarray(v.copy()), f"p{i}") for i, v in enumerate(values)]
    params[2].group = "scores"
    opt = SGD([{"params": params[:2], "nesterov": True, "weight_decay": 5e-4}, {"params": params[2:], "lr": 0.3}],
              lr=0.1, momentum=0.9)
    tparams = [torch.tensor(v.copy()) for v in values]
    topt = torch.optim.SGD([{"params": tparams[:2], "nesterov": True, "weight_decay": 5e-4},
                            {"params": tparams[2:], "lr": 0.3}], lr=0.1, momentum=0.9)
    for step in range(10):
        scale = 0.5 if step >= 5 else 1.0
        opt.set_lr_scale(scale)
        for g, base in zip(topt.param_groups, (0.1, 0.3)):
            g["lr"] = base * scale
        for p, tp in zip(params, tparams):
            grad = rng.standard_normal(tp.shape)
            p.grad = xp.asarray(grad)
            tp.grad = torch.tensor(grad)
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        assert rel(p.value, tp.numpy()) < 1e-12 and array_module(p.value) is xp
    state = opt.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())                    # host arrays for checkpoints


def test_sad_on_device_masks(xp):
    from nmref.sad import SADTracker, sad
    rng = np.random.default_rng(8)
    masks = [rng.random((6, 8)) < 0.5 for _ in range(4)]
    count, fraction = sad(xp.asarray(masks[0]), xp.asarray(masks[1]))
    assert count == int((masks[0] != masks[1]).sum()) and fraction == count / 48
    tracker = SADTracker()
    tracker.start({"a": xp.asarray(masks[0])})
    for mask in masks[1:]:
        tracker.step({"a": xp.asarray(mask)})
    metrics = tracker.end_epoch()
    expected_steps = sum(int((a != b).sum()) for a, b in zip(masks, masks[1:]))
    assert metrics["sad_step"] == expected_steps
    assert metrics["sad_init"] == int((masks[0] != masks[-1]).sum())


# ---------------------------------------------------------------- training: CPU vs device, checkpoints
def _few_steps(dev, steps=5):
    from nmref.losses import softmax_cross_entropy
    from nmref.models import build_model
    from nmref.optim import SGD
    model = build_model("mlp", lambda: SRSTE(2, 4), rng=11, input_shape=(40,), num_classes=10)
    model.to_device(dev)
    opt = SGD(model.params(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    rng = np.random.default_rng(12)
    losses, masks = [], []
    for _ in range(steps):
        x = to_device(rng.standard_normal((32, 40)).astype(np.float32), dev)
        y = to_device(rng.integers(0, 10, 32), dev)
        loss, dlogits = softmax_cross_entropy(model.forward(x, train=True), y)
        model.backward(dlogits)
        opt.step()
        losses.append(float(loss))
        masks.append({k: to_host(layer.method.mask) for k, layer in model.sparse_layers().items()})
    return np.array(losses), masks


def test_few_training_steps_same_masks_and_losses_as_the_cpu(xp):
    cpu_losses, cpu_masks = _few_steps("cpu")
    losses, masks = _few_steps(device(xp))
    assert cpu_masks[0] and len(cpu_masks[0]) == 2                                # two sparse Linear layers
    for step, (a, b) in enumerate(zip(masks, cpu_masks)):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"step {step} layer {name}")
    if xp is np:
        np.testing.assert_array_equal(losses, cpu_losses)                           # same seed: bit for bit
    else:
        assert rel(losses, cpu_losses) < 1e-5                                       # docs/tolerances.md
    assert losses[-1] != losses[0]


def test_train_on_device_then_resume_on_the_other(xp, tmp_path):
    from nmref.train import TrainConfig, read_checkpoint, train
    if xp is np:
        pytest.skip("CPU training and resume are tests/test_train.py's; this is the GPU <-> CPU hand-over")
    dev, other = "gpu", "cpu"
    config = TrainConfig(model="mlp", method="srste", epochs=2, stop_after=1, batch_size=64, out=str(tmp_path),
                         progress=False, device=dev)
    first = train(config)
    assert not first["finished"] and np.isfinite(first["final"]["train_loss"])
    arrays, meta = read_checkpoint(first["checkpoint"])
    assert arrays and all(type(v) is np.ndarray for v in arrays.values())         # host arrays only
    with np.load(first["checkpoint"], allow_pickle=False) as f:                    # loadable without CuPy
        assert len(f.files) > 0
    second = train(config, device=other, resume=True, stop_after=None)
    assert second["finished"] and len(second["history"]) == 2
    assert np.isfinite(second["final"]["test_loss"])


def test_nmref_train_cli_on_the_gpu(xp, tmp_path):
    from nmref.cli import main
    if xp is np:
        pytest.skip("the CPU CLI is tests/test_train.py's")
    code = main(["train", "--device", "gpu", "--model", "mlp", "--method", "srste", "--pattern", "2:4", "--epochs", "1",
                 "--batch-size", "64", "--out", str(tmp_path), "--no-progress"])
    assert code in (0, None)
    assert (tmp_path / "checkpoint.npz").is_file() and (tmp_path / "metrics.jsonl").is_file()
