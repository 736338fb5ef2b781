"""Layers against PyTorch autograd (random upstream gradient) and central finite differences."""
import re

import numpy as np
import pytest
import torch

from nmref.backend import gpu_available
from nmref.layers import (BatchNorm, Conv1d, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool1d, MaxPool2d,
                          ReLU, ResidualBlock, Sequential)
from nmref.params import Param
from nmref.sparsity import SRSTE, Dense, Method

TOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def tt(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def copy_into(torch_param, param):
    with torch.no_grad():
        torch_param.copy_(tt(param.value))


def run_torch(module, x, dout):
    """Forward and backward of a torch module; returns (out, dx)."""
    xt = tt(x).requires_grad_()
    out = module(xt)
    (out * tt(dout)).sum().backward()
    return out.detach().numpy(), xt.grad.numpy()


def check_against_torch(layer, module, x, rng, pairs, train=True):
    """Compare output, dx and every (nmref Param, torch parameter) gradient pair."""
    tol = TOL[x.dtype.type]
    y = layer.forward(x, train=train)
    dout = rng.standard_normal(y.shape).astype(x.dtype)
    out_t, dx_t = run_torch(module, x, dout)
    dx = layer.backward(dout)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    assert y.shape == out_t.shape and dx.shape == x.shape
    assert rel_err(y, out_t) < tol
    assert rel_err(dx, dx_t) < tol
    for p, tp in pairs:
        assert p.grad.shape == p.value.shape
        assert rel_err(p.grad, tp.grad.numpy()) < tol, p.name


def torch_dtype(dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


# ---------------------------------------------------------------- Linear / convolutions vs torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(dtype, bias, rng):
    for _ in range(3):
        b, n_in, n_out = rng.integers(1, 9, size=3)
        layer = Linear(n_in, n_out, bias=bias, rng=rng, dtype=dtype)
        module = torch.nn.Linear(n_in, n_out, bias=bias, dtype=torch_dtype(dtype))
        copy_into(module.weight, layer.weight)
        pairs = [(layer.weight, module.weight)]
        if bias:
            copy_into(module.bias, layer.bias)
            pairs.append((layer.bias, module.bias))
        check_against_torch(layer, module, rng.standard_normal((b, n_in)).astype(dtype), rng, pairs)


def random_conv2d_config(seed):
    r = np.random.default_rng(seed)
    kh, kw = r.integers(1, 5, size=2)
    ph, pw = r.integers(0, 3, size=2)
    sh, sw = r.integers(1, 4, size=2)
    h, w = kh + r.integers(0, 7) - min(ph, kh - 1), kw + r.integers(0, 7) - min(pw, kw - 1)
    return dict(n=int(r.integers(1, 4)), cin=int(r.integers(1, 6)), cout=int(r.integers(1, 7)), h=max(int(h), 1),
                w=max(int(w), 1), kernel=(int(kh), int(kw)), stride=(int(sh), int(sw)), padding=(int(ph), int(pw)),
                bias=bool(r.integers(0, 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(12))
def test_conv2d_matches_torch(seed, dtype, rng):
    cfg = random_conv2d_config(seed)
    layer = Conv2d(cfg["cin"], cfg["cout"], cfg["kernel"], cfg["stride"], cfg["padding"], bias=cfg["bias"],
                   rng=rng, dtype=dtype)
    module = torch.nn.Conv2d(cfg["cin"], cfg["cout"], cfg["kernel"], cfg["stride"], cfg["padding"],
                             bias=cfg["bias"], dtype=torch_dtype(dtype))
    copy_into(module.weight, layer.weight)
    pairs = [(layer.weight, module.weight)]
    if cfg["bias"]:
        copy_into(module.bias, layer.bias)
        pairs.append((layer.bias, module.bias))
    x = rng.standard_normal((cfg["n"], cfg["cin"], cfg["h"], cfg["w"])).astype(dtype)
    check_against_torch(layer, module, x, rng, pairs)


@pytest.mark.parametrize("memory", ["channels_last", "strided"])
def test_conv2d_accepts_any_memory_layout(memory, rng):
    if memory == "channels_last":
        x = rng.standard_normal((2, 9, 11, 3)).transpose(0, 3, 1, 2)             # NHWC memory
    else:
        x = rng.standard_normal((2, 3, 18, 22))[:, :, ::2, ::2]
    layer = Conv2d(3, 4, 3, stride=2, padding=1, rng=rng, dtype=np.float64)
    module = torch.nn.Conv2d(3, 4, 3, 2, 1, dtype=torch.float64)
    copy_into(module.weight, layer.weight)
    copy_into(module.bias, layer.bias)
    check_against_torch(layer, module, x, rng, [(layer.weight, module.weight), (layer.bias, module.bias)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_conv1d_matches_torch(seed, dtype, rng):
    r = np.random.default_rng(100 + seed)
    k, s, p = int(r.integers(1, 6)), int(r.integers(1, 4)), int(r.integers(0, 3))
    cin, cout, n = (int(v) for v in r.integers(1, 6, size=3))
    length = k + int(r.integers(0, 9))
    layer = Conv1d(cin, cout, k, s, p, bias=bool(seed % 2), rng=rng, dtype=dtype)
    module = torch.nn.Conv1d(cin, cout, k, s, p, bias=bool(seed % 2), dtype=torch_dtype(dtype))
    copy_into(module.weight, layer.weight)
    pairs = [(layer.weight, module.weight)]
    if layer.bias is not None:
        copy_into(module.bias, layer.bias)
        pairs.append((layer.bias, module.bias))
    check_against_torch(layer, module, rng.standard_normal((n, cin, length)).astype(dtype), rng, pairs)


# ---------------------------------------------------------------- BatchNorm vs torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 7), (3, 4, 5, 6)])
def test_batchnorm_matches_torch_train_eval_and_running_stats(shape, dtype, rng):
    c = shape[1]
    layer = BatchNorm(c, dtype=dtype)
    module = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[len(shape)](
        c, dtype=torch_dtype(dtype))
    layer.weight.value = rng.uniform(0.5, 1.5, c).astype(dtype)
    layer.bias.value = rng.standard_normal(c).astype(dtype)
    copy_into(module.weight, layer.weight)
    copy_into(module.bias, layer.bias)
    pairs = [(layer.weight, module.weight), (layer.bias, module.bias)]
    for _ in range(3):
        x = (rng.standard_normal(shape) * 2 + 1.5).astype(dtype)
        module.train()
        module.zero_grad()
        check_against_torch(layer, module, x, rng, pairs, train=True)
    tol = TOL[dtype]
    assert rel_err(layer.running_mean, module.running_mean.numpy()) < tol
    assert rel_err(layer.running_var, module.running_var.numpy()) < tol
    module.eval()
    module.zero_grad()
    check_against_torch(layer, module, rng.standard_normal(shape).astype(dtype), rng, pairs, train=False)


# ---------------------------------------------------------------- activations, pooling, reshaping vs torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_flatten_gap_match_torch(dtype, rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    check_against_torch(ReLU(), torch.nn.ReLU(), x, rng, [])
    check_against_torch(Flatten(), torch.nn.Flatten(), x, rng, [])
    check_against_torch(GlobalAvgPool(), lambda t: t.mean(dim=(2, 3)), x, rng, [])
    check_against_torch(GlobalAvgPool(), lambda t: t.mean(dim=2), x[:, :, 0], rng, [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride", [(2, None), (3, 2), ((2, 3), (1, 2)), ((3, 1), (3, 1)), (1, 1), (4, 3)])
def test_maxpool2d_matches_torch(kernel, stride, dtype, rng):
    x = rng.standard_normal((2, 3, 9, 10)).astype(dtype)
    module = torch.nn.MaxPool2d(kernel, stride)
    check_against_torch(MaxPool2d(kernel, stride), module, x, rng, [])


@pytest.mark.parametrize("kernel, stride", [(2, None), (3, 2), (3, 1)])
def test_maxpool_ties_go_to_the_first_maximum_as_torch(kernel, stride, rng):
    x = rng.integers(0, 2, size=(2, 3, 8, 8)).astype(np.float64)                 # many tied windows
    check_against_torch(MaxPool2d(kernel, stride), torch.nn.MaxPool2d(kernel, stride), x, rng, [])
    check_against_torch(MaxPool1d(kernel, stride), torch.nn.MaxPool1d(kernel, stride), x[:, :, 0], rng, [])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride", [(2, None), (3, 2), (5, 1)])
def test_maxpool1d_matches_torch(kernel, stride, dtype, rng):
    x = rng.standard_normal((3, 4, 13)).astype(dtype)
    check_against_torch(MaxPool1d(kernel, stride), torch.nn.MaxPool1d(kernel, stride), x, rng, [])


# ---------------------------------------------------------------- residual block and Sequential vs torch
class TorchBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False, dtype=torch.float64)
        self.bn1 = nn.BatchNorm2d(cout, dtype=torch.float64)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False, dtype=torch.float64)
        self.bn2 = nn.BatchNorm2d(cout, dtype=torch.float64)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False, dtype=torch.float64),
                                          nn.BatchNorm2d(cout, dtype=torch.float64))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def torch_names(name):
    return name.replace("shortcut_conv", "shortcut.0").replace("shortcut_bn", "shortcut.1")


@pytest.mark.parametrize("cin, cout, stride", [(4, 4, 1), (3, 6, 2), (4, 6, 1)])
@pytest.mark.parametrize("train", [True, False])
def test_residual_block_matches_torch(cin, cout, stride, train, rng):
    block = ResidualBlock(cin, cout, stride, rng=rng, dtype=np.float64)
    module = TorchBlock(cin, cout, stride)
    torch_params = dict(module.named_parameters())
    assert sorted(torch_names(n) for n in block.named_params()) == sorted(torch_params)
    for name, p in block.named_params().items():
        p.value = p.value + 0.1 * rng.standard_normal(p.value.shape)             # BN affine away from 1, 0
        copy_into(torch_params[torch_names(name)], p)
    module.train(train)
    if not train:
        block.forward(rng.standard_normal((5, cin, 6, 6)), train=True)          # non-trivial running stats
        torch_buffers = dict(module.named_buffers())
        with torch.no_grad():
            for name, value in block.buffers().items():
                torch_buffers[torch_names(name)].copy_(tt(value))
    pairs = [(p, torch_params[torch_names(n)]) for n, p in block.named_params().items()]
    check_against_torch(block, module, rng.standard_normal((2, cin, 7, 6)), rng, pairs, train=train)


def small_cnn(method=None, rng=None, dtype=np.float64):
    return Sequential(Conv2d(3, 8, 3, padding=1, bias=False, rng=rng, dtype=dtype), BatchNorm(8, dtype=dtype),
                      ReLU(), MaxPool2d(2), ResidualBlock(8, 8, method=method, rng=rng, dtype=dtype),
                      Conv2d(8, 4, 3, stride=2, method=method, rng=rng, dtype=dtype), GlobalAvgPool(),
                      Linear(4, 5, rng=rng, dtype=dtype))


def test_sequential_matches_torch_end_to_end(rng):
    model = small_cnn(rng=rng)
    nn = torch.nn
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                           TorchBlock(8, 8, 1), nn.Conv2d(8, 4, 3, stride=2),
                           nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).double()
    torch_params = dict(module.named_parameters())
    torch_params["7.weight"], torch_params["7.bias"] = torch_params.pop("8.weight"), torch_params.pop("8.bias")
    assert sorted(model.named_params()) == sorted(torch_params)
    for name, p in model.named_params().items():
        assert p.name == name
        copy_into(torch_params[name], p)
    pairs = [(p, torch_params[n]) for n, p in model.named_params().items()]
    check_against_torch(model, module, rng.standard_normal((4, 3, 10, 10)), rng, pairs)


# ---------------------------------------------------------------- central finite differences (float64)
def finite_difference_check(layer, x, rng, train=True, eps=1e-6):
    """dx and every Param grad of L = sum(forward(x) * dout) against central differences."""
    dout = rng.standard_normal(layer.forward(x, train=train).shape)
    loss = lambda: float((layer.forward(x, train=train) * dout).sum())
    layer.forward(x, train=train)
    dx = layer.backward(dout)
    grads = {name: p.grad.copy() for name, p in layer.named_params().items()}
    targets = [("x", x, dx)] + [(n, p.value, grads[n]) for n, p in layer.named_params().items()]
    for name, array, analytic in targets:
        numeric = np.zeros_like(array)
        for i in np.ndindex(array.shape):
            keep = array[i]
            array[i] = keep + eps
            up = loss()
            array[i] = keep - eps
            down = loss()
            array[i] = keep
            numeric[i] = (up - down) / (2 * eps)
        assert rel_err(analytic, numeric) < 1e-6, name


def away_from_zero(rng, shape):
    return np.sign(rng.standard_normal(shape)) * rng.uniform(0.2, 1.0, shape)


def well_separated(rng, shape):
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.1 - 1.0           # distinct values, gaps 0.1


def test_finite_differences_weight_layers(rng):
    finite_difference_check(Linear(4, 3, rng=rng, dtype=np.float64), rng.standard_normal((2, 4)), rng)
    finite_difference_check(Conv2d(2, 3, (3, 2), (2, 1), (1, 1), rng=rng, dtype=np.float64),
                            rng.standard_normal((2, 2, 5, 4)), rng)
    finite_difference_check(Conv1d(2, 3, 3, 2, 1, rng=rng, dtype=np.float64), rng.standard_normal((2, 2, 7)), rng)


@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 3, 3, 2)])
@pytest.mark.parametrize("train", [True, False])
def test_finite_differences_batchnorm(shape, train, rng):
    layer = BatchNorm(shape[1], dtype=np.float64)
    layer.weight.value = rng.uniform(0.5, 1.5, shape[1])
    layer.running_mean, layer.running_var = rng.standard_normal(shape[1]), rng.uniform(0.5, 2, shape[1])
    layer.momentum = 0.0                                       # running stats stay put while differencing
    finite_difference_check(layer, rng.standard_normal(shape), rng, train=train)


def test_finite_differences_activations_and_pooling(rng):
    finite_difference_check(ReLU(), away_from_zero(rng, (2, 3, 4)), rng)
    finite_difference_check(MaxPool2d(2), well_separated(rng, (2, 2, 4, 5)), rng)
    finite_difference_check(MaxPool2d(3, 2), well_separated(rng, (1, 2, 7, 5)), rng)
    finite_difference_check(MaxPool1d(3, 2), well_separated(rng, (2, 2, 7)), rng)
    finite_difference_check(GlobalAvgPool(), rng.standard_normal((2, 3, 2, 3)), rng)


def test_finite_differences_residual_block(rng):
    block = ResidualBlock(2, 4, stride=2, rng=rng, dtype=np.float64)
    for bn in (block.bn1, block.bn2, block.shortcut_bn):
        bn.momentum = 0.0
    finite_difference_check(block, rng.standard_normal((2, 2, 4, 4)), rng)


# ---------------------------------------------------------------- sparsity method hand-off
class RecordingMethod(Method):
    """A fixed mask; records the g it receives and returns 3 g so the hand-off is visible."""

    def bind(self, weight, layout):
        super().bind(weight, layout)
        self.mask = np.random.default_rng(7).random(weight.value.shape) < 0.5
        self.extra = Param(np.zeros(3), "extra", group="scores")
        return self

    def masked(self, w):
        return w * self.mask

    def weight_grad(self, g, w):
        self.received = g.copy()
        return 3 * g

    def params(self):
        return [self.extra]


@pytest.mark.parametrize("make", [
    lambda m, r: (Linear(6, 4, method=m, rng=r, dtype=np.float64), torch.nn.Linear(6, 4).double(), (3, 6)),
    lambda m, r: (Conv2d(3, 4, 3, 2, 1, method=m, rng=r, dtype=np.float64),
                  torch.nn.Conv2d(3, 4, 3, 2, 1).double(), (2, 3, 6, 5)),
    lambda m, r: (Conv1d(3, 4, 3, 1, 1, method=m, rng=r, dtype=np.float64),
                  torch.nn.Conv1d(3, 4, 3, 1, 1).double(), (2, 3, 6)),
])
def test_layer_hands_grad_of_masked_weight_to_method(make, rng):
    layer, module, x_shape = make(RecordingMethod, rng)
    method = layer.method
    assert isinstance(method, RecordingMethod) and method.weight is layer.weight
    assert any(p is method.extra for p in layer.params())
    with torch.no_grad():
        module.weight.copy_(tt(layer.weight.value * method.mask))              # torch sees W~
        module.bias.copy_(tt(layer.bias.value))
    x = rng.standard_normal(x_shape)
    dout = rng.standard_normal(layer.forward(x).shape)
    out_t, dx_t = run_torch(module, x, dout)
    assert rel_err(layer.forward(x), out_t) < 1e-12
    dx = layer.backward(dout)
    assert rel_err(dx, dx_t) < 1e-12
    assert rel_err(method.received, module.weight.grad.numpy()) < 1e-12       # g = dL/dW~
    np.testing.assert_array_equal(layer.weight.grad, 3 * method.received)


def test_default_method_is_dense_and_factory_gives_one_instance_per_weight(rng):
    a = Linear(8, 4, rng=rng)
    assert type(a.method) is Dense
    model = small_cnn(method=lambda: SRSTE(2, 4), rng=rng)
    sparse = model.sparse_layers()
    assert sorted(sparse) == ["4.conv1", "4.conv2", "5"]
    assert sorted(model.layers_with_weights()) == ["0", "4.conv1", "4.conv2", "5", "7"]
    methods = [layer.method for layer in sparse.values()]
    assert len({id(m) for m in methods}) == len(methods)
    assert all(layer.method.weight is layer.weight for layer in sparse.values())


# ---------------------------------------------------------------- initialisation, buffers, train flag
def test_init_is_torch_default_and_deterministic():
    a = Conv2d(4, 6, (3, 2), rng=np.random.default_rng(3))
    b = Conv2d(4, 6, (3, 2), rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a.weight.value, b.weight.value)
    draw = np.random.default_rng(3)
    bound = 1 / np.sqrt(4 * 3 * 2)
    np.testing.assert_array_equal(a.weight.value, draw.uniform(-bound, bound, (6, 4, 3, 2)).astype(np.float32))
    np.testing.assert_array_equal(a.bias.value, draw.uniform(-bound, bound, 6).astype(np.float32))
    assert a.weight.value.dtype == np.float32
    big = Linear(300, 400, rng=np.random.default_rng(0), dtype=np.float64)
    bound = 1 / np.sqrt(300)
    assert np.abs(big.weight.value).max() <= bound and np.abs(big.weight.value).max() > 0.99 * bound
    assert abs(big.weight.value.std() - bound / np.sqrt(3)) < 0.01 * bound      # U(-b, b) has std b/sqrt(3)


def test_buffers_round_trip_and_train_flag_propagates(rng):
    model = small_cnn(rng=rng)
    x = rng.standard_normal((4, 3, 10, 10))
    model.forward(x, train=True)
    saved = {k: v.copy() for k, v in model.buffers().items()}
    assert sorted(saved) == ["1.running_mean", "1.running_var", "4.bn1.running_mean", "4.bn1.running_var",
                             "4.bn2.running_mean", "4.bn2.running_var"]
    y_eval = model.forward(x, train=False)
    for k, v in model.buffers().items():
        np.testing.assert_array_equal(v, saved[k])                               # eval leaves stats alone
    model.forward(x, train=True)
    assert not np.array_equal(model.buffers()["1.running_mean"], saved["1.running_mean"])
    model.load_buffers(saved)
    np.testing.assert_array_equal(model.forward(x, train=False), y_eval)


def test_load_buffers_rejects_missing_unexpected_and_misshapen(rng):
    model = small_cnn(rng=rng)
    good = model.buffers()
    with pytest.raises(KeyError, match="missing.*1.running_var"):
        model.load_buffers({k: v for k, v in good.items() if k != "1.running_var"})
    with pytest.raises(KeyError, match="unexpected.*9.running_mean"):
        model.load_buffers({**good, "9.running_mean": np.zeros(3)})
    with pytest.raises(ValueError, match="running_mean has shape"):
        model.load_buffers({**good, "1.running_mean": np.zeros(5)})
    with pytest.raises(ValueError, match="running_mean holds NaN, inf;.*diverged run"):
        model.load_buffers({**good, "1.running_mean": np.full_like(good["1.running_mean"], np.nan)})
    with pytest.raises(ValueError, match="running_var holds NaN, inf or negative variances"):
        model.load_buffers({**good, "1.running_var": -good["1.running_var"]})
    with pytest.raises(TypeError, match="1.running_mean|running_mean is a list"):
        model.load_buffers({**good, "1.running_mean": list(good["1.running_mean"])})


# ---------------------------------------------------------------- bad input
def test_conv_rejects_bad_geometry():
    r = np.random.default_rng(0)
    with pytest.raises(ValueError, match="padding=.*must be >= 0"):
        Conv2d(3, 4, 3, padding=-1, rng=r)
    with pytest.raises(ValueError, match="stride=.*must be positive"):
        Conv2d(3, 4, 3, stride=0, rng=r)
    with pytest.raises(ValueError, match="kernel_size=.*must be positive"):
        Conv2d(3, 4, (0, 3), rng=r)
    with pytest.raises(ValueError, match="Conv1d stride=.*must be positive"):
        Conv1d(3, 4, 3, stride=-2, rng=r)
    with pytest.raises(ValueError, match="Conv1d padding=.*must be >= 0"):
        Conv1d(3, 4, 3, padding=-1, rng=r)
    with pytest.raises(TypeError, match="Conv1d kernel_size must be an int"):
        Conv1d(3, 4, (3, 3), rng=r)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        Conv2d(3, 4, (3, 3, 3), rng=r)
    with pytest.raises(ValueError, match="MaxPool2d stride=.*must be positive"):
        MaxPool2d(2, 0)
    with pytest.raises(ValueError, match="MaxPool1d kernel_size=.*must be positive"):
        MaxPool1d(0)


def test_layers_reject_bad_inputs_naming_the_problem():
    r = np.random.default_rng(0)
    conv = Conv2d(16, 4, 3, rng=r)
    with pytest.raises(ValueError, match=r"Conv2d expected input with 16 channels \(x.shape\[1\]\), got 8"):
        conv.forward(np.zeros((2, 8, 5, 5), np.float32))
    with pytest.raises(ValueError, match="Conv2d expects a 4-D input"):
        conv.forward(np.zeros((16, 5, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float64 but its weights are float32"):
        conv.forward(np.zeros((2, 16, 5, 5)))
    with pytest.raises(ValueError, match="kernel .* is larger than the padded input"):
        conv.forward(np.zeros((2, 16, 2, 5), np.float32))
    with pytest.raises(ValueError, match="Conv1d expected input with 3 channels"):
        Conv1d(3, 4, 3, rng=r).forward(np.zeros((2, 4, 9), np.float32))
    with pytest.raises(ValueError, match=r"Linear expected input with 5 channels \(x.shape\[1\]\), got 4"):
        Linear(5, 2, rng=r).forward(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="Linear expects a 2-D input"):
        Linear(5, 2, rng=r).forward(np.zeros((3, 1, 5), np.float32))
    with pytest.raises(TypeError, match="dtype float32 but its weights are float64"):
        Linear(5, 2, rng=r, dtype=np.float64).forward(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="BatchNorm expected input with 4 channels"):
        BatchNorm(4).forward(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="BatchNorm expects a 2-D"):
        BatchNorm(4).forward(np.zeros((3, 4, 2, 2, 2), np.float32))
    with pytest.raises(TypeError, match="BatchNorm got input of dtype float64"):
        BatchNorm(4).forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm(4).forward(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="MaxPool2d expects a 4-D input"):
        MaxPool2d(2).forward(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="MaxPool2d kernel .* is larger"):
        MaxPool2d(3).forward(np.zeros((2, 3, 2, 4), np.float32))
    with pytest.raises(ValueError, match="MaxPool1d expects a 3-D input"):
        MaxPool1d(2).forward(np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="GlobalAvgPool expects"):
        GlobalAvgPool().forward(np.zeros((2, 3), np.float32))


def test_constructors_reject_bad_options():
    r = np.random.default_rng(0)
    with pytest.raises(TypeError, match="method must be a factory"):
        Linear(8, 4, method=SRSTE(2, 4), rng=r)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        Linear(8, 4, rng=np.random.RandomState(0))
    with pytest.raises(TypeError, match="dtype=float16 is not supported"):
        Linear(8, 4, rng=r, dtype=np.float16)
    with pytest.raises(ValueError, match="layout='conv' needs a conv weight"):
        Linear(8, 4, layout="conv", rng=r)
    with pytest.raises(ValueError, match="layout='linear' needs a 2-D"):
        Conv2d(8, 4, 3, layout="linear", rng=r)
    with pytest.raises(ValueError, match="is not one of"):
        Conv2d(8, 4, 3, layout="nhwc", rng=r)
    with pytest.raises(ValueError, match="BatchNorm momentum"):
        BatchNorm(4, momentum=1.5)
    with pytest.raises(ValueError, match="BatchNorm eps=0 must be positive"):
        BatchNorm(4, eps=0)
    with pytest.raises(TypeError, match="MaxPool1d stride must be an int"):
        MaxPool1d(2, (2, 2))
    with pytest.raises(TypeError, match="Sequential argument 1 is a int"):
        Sequential(ReLU(), 3)
    assert Conv2d(8, 4, 3, layout="nchw_flatten", rng=r).layout == "nchw_flatten"


@pytest.mark.parametrize("make", [
    lambda n, r: Linear(n, 3, rng=r), lambda n, r: Linear(3, n, rng=r), lambda n, r: Conv2d(n, 4, 3, rng=r),
    lambda n, r: Conv2d(4, n, 3, rng=r), lambda n, r: Conv1d(n, 4, 3, rng=r), lambda n, r: Conv1d(4, n, 3, rng=r),
    lambda n, r: BatchNorm(n), lambda n, r: ResidualBlock(n, 4, rng=r), lambda n, r: ResidualBlock(4, n, rng=r)])
def test_feature_and_channel_counts_must_be_ints_of_at_least_1(make):
    r = np.random.default_rng(0)
    for bad, error, match in ((0, ValueError, "=0 must be >= 1"), (-1, ValueError, "=-1 must be >= 1"),
                              (8.0, TypeError, "must be an int >= 1, got 8.0"), (True, TypeError, "got True")):
        with pytest.raises(error, match=rf"(in_features|out_features|in_channels|out_channels|num_features).*{match}"):
            make(bad, r)


def test_backward_checks_call_order_and_dy_shape(rng):
    cases = [(Linear(8, 3, rng=0), (2, 8)), (Conv2d(4, 6, 3, rng=0), (2, 4, 5, 5)), (Conv1d(4, 6, 3, rng=0), (2, 4, 7)),
             (BatchNorm(4), (3, 4)), (ReLU(), (2, 5)), (MaxPool2d(2), (2, 3, 4, 4)), (MaxPool1d(2), (2, 3, 6)),
             (GlobalAvgPool(), (2, 3, 4)), (Flatten(), (2, 3, 4))]
    for layer, shape in cases:
        name = type(layer).__name__
        with pytest.raises(RuntimeError, match=rf"{name}.backward called before forward"):
            layer.backward(np.ones((2, 3), np.float32))
        y = layer.forward(rng.standard_normal(shape).astype(np.float32))
        with pytest.raises(ValueError, match=rf"{name}.backward: dy has shape \(1, 2\), but the last forward's "
                                             rf"output had {re.escape(str(y.shape))}"):
            layer.backward(np.ones((1, 2), np.float32))
        assert layer.backward(np.ones(y.shape, np.float32)).shape == shape


def test_input_dtype_advice_names_only_supported_dtypes():
    with pytest.raises(TypeError, match=r"int64 but its weights are float32; cast the input \(x.astype\('float32'\)\)$"):
        Linear(8, 3, rng=0).forward(np.ones((2, 8), np.int64))
    with pytest.raises(TypeError, match="or build the layer with dtype='float64'"):
        Linear(8, 3, rng=0).forward(np.ones((2, 8), np.float64))


def test_method_params_are_named_after_their_weight(rng):
    from nmref.lbc import LBC
    model = Sequential(ReLU(), Linear(8, 4, method=lambda: LBC(2, 4), rng=rng),
                       ResidualBlock(4, 4, method=lambda: LBC(2, 4), rng=rng))
    names = model.named_params()
    assert {"1.weight.scores", "2.conv1.weight.scores", "2.conv2.weight.scores"} <= set(names)
    assert names["1.weight.scores"] is model[1].method.scores
    assert all(p.name == n for n, p in names.items())
    assert sorted(Sequential(model).named_params()) == sorted("0." + n for n in names)


@pytest.mark.parametrize("first", [
    lambda r: (Conv2d(3, 4, 3, padding=1, rng=r, dtype=np.float64), (2, 3, 5, 5)),
    lambda r: (Conv1d(3, 4, 3, rng=r, dtype=np.float64), (2, 3, 6)),
    lambda r: (Linear(3, 4, rng=r, dtype=np.float64), (2, 3)),
])
def test_backward_without_input_grad_gives_the_same_param_grads(first, rng):
    layer, shape = first(rng)
    model = Sequential(layer, ReLU(), Flatten())
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(model.forward(x).shape)
    assert model.backward(dout).shape == x.shape
    grads = {n: p.grad.copy() for n, p in model.named_params().items()}
    model.forward(x)
    assert model.backward(dout, input_grad=False) is None
    for n, p in model.named_params().items():
        np.testing.assert_array_equal(p.grad, grads[n])


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
def test_layers_on_cupy_match_numpy(dtype, rng):
    """The same model and data on CPU and GPU: output, dx, every grad and the BN running stats."""
    import cupy
    from nmref.losses import softmax_cross_entropy
    from nmref.optim import SGD
    seed = int(rng.integers(1 << 30))
    models = [small_cnn(method=lambda: SRSTE(2, 4), rng=np.random.default_rng(seed), dtype=dtype) for _ in range(2)]
    models[1].to_device("gpu")
    x = rng.standard_normal((4, 3, 10, 10)).astype(dtype)
    labels = rng.integers(0, 5, 4)
    results = []
    for model, xp in zip(models, (np, cupy)):
        opt = SGD(model.params(), lr=0.1, momentum=0.9)
        for _ in range(2):
            loss, dlogits = softmax_cross_entropy(model.forward(xp.asarray(x)), xp.asarray(labels))
            dx = model.backward(dlogits)
            opt.step()
        grads = {n: cupy.asnumpy(p.grad) if xp is cupy else p.grad for n, p in model.named_params().items()}
        buffers = {n: cupy.asnumpy(b) if xp is cupy else b for n, b in model.buffers().items()}
        results.append((float(loss), cupy.asnumpy(dx) if xp is cupy else dx, grads, buffers))
    (loss_cpu, dx_cpu, grads_cpu, buf_cpu), (loss_gpu, dx_gpu, grads_gpu, buf_gpu) = results
    tol = TOL[dtype]
    assert rel_err(loss_gpu, loss_cpu) < tol and rel_err(dx_gpu, dx_cpu) < tol
    for n in grads_cpu:
        assert rel_err(grads_gpu[n], grads_cpu[n]) < tol, n
    for n in buf_cpu:
        assert rel_err(buf_gpu[n], buf_cpu[n]) < tol, n


def test_lists_bools_and_bad_numbers_raise_naming_the_argument():
    x = np.ones((3, 8), np.float32)
    layer = Linear(8, 4, rng=0)
    with pytest.raises(TypeError, match="x is a list; pass a NumPy or CuPy array"):
        layer.forward(x.tolist())
    layer.forward(x)
    with pytest.raises(TypeError, match="dy is a list; pass a NumPy or CuPy array"):
        layer.backward(np.ones((3, 4), np.float32).tolist())
    for make in (lambda: BatchNorm(8), GlobalAvgPool, Flatten, lambda: MaxPool2d(2)):
        with pytest.raises(TypeError, match="x is a list"):
            make().forward([[[[1.0]]]])
    with pytest.raises(ValueError, match="Flatten expects"):
        Flatten().forward(np.array(1.0))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints, got True"):
        Conv2d(4, 4, True, rng=0)                              # was: a 1x1 kernel
    with pytest.raises(TypeError, match="kernel_size must be an int, got True"):
        Conv1d(4, 4, True, rng=0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair of ints, got 3.0"):
        Conv2d(4, 4, 3.0, rng=0)
    with pytest.raises(ValueError, match="BatchNorm eps=nan must be finite"):
        BatchNorm(4, eps=float("nan"))                         # was: NaN outputs
    with pytest.raises(TypeError, match="BatchNorm momentum='0.1' must be a number"):
        BatchNorm(4, momentum="0.1")
    with pytest.raises(TypeError, match="the class ReLU, not a layer; pass an instance"):
        Sequential(ReLU)
    with pytest.raises(TypeError, match="value is a list"):
        Param([1.0, 2.0])
