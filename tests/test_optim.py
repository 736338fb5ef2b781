"""SGD against torch.optim.SGD over many steps, schedules against their formulas and torch's MultiStepLR."""
import math

import numpy as np
import pytest
import torch

from nmref.optim import SGD, constant, param_groups, step_decay, warmup_cosine
from nmref.params import Param


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


SHAPES = [(5, 4), (3,), (2, 3, 2, 2)]


def make_params(rng, dtype=np.float64):
    return [Param(rng.standard_normal(s).astype(dtype), f"p{i}") for i, s in enumerate(SHAPES)]


def quadratic_grad(w, target, noise):
    """Gradient of 0.5 |w - target|^2 plus per-step noise: depends on the state, so errors would compound."""
    return (w - target) + noise


def run_both(groups_spec, defaults, rng, steps=50, dtype=np.float64, schedule=None):
    """Train the same parameters with nmref's SGD and torch's for ``steps`` steps; returns both final values."""
    params = make_params(rng, dtype)
    torch_params = [torch.from_numpy(p.value.copy()).requires_grad_() for p in params]
    targets = [rng.standard_normal(p.value.shape).astype(dtype) for p in params]

    def spec(items):
        return [{**g, "params": [items[i] for i in g["params"]]} for g in groups_spec]

    ours = SGD(spec(params), **defaults)
    theirs = torch.optim.SGD(spec(torch_params), **defaults)
    for step in range(steps):
        if schedule is not None:
            factor = schedule(step)
            ours.set_lr_scale(factor)
            for group, base in zip(theirs.param_groups, [g.get("lr", defaults["lr"]) for g in groups_spec]):
                group["lr"] = base * factor
        for p, tp, target in zip(params, torch_params, targets):
            noise = rng.standard_normal(p.value.shape).astype(dtype)
            p.grad = quadratic_grad(p.value, target, noise)
            tp.grad = torch.from_numpy(quadratic_grad(tp.detach().numpy(), target, noise))
        ours.step()
        theirs.step()
    return params, torch_params, theirs


CONFIGS = {
    "plain": ([{"params": [0, 1, 2]}], dict(lr=0.1)),
    "momentum": ([{"params": [0, 1, 2]}], dict(lr=0.05, momentum=0.9)),
    "nesterov": ([{"params": [0, 1, 2]}], dict(lr=0.05, momentum=0.9, nesterov=True)),
    "weight_decay": ([{"params": [0, 1, 2]}], dict(lr=0.05, momentum=0.9, weight_decay=5e-3)),
    "weight_decay_no_momentum": ([{"params": [0, 1, 2]}], dict(lr=0.1, weight_decay=1e-2)),
    "two_groups": ([{"params": [0, 2], "lr": 0.02, "weight_decay": 1e-3},
                    {"params": [1], "lr": 0.2, "weight_decay": 0.0, "momentum": 0.5, "nesterov": True}],
                   dict(lr=0.1, momentum=0.9)),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_sgd_matches_torch_over_50_steps(name, rng):
    groups, defaults = CONFIGS[name]
    params, torch_params, theirs = run_both(groups, defaults, rng)
    for p, tp in zip(params, torch_params):
        assert rel_err(p.value, tp.detach().numpy()) < 1e-12
        if defaults.get("momentum"):
            assert rel_err(p.state["momentum"], theirs.state[tp]["momentum_buffer"].numpy()) < 1e-12


def test_sgd_matches_torch_with_a_schedule_and_in_float32(rng):
    groups, defaults = CONFIGS["two_groups"]
    schedule = lambda step: warmup_cosine(step, 50, 5)
    params, torch_params, _ = run_both(groups, defaults, rng, schedule=schedule)
    for p, tp in zip(params, torch_params):
        assert rel_err(p.value, tp.detach().numpy()) < 1e-12
    params, torch_params, _ = run_both(groups, defaults, rng, dtype=np.float32, schedule=schedule)
    for p, tp in zip(params, torch_params):
        assert p.value.dtype == np.float32
        assert rel_err(p.value, tp.detach().numpy()) < 1e-5


def test_first_momentum_buffer_is_the_gradient_with_weight_decay(rng):
    p = Param(rng.standard_normal(4), "w")
    p.grad = rng.standard_normal(4)
    w0, g0 = p.value.copy(), p.grad.copy()
    SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01).step()
    np.testing.assert_array_equal(p.state["momentum"], g0 + 0.01 * w0)
    np.testing.assert_array_equal(p.value, w0 - 0.1 * (g0 + 0.01 * w0))


def test_set_lr_scale_scales_every_group_from_its_base(rng):
    a, b = make_params(rng)[:2]
    opt = SGD([{"params": [a], "lr": 0.2}, {"params": [b]}], lr=0.1)
    opt.set_lr_scale(0.5)
    opt.set_lr_scale(0.25)
    assert [g["lr"] for g in opt.groups] == [0.2 * 0.25, 0.1 * 0.25]
    w0 = b.value.copy()
    b.grad = np.ones_like(w0)
    opt.step()
    np.testing.assert_array_equal(b.value, w0 - 0.025)


def test_state_dict_resume_is_bit_identical(rng):
    """20 steps straight == 10 steps, state_dict through host arrays, fresh optimizer, 10 more."""
    def train(params, opt, steps, seed):
        r = np.random.default_rng(seed)
        for step in range(steps):
            opt.set_lr_scale(warmup_cosine(step, 20, 3))
            for p in params:
                p.grad = p.value * 0.1 + r.standard_normal(p.value.shape)
            opt.step()

    start = make_params(rng)
    straight = [Param(p.value.copy(), p.name) for p in start]
    opt = SGD(straight, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    train(straight, opt, 10, 1)
    train(straight, opt, 10, 2)

    first = [Param(p.value.copy(), p.name) for p in start]
    opt = SGD(first, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    train(first, opt, 10, 1)
    state = opt.state_dict()
    assert sorted(state) == ["lr_scale", "momentum/p0", "momentum/p1", "momentum/p2"]
    assert all(isinstance(v, np.ndarray) for v in state.values())
    resumed = [Param(p.value.copy(), p.name) for p in first]
    opt2 = SGD(resumed, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    opt2.load_state_dict({k: v.copy() for k, v in state.items()})
    assert opt2.lr_scale == opt.lr_scale
    train(resumed, opt2, 10, 2)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(a.value, b.value)


def test_load_state_dict_rejects_unknown_and_misshapen(rng):
    params = make_params(rng)
    opt = SGD(params, lr=0.1, momentum=0.9)
    with pytest.raises(KeyError, match="momentum/nope"):
        opt.load_state_dict({"momentum/nope": np.zeros(3)})
    with pytest.raises(ValueError, match="momentum for 'p0' has shape"):
        opt.load_state_dict({"momentum/p0": np.zeros(3)})
    with pytest.raises(TypeError, match=r"SGD.load_state_dict takes the dict SGD.state_dict\(\) returned, got a list"):
        opt.load_state_dict([])
    unnamed = SGD([Param(np.zeros(2)), Param(np.zeros(2))], lr=0.1)
    with pytest.raises(ValueError, match="unique, non-empty Param names"):
        unnamed.state_dict()


def test_sgd_rejects_bad_hyperparameters(rng):
    params = make_params(rng)
    with pytest.raises(ValueError, match="lr=-0.1 must be >= 0"):
        SGD(params, lr=-0.1)
    with pytest.raises(ValueError, match=r"momentum=1.0 must be in \[0, 1\)"):
        SGD(params, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match=r"momentum=-0.5 must be in \[0, 1\)"):
        SGD(params, lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        SGD(params, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="nesterov='no' must be True or False"):        # was read as True
        SGD(params, lr=0.1, momentum=0.9, nesterov="no")
    with pytest.raises(TypeError, match="Param 'counts' has dtype int64; SGD updates floating-point"):
        SGD([Param(np.arange(3), "counts")], lr=0.1)                 # failed at step() with a casting error
    with pytest.raises(TypeError, match="group=3 must be strings"):
        Param(np.ones(3), "w", group=3)
    with pytest.raises(ValueError, match="weight_decay=-1 must be >= 0"):
        SGD(params, lr=0.1, weight_decay=-1)
    with pytest.raises(ValueError, match=r"lr=nan must be finite"):
        SGD(params, lr=float("nan"))
    with pytest.raises(ValueError, match=r"lr=-1 must be >= 0 \(group 1\)"):
        SGD([{"params": params[:1]}, {"params": params[1:], "lr": -1}], lr=0.1)
    with pytest.raises(ValueError, match="unknown keys \\['dampening'\\]"):
        SGD([{"params": params, "dampening": 0.1}], lr=0.1)
    with pytest.raises(ValueError, match="appears in more than one SGD group"):
        SGD([{"params": params}, {"params": params[:1]}], lr=0.1)
    with pytest.raises(TypeError, match="all Params or all dicts, group 1 is a Param"):
        SGD([{"params": params[:1]}, params[1]], lr=0.1)
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="factor=-1 must be >= 0"):
        SGD(params, lr=0.1).set_lr_scale(-1)


def test_param_groups_split_by_param_group_with_overrides(rng):
    w, b = make_params(rng)[:2]
    scores = Param(np.ones(6), "s", group="scores")
    groups = param_groups([w, scores, b], {"scores": {"weight_decay": 1e-4}})
    assert [g["params"] for g in groups] == [[w, b], [scores]]
    assert "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 1e-4
    opt = SGD(groups, lr=0.1, weight_decay=5e-5)
    assert [g["weight_decay"] for g in opt.groups] == [5e-5, 1e-4]
    with pytest.raises(ValueError, match="no Param has"):
        param_groups([w], {"scores": {}})


# ---------------------------------------------------------------- schedules
def srste_code_lr(step, total, warmup, base=1.0):
    """The SR-STE code's LRScheduler (linear warm-up from warmup_lr = 0, then cosine to targetlr = 0)."""
    if warmup > step:
        return base * step / warmup
    return base * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def test_warmup_cosine_is_the_srste_recipe():
    total, warmup = 120, 5
    factors = [warmup_cosine(s, total, warmup) for s in range(total + 3)]
    for s in range(total):
        assert factors[s] == pytest.approx(srste_code_lr(s, total, warmup), abs=1e-15)
    assert factors[0] == 0.0 and factors[warmup] == 1.0 and factors[total:] == [0.0] * 3
    assert all(0 <= f <= 1 for f in factors)
    assert all(a < b for a, b in zip(factors[:warmup], factors[1:warmup + 1]))
    assert all(a > b for a, b in zip(factors[warmup:total], factors[warmup + 1:total + 1]))
    assert warmup_cosine(50, 100, 0) == pytest.approx(0.5)


def test_step_decay_matches_torch_multisteplr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 7, 7, 12], gamma=0.3)
    for step in range(20):
        assert step_decay(step, [3, 7, 7, 12], 0.3) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert constant(0) == constant(10 ** 6) == 1.0


def test_schedules_reject_bad_arguments():
    with pytest.raises(ValueError, match="step=-1 must be >= 0"):
        warmup_cosine(-1, 10, 2)
    with pytest.raises(ValueError, match="warmup_steps=11 must be in"):
        warmup_cosine(0, 10, 11)
    with pytest.raises(ValueError, match="total_steps=0 must be >= 1"):
        warmup_cosine(0, 0, 0)
    with pytest.raises(ValueError, match="gamma=2 must be in"):
        step_decay(0, [1], gamma=2)
    with pytest.raises(ValueError, match="step=-3 must be >= 0"):
        constant(-3)


def test_a_fresh_param_has_a_zero_gradient_and_seeded_generators_repeat():
    import nmref
    p = Param(np.full((3, 5), 7.0, dtype=np.float32), "w")
    assert p.grad.dtype == np.float32 and p.grad.shape == (3, 5) and not p.grad.any()
    SGD([p], lr=0.1, momentum=0.9).step()                                     # no gradient yet: no change
    assert (p.value == 7.0).all()
    assert np.array_equal(nmref.rng(3).random(4), nmref.rng(3).random(4))


def test_hyper_parameters_must_be_finite_numbers_and_params_params():
    p = Param(np.ones(3), name="p")
    with pytest.raises(ValueError, match=r"SGD lr=inf must be finite"):
        SGD([p], lr=float("inf"))
    with pytest.raises(ValueError, match=r"SGD weight_decay=inf must be finite"):
        SGD([p], lr=0.1, weight_decay=float("inf"))
    with pytest.raises(TypeError, match=r"SGD lr='0.1' must be a number"):
        SGD([p], lr="0.1")
    with pytest.raises(ValueError, match=r"lr scale factor=inf must be finite"):
        SGD([p], lr=0.1).set_lr_scale(float("inf"))
    with pytest.raises(TypeError, match="holds a ndarray, not a Param"):
        SGD([np.ones(3)], lr=0.1)
    with pytest.raises(TypeError, match="got one Param; wrap it in a list"):
        SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="params is one Param; give a list"):
        SGD([{"params": p}], lr=0.1)
    with pytest.raises(TypeError, match="step=nan must be a finite number"):
        warmup_cosine(float("nan"), 10, 2)
