"""LBC (docs/algorithms.md section 5): table, schedule, mask, gradients (PyTorch and finite differences), removal,
strict vs faithful, the ranking oracle, freezing, state round trip, large C and bad inputs."""
import itertools
import math
import tracemalloc

import numpy as np
import pytest
import torch

from nmref import Param
from nmref.groups import from_groups, to_groups
from nmref.layers import Conv2d, Linear
from nmref.lbc import (LBC, combinations, init_scores, lowest, lowest_reference, mask_from_scores,
                       mask_from_scores_reference, remove_lowest, removal_schedule, score_grad,
                       score_grad_reference)
from nmref.optim import SGD, param_groups

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (3, 5)]


def rel(a, b):
    return np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b)


def random_scores(rng, g, c, dead=0.4, signed=True):
    """Scores (G, C) with a fraction of removed (zero) combinations, at least one alive per group."""
    alpha = rng.standard_normal((g, c)) if signed else rng.uniform(0.1, 2.0, (g, c))
    alpha[rng.random((g, c)) < dead] = 0
    alpha[np.arange(g), rng.integers(0, c, g)] = 0.7
    return alpha


# ---------------------------------------------------------------- combinations, schedule, initial scores
@pytest.mark.parametrize("n, m, c", [(2, 4, 6), (1, 4, 4), (2, 8, 28), (4, 8, 70), (8, 16, 12870)])
def test_combinations_table(n, m, c):
    table = combinations(n, m)
    assert table.shape == (c, m) and table.dtype == np.uint8 and not table.flags.writeable
    assert np.all(table.sum(1) == n)
    kept = [tuple(np.flatnonzero(row)) for row in table]
    assert kept == list(itertools.combinations(range(m), n))       # lexicographic, all distinct


def test_removal_schedule_values():
    assert [removal_schedule(e, 6, 0, 60) for e in (0, 5, 10, 16, 25, 60)] == [0, 1, 2, 3, 4, 5]
    assert [removal_schedule(e, 6, 0, 60) for e in (4, 9, 15, 24, 59, 61, 200)] == [0, 1, 2, 3, 4, 5, 5]
    for c in (4, 6, 28, 70, 12870):
        ks = [removal_schedule(e, c, 3, 17.5, power=3) for e in range(25)]
        assert ks == sorted(ks) and ks[0] == 0 and ks[-1] == c - 1 and max(ks) == c - 1
        assert all(k == c - 1 for e, k in enumerate(ks) if e >= 17.5)
        assert all(k == 0 for e, k in enumerate(ks) if e <= 3)          # before t_i: clamped, not negative
    for e in (7, 11.5):
        base = 1 - (e - 3) / (17.5 - 3)
        assert removal_schedule(e, 70, 3, 17.5, power=4) == 70 - 1 - math.ceil(69 * base ** 4)


@pytest.mark.parametrize("power", [2, 2.5, 3, 4])
def test_one_combination_from_a_fractional_t_f_on(power):
    """t_f = epochs / 2 is often fractional (5 epochs: 2.5); every e >= t_f leaves one combination, also
    e in (t_f, t_f + 1), where the formula's base 1 - (e - t_i)/(t_f - t_i) is negative."""
    for c, t_i, t_f in ((6, 0, 2.5), (70, 1, 4.5), (4, 0, 0.5)):
        for e in (math.ceil(t_f), t_f + 0.25, t_f + 0.75, math.ceil(t_f) + 1):
            assert removal_schedule(e, c, t_i, t_f, power=power) == c - 1, (c, t_f, e)
    assert removal_schedule(2, 70, 0, 2.5, power=4) == 70 - 1 - math.ceil(69 * (1 - 2 / 2.5) ** 4)


@pytest.mark.parametrize("n, m", PATTERNS)
def test_initial_scores_dense(n, m):
    alpha = init_scores(5, n, m, like=np.zeros(1, np.float32))
    assert alpha.dtype == np.float32 and alpha.shape == (5, math.comb(m, n))
    np.testing.assert_allclose(alpha @ combinations(n, m).astype(np.float64), 1.0, rtol=1e-6)
    layer = Linear(2 * m, 3, bias=False, method=lambda: LBC(n, m), rng=0)
    layer.forward(np.ones((2, 2 * m), np.float32))
    assert layer.method.mask.all() and layer.method.density() == 1.0
    assert layer.method.alive_per_group() == math.comb(m, n) and layer.method.is_nm() == (n == m)


# ---------------------------------------------------------------- mask and score gradient: chunked vs reference
@pytest.mark.parametrize("n, m", PATTERNS)
@pytest.mark.parametrize("chunk", [1, 3, 7, None])
def test_chunked_paths_match_reference(n, m, chunk, rng):
    table = combinations(n, m)
    alpha = random_scores(rng, 11, len(table))
    alive = alpha != 0
    alive[rng.random(alive.shape) < 0.1] = False                     # flags can be False on non-zero scores
    np.testing.assert_array_equal(mask_from_scores(alpha, alive, table, chunk=chunk),
                                  mask_from_scores_reference(alpha, alive, table))
    g, w = rng.standard_normal((2, 11, m))
    expected = score_grad_reference(g, w, alive, table)
    got = score_grad(g, w, alive, table, chunk=chunk)
    assert rel(got, expected) < 1e-15 and np.all(got[~alive] == 0)
    out = np.full_like(expected, np.nan)
    assert score_grad(g, w, alive, table, out=out, chunk=chunk) is out and rel(out, expected) < 1e-15


def test_mask_formula_edge_cases():
    table = combinations(2, 4)
    alpha = np.array([[0.5, 0, 0, -0.5, 0, 0],                     # {0,1} and {1,2}: position 1 cancels
                      [0, 0, 0, 0, 0, 0],                          # all dead: fully pruned
                      [0, 0, 0, 0, 0, 2.0]])                       # one alive: exactly its positions
    mask = mask_from_scores(alpha, alpha != 0, table)
    np.testing.assert_array_equal(mask, [[1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(mask_from_scores(alpha, np.zeros_like(alpha, bool), table), 0)


def test_large_c_never_builds_group_by_combination_by_position(rng):
    table = combinations(8, 16)                                      # C = 12870
    g_count = 48
    alpha = random_scores(rng, g_count, len(table), dead=0.9)
    alive = alpha != 0
    g, w = rng.standard_normal((2, g_count, 16))
    tracemalloc.start()
    mask = mask_from_scores(alpha, alive, table, chunk=5)
    grad = score_grad(g, w, alive, table, chunk=5)
    removed = lowest(alpha, alive, 12000, chunk=5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2.5 * alpha.nbytes < g_count * len(table) * 16 * 8 / 4   # output + chunks, not (G, C, M)
    np.testing.assert_array_equal(mask, mask_from_scores_reference(alpha, alive, table))
    assert rel(grad, score_grad_reference(g, w, alive, table)) < 1e-15
    np.testing.assert_array_equal(removed, lowest_reference(alpha, alive, 12000))


# ---------------------------------------------------------------- removal
@pytest.mark.parametrize("chunk", [1, 4, None])
def test_lowest_matches_stable_sort_with_ties(chunk, rng):
    for c in (4, 6, 28, 70):
        alpha = rng.integers(-2, 3, (13, c)).astype(np.float64)       # many ties and zeros
        alive = rng.random((13, c)) < 0.8
        for k in (0, 1, c // 2, c - 1):
            got = lowest(alpha, alive, k, chunk)
            np.testing.assert_array_equal(got, lowest_reference(alpha, alive, k))
            assert np.all(got.sum(1) == k)


@pytest.mark.parametrize("k", [-1, 6, 7, 2.0, True, None])
def test_lowest_checks_k_as_remove_lowest_does(k, rng):
    alpha, alive = rng.standard_normal((3, 6)), np.ones((3, 6), bool)
    for select in (lowest, lowest_reference, lambda a, live, k: remove_lowest(a.copy(), live.copy(), k)):
        with pytest.raises(ValueError, match=rf"k={k!r} must be an int in \[0, C - 1 = 5\]"):
            select(alpha, alive, k)


def test_remove_lowest_rules():
    alpha = np.array([[0.3, -0.2, 0.0, 0.5, 0.3, -0.2],
                      [1.0, 2.0, 3.0, 0.0, 0.0, -5.0]])
    alive = np.ones(alpha.shape, bool)
    removed = remove_lowest(alpha, alive, 2)
    # zeros first, then the lowest signed score; ties: the lower index goes first
    np.testing.assert_array_equal(removed, [[0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]])
    np.testing.assert_array_equal(alive, ~removed)
    assert np.all(alpha[removed] == 0) and not np.signbit(alpha[removed]).any()
    removed = remove_lowest(alpha, alive, 3)
    np.testing.assert_array_equal(removed, [[0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 1, 1]])
    alpha[0, 1] = 0.9                                                 # a removed score moved off 0
    strict_alpha, strict_alive = alpha.copy(), alive.copy()
    remove_lowest(strict_alpha, strict_alive, 3, "strict")
    np.testing.assert_array_equal(strict_alive[0], [1, 0, 0, 1, 1, 0])
    assert strict_alpha[0, 1] == 0
    faithful_alpha, faithful_alive = alpha.copy(), alive.copy()
    remove_lowest(faithful_alpha, faithful_alive, 3, "faithful")
    np.testing.assert_array_equal(faithful_alive[0], [0, 1, 0, 1, 1, 0])   # 0.9 ranked by value: kept
    assert faithful_alpha[0, 0] == 0 and faithful_alpha[0, 1] == 0.9
    far = np.array([[-5000.0, 0.0, 1.0, 2.0]])                        # zeros first even below -1000
    np.testing.assert_array_equal(remove_lowest(far, np.ones((1, 4), bool), 1), [[0, 1, 0, 0]])


def test_strict_and_faithful_differ_on_momentum_drift():
    """A removed score with momentum: strict keeps it dead, faithful lets momentum bring it back."""
    results = {}
    for mode in ("strict", "faithful"):
        method = LBC(2, 4, removal=mode).bind(Param(np.ones((1, 4)), "w"), "linear")
        method.scores.value[...] = [[0.1, 0.5, 0.6, 0.7, 0.8, 0.9]]
        method.scores.state["momentum"] = np.array([[-2.0, 0, 0, 0, 0, 0]])
        optimizer = SGD([method.scores], lr=1.0, momentum=0.9)
        method.k = 1
        for _ in range(2):
            method.before_step()
            method.masked(method.weight.value)
            method.weight_grad(np.zeros((1, 4)), method.weight.value)    # no loss gradient: momentum only
            optimizer.step()
        results[mode] = method
    strict, faithful = results["strict"], results["faithful"]
    np.testing.assert_array_equal(strict.current_alive(), [[0, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(faithful.current_alive(), [[1, 0, 1, 1, 1, 1]])
    assert strict.scores.value[0, 0] == 0 and strict.scores.state["momentum"][0, 0] == 0
    assert faithful.scores.value[0, 0] == pytest.approx(2 * 0.9 + 2 * 0.9 ** 2) and faithful.scores.state["momentum"][0, 0] != 0


def test_faithful_score_moved_off_zero_is_alive_before_the_next_removal():
    """Faithful: alive = score != 0 at once, so a forward between an optimizer step and the next removal
    (evaluation at the end of an epoch, the checkpoint's mask) counts a revived combination; strict does not."""
    w = np.array([[1.0, 2.0, 3.0, 4.0]])
    for mode, revived in (("faithful", True), ("strict", False)):
        method = LBC(1, 4, removal=mode).bind(Param(w.copy(), "w"), "linear")    # C = 4, combination j = {j}
        method.scores.value[...] = [[0.1, 0.5, 0.6, 0.7]]
        method.scores.state["momentum"] = np.array([[-2.0, 0, 0, 0]])
        optimizer = SGD([method.scores], lr=1.0, momentum=0.9)
        method.k = 1
        method.before_step()                                                     # removes combination 0
        np.testing.assert_array_equal(method.current_alive(), [[0, 1, 1, 1]])
        method.masked(method.weight.value)
        method.weight_grad(np.zeros((1, 4)), method.weight.value)
        optimizer.step()                                                         # faithful: score 0 -> 1.8
        assert method.scores.value[0, 0] == pytest.approx(1.8 if mode == "faithful" else 0.0)
        expected = [[revived, 1, 1, 1]]
        np.testing.assert_array_equal(method.current_alive(), expected)
        np.testing.assert_array_equal(method.group_mask(), expected)
        np.testing.assert_array_equal(method.masked(w) != 0, expected)


# ---------------------------------------------------------------- gradients vs PyTorch and finite differences
def torch_lbc_weight(w, alpha, table, m, layout):
    """Independent formulation: soft mask (alpha*alive) @ I, hard mask soft != 0, identity backward."""
    alive = (alpha != 0).detach().to(alpha.dtype)
    soft = (alpha * alive) @ torch.tensor(np.array(table), dtype=alpha.dtype)           # (G, M)
    hard = (soft != 0).to(alpha.dtype)
    mask = hard + soft - soft.detach()                                           # value hard, gradient soft's
    if layout == "linear":
        return mask.reshape(w.shape) * w
    cout, cin, *k = w.shape
    return mask.reshape(cout, *k, cin).permute(0, 3, 1, 2) * w


def lbc_layer(kind, n, m, rng, alpha_seed):
    if kind == "linear":
        layer = Linear(2 * m, 3, bias=True, method=lambda: LBC(n, m), rng=rng, dtype=np.float64)
        x = rng.standard_normal((5, 2 * m))
    else:
        layer = Conv2d(m, 2, 3, padding=1, bias=True, method=lambda: LBC(n, m), rng=rng, dtype=np.float64)
        x = rng.standard_normal((2, m, 4, 5))
    scores = layer.method.scores.value
    scores[...] = random_scores(np.random.default_rng(alpha_seed), *scores.shape)
    return layer, x


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (2, 8), (4, 8)])
def test_gradients_match_torch_autograd(kind, n, m, rng):
    layer, x = lbc_layer(kind, n, m, rng, alpha_seed=n * 10 + m)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    layer.backward(dy)
    w = torch.tensor(layer.weight.value, requires_grad=True)
    b = torch.tensor(layer.bias.value, requires_grad=True)
    alpha = torch.tensor(layer.method.scores.value, requires_grad=True)
    w_tilde = torch_lbc_weight(w, alpha, combinations(n, m), m, kind)
    xt = torch.tensor(x)
    y_t = xt @ w_tilde.T + b if kind == "linear" else torch.nn.functional.conv2d(xt, w_tilde, b, padding=1)
    (y_t * torch.tensor(dy)).sum().backward()
    assert rel(y, y_t.detach().numpy()) < 1e-12
    assert rel(layer.weight.grad, w.grad.numpy()) < 1e-12
    assert rel(layer.method.scores.grad, alpha.grad.numpy()) < 1e-12
    assert np.all(layer.method.scores.grad[layer.method.scores.value == 0] == 0)


def test_gradients_match_finite_differences(rng):
    """dW: the loss is linear in W. dalpha: the derivative of the soft-mask loss the identity backward uses."""
    n, m = 2, 4
    layer, x = lbc_layer("linear", n, m, rng, alpha_seed=3)
    dy = rng.standard_normal(layer.forward(x).shape)
    layer.backward(dy)
    w, alpha, table = layer.weight.value, layer.method.scores.value, combinations(n, m).astype(float)
    alive = alpha != 0

    def loss_w(w_):
        return float(((x @ (w_ * layer.method.mask).T) * dy).sum())

    def loss_soft(alpha_):
        soft = from_groups((alpha_ * alive) @ table, w.shape)                   # (out, in)
        return float(((x @ (soft * w).T) * dy).sum())

    h = 1e-6
    for loss, point, analytic in ((loss_w, w, layer.weight.grad), (loss_soft, alpha, layer.method.scores.grad)):
        numeric = np.zeros_like(point)
        for idx in np.ndindex(point.shape):
            step = np.zeros_like(point)
            step[idx] = h
            numeric[idx] = (loss(point + step) - loss(point - step)) / (2 * h)
        numeric[~alive if point is alpha else np.zeros(point.shape, bool)] = 0
        assert rel(analytic, numeric) < 1e-6


# ---------------------------------------------------------------- training: oracle, freezing, round trip
def train_linear(method, epochs, steps, seed=0, lr=0.05, wd=5e-4, score_wd=1e-4, on_step=None, after_step=None):
    """Linear regression with an LBC weight: SGD momentum 0.9, coupled weight decay, a cosine lr factor."""
    rng = np.random.default_rng(seed)
    layer = Linear(16, 3, bias=False, method=method, rng=rng, dtype=np.float64)
    groups = param_groups(layer.params(), {"scores": {"weight_decay": score_wd}})
    optimizer = SGD(groups, lr=lr, momentum=0.9, weight_decay=wd)
    target = rng.standard_normal((3, 16))
    data = [rng.standard_normal((8, 16)) for _ in range(steps)]
    total = epochs * steps
    for epoch in range(epochs):
        layer.method.on_epoch(epoch, epochs)
        for i, x in enumerate(data):
            optimizer.set_lr_scale(0.5 * (1 + math.cos(math.pi * (epoch * steps + i) / total)))
            layer.method.before_step()
            y = layer.forward(x)
            dy = 2 * (y - x @ target.T) / y.size                                  # (B, out)
            layer.backward(dy)
            if on_step is not None:
                on_step(layer, optimizer, x, dy)
            optimizer.step()
            if after_step is not None:
                after_step(layer)
    return layer, optimizer


def test_ranking_oracle_under_strict_removal():
    """Alive scores == per-position accumulators a_j summed over each combination, a driven by g_j W_j
    through the same SGD (momentum, coupled weight decay, lr schedule): removal follows their ranking."""
    n, m = 2, 8
    table = combinations(n, m).astype(np.float64)
    oracle = {}
    checked = {"steps": 0, "removed": 0}

    def on_step(layer, optimizer, x, dy):
        method = layer.method
        group = next(g for g in optimizer.groups if g["params"][0] is method.scores)
        if "a" not in oracle:
            oracle["a"] = np.full((method.scores.value.shape[0], m), 1 / math.comb(m - 1, n - 1) / n)
            oracle["dead"] = np.zeros(method.scores.value.shape, bool)
        a = oracle["a"]
        alive = method.current_alive()
        predicted = a @ table.T                                                   # (G, C)
        assert rel(method.scores.value[alive], predicted[alive]) < 1e-12
        assert np.array_equal(alive, ~oracle["dead"])
        signal = to_groups(dy.T @ x, m) * to_groups(method.weight.value, m)       # g_j W_j, (G, M)
        update = signal + group["weight_decay"] * a
        oracle["u"] = update if "u" not in oracle else group["momentum"] * oracle["u"] + update
        a -= group["lr"] * oracle["u"]
        checked["steps"] += 1

    def before_step_check(method):
        original = method.before_step

        def wrapped():
            if "a" in oracle:       # predicted removal: dead first, then the lowest predicted scores (stable)
                key = np.where(oracle["dead"], -np.inf, oracle["a"] @ table.T)
                order = np.argsort(key, axis=1, kind="stable")
                expected = np.zeros(key.shape, bool)
                np.put_along_axis(expected, order[:, :method.k], True, axis=1)
            original()
            if "a" in oracle:
                np.testing.assert_array_equal(~method.current_alive(), expected)
                checked["removed"] += int((expected & ~oracle["dead"]).sum())
                oracle["dead"] = expected
        method.before_step = wrapped
        return method

    train_linear(lambda: before_step_check(LBC(n, m, t_f=7)), epochs=6, steps=4, on_step=on_step)
    assert checked["steps"] == 24 and checked["removed"] > 0


def test_after_t_f_frozen_and_exactly_nm():
    n, m = 2, 4
    snapshots = []

    def on_step(layer, optimizer, x, dy):
        if layer.method.frozen:
            snapshots.append((layer.method.scores.value.copy(), layer.method.mask.copy()))
            assert np.all(layer.method.scores.grad == 0)

    layer, _ = train_linear(lambda: LBC(n, m, t_f=2), epochs=4, steps=3, on_step=on_step)
    method = layer.method
    assert method.frozen and method.k == 5 and len(snapshots) == 6
    assert all(np.array_equal(s, snapshots[0][0]) and np.array_equal(k, snapshots[0][1]) for s, k in snapshots)
    assert np.all(method.current_alive().sum(1) == 1) and method.alive_per_group() == 1
    assert np.all(to_groups(method.mask, m).sum(1) == n) and method.is_nm() and method.density() == n / m
    assert np.array_equal(layer.weight.grad, np.where(method.mask, layer.weight.grad, 0.0))


@pytest.mark.parametrize("removal", ["strict", "faithful"])
def test_faithful_scores_drift_strict_never(removal):
    """Faithful: a removed score keeps its momentum and the optimizer moves it off 0; strict: never."""
    dead, drifted = [], []

    def on_step(layer, optimizer, x, dy):
        dead.append(layer.method.scores.value == 0)

    def after_step(layer):
        drifted.append(int((dead[-1] & (layer.method.scores.value != 0)).sum()))

    layer, _ = train_linear(lambda: LBC(2, 4, t_f=3, removal=removal), epochs=3, steps=5,
                            on_step=on_step, after_step=after_step)
    assert sum(d.sum() for d in dead) > 0
    assert (sum(drifted) > 0) == (removal == "faithful")


def test_strict_skip_of_unchanged_k_matches_full_removal():
    """Strict mode skips the ranking while k is unchanged; ranking at every step gives the same run."""
    class AlwaysRank(LBC):
        def before_step(self):
            self._removed_k = None
            super().before_step()

    skip, _ = train_linear(lambda: LBC(2, 8, t_f=3), epochs=4, steps=4)
    full, _ = train_linear(lambda: AlwaysRank(2, 8, t_f=3), epochs=4, steps=4)
    assert full.method.frozen and skip.method.frozen
    np.testing.assert_array_equal(skip.method.scores.value, full.method.scores.value)
    np.testing.assert_array_equal(skip.method.alive, full.method.alive)
    np.testing.assert_array_equal(skip.weight.value, full.weight.value)


def test_state_round_trip_is_exact():
    """Train, checkpoint (method + optimizer + weight), restore into a fresh layer, continue: bit-identical."""
    epochs, steps = 5, 3

    def run(split):
        rng = np.random.default_rng(7)
        data = [rng.standard_normal((8, 16)) for _ in range(steps)]
        target = rng.standard_normal((3, 16))

        def build():
            layer = Linear(16, 3, bias=False, method=lambda: LBC(2, 4, t_f=3, removal="faithful"), rng=1,
                           dtype=np.float64)
            layer.weight.name, layer.method.scores.name = "w", "s"
            opt = SGD(param_groups(layer.params(), {"scores": {"weight_decay": 1e-4}}), lr=0.1, momentum=0.9)
            return layer, opt

        layer, opt = build()
        for epoch in range(epochs):
            if epoch == split:
                saved = (layer.method.state_dict(), opt.state_dict(), layer.weight.value.copy())
                layer, opt = build()
                layer.method.load_state_dict(saved[0])
                opt.load_state_dict(saved[1])
                layer.weight.value[...] = saved[2]
            layer.method.on_epoch(epoch, epochs)
            for x in data:
                layer.method.before_step()
                y = layer.forward(x)
                layer.backward(2 * (y - x @ target.T) / y.size)
                opt.step()
        return layer

    straight = run(split=None)
    for split in (2, 4):                                                          # before and after freezing
        resumed = run(split)
        np.testing.assert_array_equal(resumed.weight.value, straight.weight.value)
        np.testing.assert_array_equal(resumed.method.scores.value, straight.method.scores.value)
        np.testing.assert_array_equal(resumed.method.mask, straight.method.mask)
        assert resumed.method.state_dict()["k"] == straight.method.state_dict()["k"] == 5


def test_state_dict_contents():
    method = LBC(2, 4).bind(Param(np.ones((2, 8)), "w"), "linear")
    method.on_epoch(3, 10)
    method.before_step()
    state = method.state_dict()
    assert set(state) == {"scores", "alive", "k", "epoch", "frozen"}
    assert isinstance(state["scores"], np.ndarray) and state["alive"].dtype == bool
    assert state["k"] == removal_schedule(3, 6, 0, 5) and state["epoch"] == 3 and not state["frozen"]


def test_make_method_and_sequential_names():
    from nmref import make_method
    from nmref.layers import Sequential
    model = Sequential(Linear(8, 4, method=make_method("lbc", "2:4", t_f=3, removal="faithful"), rng=0))
    method = model[0].method
    assert isinstance(method, LBC) and method.removal == "faithful" and method.t_f == 3
    assert model.named_params()["0.weight.scores"] is method.scores and method.scores.group == "scores"
    assert method.scores.value.shape == (8, 6) and method.scores.value.dtype == np.float32
    assert "0" in model.sparse_layers()


# ---------------------------------------------------------------- bad inputs
def test_bad_inputs():
    with pytest.raises(ValueError, match="n=3 kept out of m=2"):
        LBC(3, 2)
    with pytest.raises(ValueError, match="combinations per group"):
        combinations(16, 32)
    with pytest.raises(ValueError, match="removal='soft'"):
        LBC(2, 4, removal="soft")
    with pytest.raises(ValueError, match="t_f=5 must be > t_i=5"):
        LBC(2, 4, t_i=5, t_f=5)
    with pytest.raises(ValueError, match="t_i=-1 must be >= 0"):
        removal_schedule(0, 6, -1, 10)
    with pytest.raises(ValueError, match="power=0 must be > 0"):
        removal_schedule(0, 6, 0, 10, power=0)
    with pytest.raises(ValueError, match="c=0"):
        removal_schedule(0, 0, 0, 10)
    with pytest.raises(TypeError, match="epoch must be a number"):
        removal_schedule("1", 6, 0, 10)
    with pytest.raises(ValueError, match="epochs / 2 = 1.0 is not after t_i=4"):
        LBC(2, 4, t_i=4).on_epoch(0, 2)
    with pytest.raises(RuntimeError, match="not bound"):
        LBC(2, 4).before_step()
    with pytest.raises(ValueError, match="not divisible by m=4"):
        LBC(2, 4).bind(Param(np.ones((2, 6)), "w"), "linear")
    method = LBC(2, 4).bind(Param(np.ones((2, 8)), "w"), "linear")
    with pytest.raises(RuntimeError, match="call masked"):
        method.weight_grad(np.ones((2, 8)), np.ones((2, 8)))
    with pytest.raises(ValueError, match=r"k=6 must be an int in \[0, C - 1 = 5\]"):
        remove_lowest(method.scores.value, method.alive, 6)
    method.scores.value[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        remove_lowest(method.scores.value, method.alive, 1)
    bad = method.state_dict()
    bad["scores"] = np.ones((3, 6))
    with pytest.raises(ValueError, match="'scores' has shape"):
        method.load_state_dict(bad)
    with pytest.raises(ValueError, match="alive"):
        mask_from_scores(np.ones((2, 6)), np.ones((2, 5), bool), combinations(2, 4))


# ---------------------------------------------------------------- GPU: the same code on CuPy
@pytest.mark.gpu
def test_cupy_matches_numpy(rng):
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no CUDA device")
    table = combinations(2, 8)
    alpha = random_scores(rng, 9, len(table))
    g, w = rng.standard_normal((2, 9, 8))
    alive = alpha != 0
    np.testing.assert_array_equal(mask_from_scores(cupy.asarray(alpha), cupy.asarray(alive), table).get(),
                                  mask_from_scores(alpha, alive, table))
    got = score_grad(cupy.asarray(g), cupy.asarray(w), cupy.asarray(alive), table).get()
    assert rel(got, score_grad(g, w, alive, table)) < 1e-12
    ties = rng.integers(-2, 3, alpha.shape).astype(np.float64)
    np.testing.assert_array_equal(lowest(cupy.asarray(ties), cupy.asarray(alive), 5).get(),
                                  lowest_reference(ties, alive, 5))


def test_init_scores_and_array_arguments_are_checked():
    with pytest.raises(TypeError, match="like must be a floating-point array"):
        init_scores(2, 2, 4, like=np.ones(2, int))            # was: scores of 0 (1/3 cast to int)
    with pytest.raises(ValueError, match="n_groups=-1 must be an int >= 0"):
        init_scores(-1, 2, 4)
    with pytest.raises(ValueError, match="score_weight_decay=-1 must be >= 0"):
        LBC(2, 4, score_weight_decay=-1)
    alpha = init_scores(8, 2, 4)
    alive = np.ones(alpha.shape, bool)
    table = combinations(2, 4)
    with pytest.raises(TypeError, match="alpha is a list"):
        mask_from_scores(alpha.tolist(), alive, table)
    with pytest.raises(TypeError, match="g_groups is a list"):
        score_grad(np.ones((8, 4)).tolist(), np.ones((8, 4)), alive, table)
    with pytest.raises(TypeError, match="alpha must be a floating-point array"):
        remove_lowest(np.ones((8, 6), int), alive, 2)


def test_load_state_dict_names_what_is_missing():
    lbc = LBC(2, 4, t_f=5).bind(Param(np.ones((4, 8)), "w"), "linear")
    state = lbc.state_dict()
    with pytest.raises(KeyError, match=r"LBC.load_state_dict: missing \['frozen'\]"):
        lbc.load_state_dict({k: v for k, v in state.items() if k != "frozen"})
    lbc.load_state_dict(state)
