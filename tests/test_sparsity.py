import numpy as np
import pytest

from nmref import (SRSTE, STE, Dense, Fixed, Param, make_method, masked_grad, nm_mask, srste_grad,
                   ste_grad)
from nmref.groups import to_groups

CASES = [((6, 8), "linear", 2, 4), ((5, 12), "linear", 1, 4), ((3, 16), "linear", 4, 8),
         ((4, 8, 3, 3), "conv", 2, 4), ((3, 8, 1, 5), "conv", 2, 8), ((2, 12, 3), "conv", 1, 3),
         ((4, 3, 2, 2), "nchw_flatten", 2, 4)]


def bound(method, shape, layout, rng):
    return method.bind(Param(rng.standard_normal(shape), "w"), layout)


def test_three_rules_side_by_side(rng):
    g, w = rng.standard_normal((2, 6, 8))
    mask = nm_mask(w, 2, 4)
    assert ste_grad(g, w, mask) is g
    assert np.array_equal(srste_grad(g, w, mask, 0.3), np.where(mask, g, g + 0.3 * w))
    assert np.array_equal(masked_grad(g, w, mask), np.where(mask, g, 0.0))


@pytest.mark.parametrize("rule", [ste_grad, srste_grad, masked_grad])
def test_grad_rules_check_mask_and_g(rule, rng):
    g, w = rng.standard_normal((2, 6, 8))
    mask = nm_mask(w, 2, 4)
    for bad in (mask.astype(np.uint8), mask.astype(np.int64)):    # ~ of 0/1 ints is -1/-2: silently wrong before
        with pytest.raises(TypeError, match=r"mask must be a bool array .*mask != 0"):
            rule(g, w, bad)
    with pytest.raises(TypeError, match="mask must be a bool array"):
        rule(g, w, mask.astype(np.float64))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 8\) but w has \(6, 8\)"):
        rule(g, w, mask[:1])                                        # would broadcast
    with pytest.raises(ValueError, match=r"g has shape \(8,\) but w has \(6, 8\)"):
        rule(g[0], w, mask)
    with pytest.raises(TypeError, match="mask is a list"):
        rule(g, w, mask.tolist())
    with pytest.raises(TypeError, match="g must be a floating-point"):
        rule(g.astype(np.int64), w, mask)


@pytest.mark.parametrize("rule", [ste_grad, srste_grad, masked_grad])
def test_grad_rules_return_w_dtype(rule, rng):
    g, w = rng.standard_normal((2, 4, 8))
    w32 = w.astype(np.float32)
    mask = nm_mask(w32, 2, 4)
    assert rule(g, w32, mask).dtype == np.float32                  # float64 g, float32 w: w's dtype
    assert rule(g.astype(np.float32), w, mask).dtype == np.float64


@pytest.mark.parametrize("lam, error, match", [(float("nan"), ValueError, "not finite"),
                                                (float("inf"), ValueError, "not finite"),
                                                ("2e-4", TypeError, "real number")])
def test_srste_grad_checks_lam_as_the_class_does(lam, error, match, rng):
    g, w = rng.standard_normal((2, 4, 8))
    with pytest.raises(error, match=match):
        srste_grad(g, w, nm_mask(w, 2, 4), lam)
    with pytest.raises(error, match=match):
        SRSTE(2, 4, lam=lam)


def test_negative_lam_is_allowed_as_in_the_papers_ablation(rng):
    g, w = rng.standard_normal((2, 4, 8))
    mask = nm_mask(w, 2, 4)
    np.testing.assert_array_equal(srste_grad(g, w, mask, -0.5), np.where(mask, g, g - 0.5 * w))
    assert SRSTE(2, 4, lam=-2e-3).lam == -2e-3


@pytest.mark.parametrize("shape, layout, n, m", CASES)
def test_ste_and_srste_forward_and_grad(shape, layout, n, m, rng):
    for method in (STE(n, m), SRSTE(n, m, lam=0.01)):
        bound(method, shape, layout, rng)
        w = method.weight.value
        w_tilde = method.masked(w)
        assert method.mask.dtype == bool and np.array_equal(method.mask, nm_mask(w, n, m, layout))
        assert np.array_equal(w_tilde, np.where(method.mask, w, 0.0))
        assert np.all(to_groups(method.mask, m, layout).sum(1) == n)
        assert method.density() == n / m
        g = rng.standard_normal(shape)
        expected = g + 0.01 * np.where(method.mask, 0.0, w) if isinstance(method, SRSTE) else g
        np.testing.assert_array_equal(method.weight_grad(g, w), expected)


def test_mask_recomputed_every_forward(rng):
    method = bound(STE(2, 4), (4, 8), "linear", rng)
    w = method.weight.value
    method.masked(w)
    first = method.mask.copy()
    w2 = w.copy()
    w2[0, :4] = np.where(first[0, :4], 0.1, 10.0)          # swap kept and pruned in the first group
    method.masked(w2)
    assert np.array_equal(method.mask, nm_mask(w2, 2, 4))
    assert np.array_equal(method.mask[0, :4], ~first[0, :4])


def test_dense_and_density(rng):
    method = bound(Dense(), (3, 5), "linear", rng)
    w = method.weight.value
    assert method.masked(w) is w and method.mask is None and method.density() == 1.0
    g = rng.standard_normal(w.shape)
    assert method.weight_grad(g, w) is g
    assert STE(1, 4).density() == 0.25


def test_straddle_option_reproduces_flat_groups(rng):
    w = rng.standard_normal((2, 6))                       # in=6 not divisible by 4, size 12 is
    with pytest.raises(ValueError, match="not divisible by m=4"):
        STE(2, 4).bind(Param(w), "linear")
    for method in (STE(2, 4, straddle=True), SRSTE(2, 4, straddle=True), Fixed(2, 4, straddle=True)):
        method.bind(Param(w), "linear")
        method.masked(w)
        flat = np.abs(w).reshape(-1, 4)
        expected = flat >= np.sort(flat, axis=1)[:, 2:3]   # continuous values: no ties
        assert np.array_equal(method.mask, expected.reshape(w.shape))


def sgd_run(method, w0, target, steps=6, lr=0.1, momentum=0.9, weight_decay=5e-3):
    from nmref.optim import SGD
    param = Param(w0.copy(), "w")
    method.bind(param, "linear")
    opt = SGD([param], lr=lr, momentum=momentum, weight_decay=weight_decay)
    masks = []
    for _ in range(steps):
        w_tilde = method.masked(param.value)
        param.grad = method.weight_grad(w_tilde - target, param.value)   # L = |W~ - T|^2 / 2
        opt.step()
        masks.append(method.mask.copy())
    return param.value, masks


def test_srste_lam_zero_is_ste_bit_for_bit(rng):
    w0, target = rng.standard_normal((2, 8, 12))
    w_ste, masks_ste = sgd_run(STE(2, 4), w0, target)
    w_zero, masks_zero = sgd_run(SRSTE(2, 4, lam=0.0), w0, target)
    w_lam, _ = sgd_run(SRSTE(2, 4, lam=2e-4), w0, target)
    assert np.array_equal(w_zero, w_ste) and all(map(np.array_equal, masks_zero, masks_ste))
    assert not np.array_equal(w_lam, w_ste)


def test_fixed_dense_before_fix_at_then_fixed(rng):
    method = bound(Fixed(2, 4, fix_at=2), (6, 8), "linear", rng)
    param = method.weight
    g = rng.standard_normal(param.value.shape)
    for epoch in (0, 1):
        method.on_epoch(epoch, 5)
        assert np.array_equal(method.masked(param.value), param.value) and method.mask.all()
        assert method.weight_grad(g, param.value) is g and method.density() == 1.0 and not method.fixed
        param.value = param.value + rng.standard_normal(param.value.shape)
    at_fix = param.value.copy()
    method.on_epoch(2, 5)
    assert method.fixed and np.array_equal(method.fixed_mask, nm_mask(at_fix, 2, 4))
    for epoch in (2, 3):
        method.on_epoch(epoch, 5)
        param.value = param.value + rng.standard_normal(param.value.shape)
        w_tilde = method.masked(param.value)
        assert np.array_equal(method.mask, nm_mask(at_fix, 2, 4))
        assert not np.array_equal(method.mask, nm_mask(param.value, 2, 4))
        assert np.array_equal(w_tilde, np.where(method.mask, param.value, 0.0))
        assert np.array_equal(method.weight_grad(g, param.value), np.where(method.mask, g, 0.0))
        assert method.density() == 0.5


def test_fixed_grad_is_the_true_gradient(rng):
    """With the mask fixed, L(W) = f(E * W) and dL/dW = E * g exactly: central differences in float64."""
    method = bound(Fixed(2, 4), (3, 8), "linear", rng)
    w = method.weight.value
    a = rng.standard_normal(w.shape)
    loss = lambda w: np.sum(a * np.sin(method.masked(w)))              # noqa: E731
    method.masked(w)
    grad = method.weight_grad(a * np.cos(method.masked(w)), w)
    numeric = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        step = np.zeros_like(w)
        step[i] = 1e-6
        numeric[i] = (loss(w + step) - loss(w - step)) / 2e-6
    assert np.linalg.norm(grad - numeric) / np.linalg.norm(numeric) < 1e-6


def test_fixed_from_loaded_dense_weights(rng):
    """--init-from: the layer is built, the dense checkpoint's weights loaded, then fix_at=0 fixes from them."""
    checkpoint = rng.standard_normal((4, 8, 3, 3))
    for start in ("on_epoch", "first_forward"):
        method = bound(Fixed(2, 4, fix_at=0), checkpoint.shape, "conv", rng)
        method.weight.value = checkpoint.copy()
        if start == "on_epoch":
            method.on_epoch(0, 3)
        method.masked(method.weight.value)
        assert np.array_equal(method.mask, nm_mask(checkpoint, 2, 4, "conv"))
    fresh_weight = Param(rng.standard_normal(checkpoint.shape))
    method = Fixed.from_weights(checkpoint, 2, 4, layout="conv").bind(fresh_weight, "conv")
    method.masked(method.weight.value)
    assert np.array_equal(method.mask, nm_mask(checkpoint, 2, 4, "conv"))
    with pytest.raises(ValueError, match="build the mask from this layer"):
        Fixed.from_weights(checkpoint, 2, 4, layout="conv").bind(Param(rng.standard_normal((4, 8, 1, 1))), "conv")


def test_fixed_in_a_layer_takes_the_loaded_weights(rng):
    """The --init-from flow through a real layer: build, load the dense weights, train with a fixed mask."""
    from nmref.layers import Linear
    from nmref.optim import SGD
    layer = Linear(8, 4, method=make_method("fixed", "2:4"), rng=0, dtype=np.float64)
    dense = rng.standard_normal((4, 8))
    layer.weight.value = dense.copy()
    opt = SGD(layer.params(), lr=0.1, momentum=0.9)
    for epoch in range(2):
        layer.method.on_epoch(epoch, 2)
        y = layer.forward(rng.standard_normal((3, 8)))
        layer.backward(y)                                                     # L = |y|^2 / 2
        assert np.array_equal(layer.method.mask, nm_mask(dense, 2, 4))
        assert np.all(layer.weight.grad[~layer.method.mask] == 0)
        opt.step()
    assert np.array_equal(layer.weight.value[~layer.method.mask], dense[~layer.method.mask])


def test_fixed_state_dict_roundtrip(rng):
    method = bound(Fixed(2, 4, fix_at=1), (4, 8), "linear", rng)
    assert method.state_dict() == {"fixed": False, "epoch": 0}
    method.on_epoch(1, 3)
    state = method.state_dict()
    fresh = bound(Fixed(2, 4, fix_at=1), (4, 8), "linear", rng)
    fresh.load_state_dict(state)
    fresh.on_epoch(2, 3)
    fresh.masked(fresh.weight.value)
    assert fresh.fixed and np.array_equal(fresh.mask, method.fixed_mask)


def test_make_method_builds_fresh_instances():
    factory = make_method("srste", "2:4", lam=1e-3)
    a, b = factory(), factory()
    assert isinstance(a, SRSTE) and a is not b and (a.n, a.m, a.lam) == (2, 4, 1e-3)
    assert isinstance(make_method("STE", (1, 4))(), STE)
    fixed = make_method("fixed", [4, 8], fix_at=3, straddle=True)()
    assert isinstance(fixed, Fixed) and (fixed.n, fixed.m, fixed.fix_at, fixed.straddle) == (4, 8, 3, True)
    assert make_method("dense") is Dense and make_method("dense", "2:4") is Dense
    assert make_method("sr-ste", "2:8")().lam == 2e-4


def test_make_method_lbc_forwards_options():
    pytest.importorskip("nmref.lbc")
    method = make_method("lbc", "2:4", t_f=7, removal="faithful")()
    assert type(method).__name__ == "LBC" and (method.n, method.m) == (2, 4)


@pytest.mark.parametrize("call, error, match", [
    (lambda: make_method("srste2", "2:4"), ValueError, "unknown sparsity method"),
    (lambda: make_method(3, "2:4"), TypeError, "method name"),
    (lambda: make_method("srste", "2:4", lamda=1e-4), TypeError, r"unknown option\(s\) \['lamda'\]"),
    (lambda: make_method("dense", lam=1e-4), TypeError, "takes no options"),
    (lambda: make_method("ste"), ValueError, "needs a pattern"),
    (lambda: make_method("ste", "2-4"), ValueError, "pattern"),
    (lambda: make_method("ste", "5:4"), ValueError, "(?i)1 <= n <= m"),
    (lambda: make_method("ste", "0:4"), ValueError, "(?i)1 <= n <= m"),
    (lambda: make_method("ste", (2,)), ValueError, "pattern"),
    (lambda: make_method("srste", "2:4", lam=float("nan")), ValueError, "not finite"),
    (lambda: SRSTE(2, 4, lam=float("inf")), ValueError, "not finite"),
    (lambda: SRSTE(2, 4, lam="2e-4"), TypeError, "real number"),
    (lambda: Fixed(2, 4, fix_at=-1), ValueError, "fix_at"),
    (lambda: STE(2, 4, straddle="yes"), TypeError, "straddle"),
    (lambda: STE(2, 4).masked(np.ones((2, 4))), RuntimeError, "bind"),
    (lambda: STE(2, 4).bind(Param(np.ones((3, 6))), "linear"), ValueError, "not divisible by m=4"),
])
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------- an independent PyTorch SR-STE, float64
def torch_nm_mask(w, n, m, layout):
    """N:M keep-mask written from the formulas: stable ascending sort of |w| per group, first m - n pruned."""
    import torch
    view = w.permute(0, *range(2, w.ndim), 1) if layout == "conv" else w      # groups along Cin last
    groups = view.abs().reshape(-1, m)                                        # (G, M)
    order = torch.sort(groups, dim=1, stable=True).indices
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(1, order[:, : m - n], False)
    keep = keep.reshape(view.shape)
    return keep.permute(0, w.ndim - 1, *range(1, w.ndim - 1)) if layout == "conv" else keep


def torch_srste(n, m, lam, layout, masks):
    import torch

    class SRSTEFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w):
            mask = torch_nm_mask(w.detach(), n, m, layout)
            masks.append(mask.numpy().copy())
            ctx.save_for_backward(w, mask)
            return w * mask

        @staticmethod
        def backward(ctx, g):
            w, mask = ctx.saved_tensors
            return g + lam * (~mask).to(w.dtype) * w                          # dW = g + lam (1 - E) W

    return SRSTEFunction.apply


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_srste_training_matches_independent_pytorch(kind):
    """20 steps of SGD (momentum, weight decay) on an SR-STE layer: nmref layers + SGD vs torch autograd +
    torch.optim.SGD; masks identical every step, weight gradients and weights to 1e-10."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from nmref.layers import Conv2d, Linear
    from nmref.losses import mse_loss
    from nmref.optim import SGD
    n, m, lam, layout = 2, 4, 0.05, kind
    data = np.random.default_rng(7)
    factory = lambda: SRSTE(n, m, lam=lam)                                   # noqa: E731
    if kind == "linear":
        layer = Linear(16, 6, method=factory, rng=3, dtype=np.float64)
        x_shape, apply = (5, 16), lambda x, w, b: F.linear(x, w, b)
    else:
        layer = Conv2d(8, 6, 3, stride=2, padding=1, method=factory, rng=3, dtype=np.float64)
        x_shape, apply = (2, 8, 7, 7), lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1)
    w_t = torch.tensor(layer.weight.value, requires_grad=True)
    b_t = torch.tensor(layer.bias.value, requires_grad=True)
    torch_masks = []
    masked = torch_srste(n, m, lam, layout, torch_masks)
    hyper = dict(lr=0.2, momentum=0.9, weight_decay=1e-3)
    opt, opt_t = SGD(layer.params(), **hyper), torch.optim.SGD([w_t, b_t], **hyper)
    flips = 0
    for step in range(20):
        x = data.standard_normal(x_shape)
        y = layer.forward(x)
        target = data.standard_normal(y.shape)
        _, dy = mse_loss(y, target)
        layer.backward(dy)
        opt_t.zero_grad()
        y_t = apply(torch.tensor(x), masked(w_t), b_t)
        ((y_t - torch.tensor(target)) ** 2).mean().backward()
        assert np.array_equal(layer.method.mask, torch_masks[-1]), f"masks differ at step {step}"
        assert rel(layer.weight.grad, w_t.grad.numpy()) < 1e-10
        flips += step > 0 and int((torch_masks[-1] != torch_masks[-2]).sum())
        opt.step()
        opt_t.step()
        assert rel(layer.weight.value, w_t.detach().numpy()) < 1e-10
        assert rel(layer.bias.value, b_t.detach().numpy()) < 1e-10
    assert flips > 0                                                          # the masks did evolve


def rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_using_a_method_out_of_order_raises_runtime_error():
    w = np.ones((4, 8), np.float32)
    for method in (STE(2, 4), SRSTE(2, 4)):
        method.bind(Param(w), "linear")
        with pytest.raises(RuntimeError, match=r"weight_grad needs the mask of a forward: call masked\(w\) first"):
            method.weight_grad(w, w)
    with pytest.raises(RuntimeError, match=r"fix\(\) without w needs a bound weight"):
        Fixed(2, 4).fix()
