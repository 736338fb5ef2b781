"""Versioned reference vectors (``nmref golden DIR``) for checking other implementations against nmref.

Every file is an .npz of float64 / bool / int64 arrays built from ``SEED``, written byte-stably (fixed zip
dates, stored entries, sorted order), with ``manifest.json`` naming for each file the definition it follows,
every array's shape, dtype and meaning, and the file's sha256. docs/crosscheck.md shows how to use them.
"""
import hashlib
import io
import json
import os
import zipfile

import numpy as np

from .groups import from_groups, to_groups
from .lbc import LBC, combinations, mask_from_scores, removal_schedule, remove_lowest, score_grad
from .masks import nm_mask
from .optim import SGD
from .params import Param
from .sad import SADTracker, sad
from .sparsity import masked_grad, srste_grad, ste_grad

FORMAT_VERSION = 2             # 2: lbc_grads.npz linear_2to4_cancel_*, lbc_step.npz ties_*
SEED = 20240521
PATTERNS = ((1, 4), (2, 4), (2, 8), (4, 8))
LAM = 2e-4
SGD_HYPER = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
TIE_RULE = ("in each group of m consecutive weights along the grouped axis, a stable ascending sort of |w|; "
            "the first m - n positions are pruned, so among equal |w| the lower index is pruned first")
LAYOUT_RULES = {
    "linear": "weight (out, in): groups of m consecutive input features of one output row",
    "conv": "weight (Cout, Cin, kh, kw): groups of m consecutive input channels at fixed (cout, kh, kw), i.e. "
            "the weight viewed as NHWC (Cout, kh, kw, Cin) before cutting groups",
    "nchw_flatten": "weight (Cout, Cin, kh, kw): groups of m consecutive entries of w[cout].reshape(-1)",
    "conv_straddle": "layout conv with Cin not divisible by m: the NHWC view (Cout, kh, kw, Cin) is flattened "
                     "whole and cut into groups of m, which cross kernel positions (the public SR-STE code)",
}


def _tag(n, m):
    return f"{n}to{m}"


def _ints(rng, shape, low=-3, high=3):
    """Small integers as float64: many exact ties in |w|, zeros and both signs included."""
    return rng.integers(low, high + 1, size=shape).astype(np.float64)


def masks_file(rng):
    """N:M masks of tie-heavy integer weights for several patterns and layouts."""
    linear = _ints(rng, (8, 16))                                        # (out, in)
    conv = _ints(rng, (4, 8, 3, 3))                                     # (Cout, Cin, kh, kw)
    stem = _ints(rng, (4, 3, 3, 3))                                     # Cin = 3, straddling groups
    arrays = [("linear_weight", linear, "integer-valued weight (out, in), ties in |w|"),
              ("conv_weight", conv, "integer-valued weight (Cout, Cin, kh, kw), ties in |w|"),
              ("stem_weight", stem, "integer-valued conv weight with Cin = 3 (not divisible by 4)")]
    for n, m in PATTERNS:
        arrays.append((f"linear_mask_{_tag(n, m)}", nm_mask(linear, n, m, "linear"),
                       f"nm_mask(linear_weight, n={n}, m={m}, layout='linear'), True = kept"))
        arrays.append((f"conv_mask_{_tag(n, m)}", nm_mask(conv, n, m, "conv"),
                       f"nm_mask(conv_weight, n={n}, m={m}, layout='conv') (NHWC groups along Cin)"))
        arrays.append((f"nchw_flatten_mask_{_tag(n, m)}", nm_mask(conv, n, m, "nchw_flatten"),
                       f"nm_mask(conv_weight, n={n}, m={m}, layout='nchw_flatten')"))
    arrays.append(("stem_straddle_mask_2to4", nm_mask(stem, 2, 4, "conv", straddle=True),
                   "nm_mask(stem_weight, 2, 4, layout='conv', straddle=True): groups cross kernel positions"))
    definition = (f"mask = keep n of every m: {TIE_RULE}. Every group keeps exactly n (zeros too). Layouts: "
                  + "; ".join(f"{k}: {v}" for k, v in LAYOUT_RULES.items()) + ". n counts KEPT weights.")
    return "N:M magnitude masks with ties, patterns 1:4 2:4 2:8 4:8, layouts linear / conv / nchw_flatten", \
        definition, arrays


def grads_file(rng):
    """STE, SR-STE and masked weight gradients for given upstream gradients g = dL/dW~."""
    arrays = [("lam", np.float64(LAM), "SR-STE lambda_W")]
    for layout, shape in (("linear", (8, 16)), ("conv", (4, 8, 3, 3))):
        w = rng.standard_normal(shape)                                  # like the weight
        g = rng.standard_normal(shape)                                  # dL/dW~
        mask = nm_mask(w, 2, 4, layout)
        arrays += [(f"{layout}_weight", w, f"dense weight W {shape}"),
                   (f"{layout}_grad_masked", g, "upstream gradient g = dL/dW~ (W~ = W * mask)"),
                   (f"{layout}_mask", mask, f"nm_mask(W, 2, 4, layout='{layout}')"),
                   (f"{layout}_ste_grad", ste_grad(g, w, mask), "STE: dW = g"),
                   (f"{layout}_srste_grad", srste_grad(g, w, mask, LAM), "SR-STE: dW = g + lam * (~mask) * W"),
                   (f"{layout}_masked_grad", masked_grad(g, w, mask), "masked: dW = mask * g (LBC, Fixed)")]
    definition = ("W~ = W * mask with mask = nm_mask(W, 2, 4, layout); given g = dL/dW~: STE dW = g (pruned "
                  "weights included); SR-STE dW = g + lam * (1 - mask) * W with lam = 2e-4 exactly (Zhou et al. "
                  "2021, Eq. 5); masked dW = mask * g. All float64.")
    return "STE / SR-STE / masked weight gradients, 2:4, linear and conv", definition, arrays


def sgd_step_file(rng):
    """One SR-STE SGD step with momentum and weight decay, from an existing momentum buffer and a fresh one."""
    w0 = rng.standard_normal((8, 16))                                   # (out, in)
    g = rng.standard_normal((8, 16))                                    # dL/dW~ at W~ = W0 * mask
    v0 = rng.standard_normal((8, 16))                                   # existing momentum buffer
    mask = nm_mask(w0, 2, 4)
    grad = srste_grad(g, w0, mask, LAM)
    arrays = [("weight0", w0, "W before the step"), ("grad_masked", g, "g = dL/dW~"),
              ("mask", mask, "nm_mask(weight0, 2, 4, 'linear')"), ("srste_grad", grad, "g + lam (1 - mask) W0"),
              ("momentum0", v0, "momentum buffer before the step"),
              ("lr", np.float64(SGD_HYPER["lr"]), "learning rate"),
              ("momentum", np.float64(SGD_HYPER["momentum"]), "SGD momentum mu"),
              ("weight_decay", np.float64(SGD_HYPER["weight_decay"]), "coupled weight decay"),
              ("lam", np.float64(LAM), "SR-STE lambda_W")]
    for tag, buffer in (("", v0), ("_fresh", None)):
        p = Param(w0.copy(), "weight")
        p.grad = grad.copy()
        if buffer is not None:
            p.state["momentum"] = buffer.copy()
        SGD([p], **SGD_HYPER).step()
        what = "with the momentum0 buffer" if buffer is not None else "from a fresh optimizer (no buffer)"
        arrays += [(f"weight1{tag}", p.value, f"W after one torch-style SGD step {what}"),
                   (f"momentum1{tag}", p.state["momentum"], f"momentum buffer after the step {what}")]
    definition = ("d = srste_grad + weight_decay * W0; v1 = momentum * v0 + d (fresh optimizer: v1 = d, "
                  "PyTorch's first step); W1 = W0 - lr * v1. torch.optim.SGD(lr=0.1, momentum=0.9, "
                  "weight_decay=5e-5, nesterov=False, dampening=0) with p.grad = srste_grad.")
    return "one SR-STE SGD step (momentum 0.9, weight decay 5e-5), with and without a prior buffer", \
        definition, arrays


def sad_file(rng):
    """SAD variants over a short sequence of masks: step-to-step, epoch-to-epoch, vs initial, vs final."""
    steps_per_epoch, epochs = 3, 2
    w = rng.standard_normal((16, 32))                                   # (out, in)
    masks = [nm_mask(w, 2, 4)]
    for _ in range(steps_per_epoch * epochs):
        w = w + 0.3 * rng.standard_normal(w.shape)
        masks.append(nm_mask(w, 2, 4))
    stack = np.stack(masks)                                             # (T + 1, out, in)
    tracker = SADTracker()
    tracker.start({"w": masks[0]})
    per_epoch = []
    for e in range(epochs):
        for t in range(steps_per_epoch):
            tracker.step({"w": masks[1 + e * steps_per_epoch + t]})
        per_epoch.append(tracker.end_epoch())
    final = tracker.vs_final()
    count = lambda a, b: sad(a, b)[0]                                   # noqa: E731
    arrays = [("masks", stack, "masks[0] initial, masks[t] the forward mask of optimizer step t (1..6)"),
              ("steps_per_epoch", np.int64(steps_per_epoch), "steps 1-3 are epoch 0, steps 4-6 epoch 1"),
              ("pair_sad", np.array([count(stack[t], stack[t + 1]) for t in range(len(stack) - 1)]),
               "sad(masks[t], masks[t+1]) count, t = 0..5"),
              ("vs_initial", np.array([count(stack[0], s) for s in stack]), "sad(masks[0], masks[t])"),
              ("vs_final", np.array([count(s, stack[-1]) for s in stack]), "sad(masks[t], masks[-1])"),
              ("epoch_sad_step", np.array([r["sad_step"] for r in per_epoch]),
               "per epoch: sum of step-to-step SAD of its steps (step 1 compared with masks[0])"),
              ("epoch_sad_epoch", np.array([r["sad_epoch"] for r in per_epoch]),
               "per epoch: SAD of its last mask vs the previous epoch's last (epoch 0: vs masks[0])"),
              ("epoch_sad_init", np.array([r["sad_init"] for r in per_epoch]),
               "per epoch: SAD of its last mask vs masks[0]"),
              ("epoch_sad_final", np.array([r["sad_final"] for r in final]),
               "per epoch: SAD of its last mask vs the last epoch's last mask"),
              ("epoch_sad_step_frac", np.array([r["sad_step_frac"] for r in per_epoch]),
               "epoch_sad_step / (weights * steps in the epoch)")]
    definition = ("SAD(E_a, E_b) = ||E_a XOR E_b||_0 (Zhou et al. 2021), the number of weights whose kept / "
                  "pruned state differs; fractions divide by the number of weights compared. Masks: "
                  "nm_mask(W_t, 2, 4) of a random walk W_{t+1} = W_t + 0.3 N(0, 1).")
    return "SAD variants over 6 steps (2 epochs of 3): pairwise, vs initial, vs final, per-epoch", \
        definition, arrays


def lbc_tables_file(rng=None):
    """Combination tables and removal schedules (nothing random)."""
    arrays = []
    for n, m in PATTERNS:
        table = combinations(n, m)
        arrays.append((f"combinations_{_tag(n, m)}", np.asarray(table, dtype=np.int64),
                       f"(C, M) 0/1 table of all {n}-subsets of {m} positions, C = {len(table)}, lexicographic"))
    epochs = np.arange(0, 121)
    arrays.append(("epochs", epochs, "epochs 0..120"))
    for (n, m), t_i, t_f, power in (((1, 4), 0, 60, 3), ((2, 4), 0, 60, 3), ((2, 8), 0, 60, 3),
                                    ((4, 8), 0, 60, 3), ((2, 4), 0, 60, 4), ((2, 4), 10, 60, 3)):
        c = len(combinations(n, m))
        key = f"removed_{_tag(n, m)}_ti{t_i}_tf{t_f}_p{power}"
        arrays.append((key, np.array([removal_schedule(int(e), c, t_i, t_f, power) for e in epochs]),
                       f"k(e) removed per group, C = {c}, t_i = {t_i}, t_f = {t_f}, power = {power}"))
    definition = ("combinations(n, m): rows = itertools.combinations(range(m), n) in order, 1 = kept. "
                  "removal k(e) = C - card(e), card(e) = 1 + ceil((C - 1) (1 - (e - t_i) / (t_f - t_i))^p), "
                  "clamped to [0, C - 1]; e >= t_f gives C - 1, e <= t_i gives 0 (the public code breaks for "
                  "e < t_i; nmref clamps).")
    return "LBC combination tables and removal schedules", definition, arrays


def _scores_with_removed(rng, n_groups, c, max_alive=None):
    """Signed scores (G, C) with removed (0) combinations: each alive with probability 0.6, or (max_alive)
    1 to max_alive alive per group, so the mask is genuinely sparse even for large C."""
    alpha = rng.uniform(-0.5, 1.0, (n_groups, c))                       # (G, C)
    if max_alive is None:
        dead = rng.random((n_groups, c)) < 0.4                          # (G, C)
        dead[:, 0] &= ~dead.all(axis=1)                                 # every group keeps one alive
    else:
        counts = rng.integers(1, max_alive + 1, n_groups)               # (G,)
        ranks = np.argsort(rng.random((n_groups, c)), axis=1)           # (G, C) random order
        dead = ranks >= counts[:, None]
    alpha[dead] = 0.0
    return alpha


def _cancelling_scores(rng, n_groups, table):
    """2:4 scores (G, C) in multiples of 0.25, some removed; in every even group exactly two alive
    combinations that share one position, with scores s and -s: that position sums to 0 and is pruned
    although alive combinations contain it (the mask is ``sum != 0``, not ``any alive covers``)."""
    alpha = rng.integers(-3, 4, (n_groups, len(table))) * 0.25          # (G, C), zeros = removed
    sharing = [(i, j) for i in range(len(table)) for j in range(i + 1, len(table))
               if int((table[i] & table[j]).sum()) == 1]
    for group in range(0, n_groups, 2):
        i, j = sharing[rng.integers(len(sharing))]
        alpha[group] = 0.0
        alpha[group, i] = s = rng.integers(1, 4) * 0.25
        alpha[group, j] = -s
    return alpha


def lbc_grads_file(rng):
    """LBC masks, score gradients and weight gradients with some combinations removed."""
    arrays = []
    cases = (("linear", (6, 16), (2, 4), None), ("conv", (3, 8, 3, 3), (2, 4), None),
             ("linear", (4, 16), (4, 8), None), ("linear", (4, 16), (2, 4), "cancel"))
    for layout, shape, (n, m), variant in cases:
        table = combinations(n, m)
        w = rng.standard_normal(shape)                                  # like the weight
        g = rng.standard_normal(shape)                                  # dL/dW~
        w_groups, g_groups = to_groups(w, m, layout), to_groups(g, m, layout)   # (G, M)
        if variant == "cancel":
            alpha = _cancelling_scores(rng, w_groups.shape[0], np.asarray(table, dtype=bool))   # (G, C)
        else:
            alpha = _scores_with_removed(rng, w_groups.shape[0], len(table), 3)    # (G, C)
        alive = alpha != 0                                              # (G, C)
        group_mask = mask_from_scores(alpha, alive, table)              # (G, M)
        mask = from_groups(group_mask, shape, layout)                  # like w
        key = f"{layout}_{_tag(n, m)}" + (f"_{variant}" if variant else "")
        arrays += [(f"{key}_weight", w, f"W {shape}, layout {layout}"),
                   (f"{key}_grad_masked", g, "g = dL/dW~"),
                   (f"{key}_alpha", alpha, "scores (G, C), 0 = removed; G in to_groups order"),
                   (f"{key}_mask", mask, "E = ((alpha * (alpha != 0)) @ I) != 0, back in the weight's shape"),
                   (f"{key}_score_grad", score_grad(g_groups, w_groups, alive, table),
                    "dL/dalpha = alive * ((g * W) @ I.T) over (G, M) groups"),
                   (f"{key}_weight_grad", masked_grad(g, w, mask), "dL/dW = E * g")]
    definition = ("Groups (G, M) come from to_groups(x, m, layout) (conv: NHWC order (Cout, kh, kw, Cin)); "
                  "I = combinations(n, m); alive = alpha != 0; E = ((alpha * alive) @ I) != 0; "
                  "dL/dalpha = alive * ((g * W) @ I.T); dL/dW = E * g (Zhang et al. 2022). Scores are signed: "
                  "in linear_2to4_cancel every even group has two alive combinations sharing one position with "
                  "scores s and -s, so that position is pruned although alive combinations contain it.")
    return "LBC masks, score gradients and weight gradients (2:4 linear and conv, 4:8 linear, 2:4 with " \
        "cancelling signed scores)", \
        definition, arrays


TIES_K = 3


def lbc_step_file(rng):
    """One LBC training step (strict removal): remove, mask, gradients, SGD on weights and scores."""
    n, m, epoch, epochs, t_f = 2, 4, 4, 20, 10
    w0 = rng.standard_normal((6, 16))                                   # (out, in)
    g = rng.standard_normal((6, 16))                                    # dL/dW~
    weight = Param(w0.copy(), "weight")
    lbc = LBC(n, m, t_f=t_f).bind(weight, "linear")
    alpha0 = _scores_with_removed(rng, *lbc.scores.value.shape)         # (G, C)
    v_alpha0 = np.where(alpha0 != 0, rng.standard_normal(alpha0.shape), 0.0)    # (G, C)
    v_w0 = rng.standard_normal(w0.shape)                                # (out, in)
    lbc.scores.value[...] = alpha0
    lbc.alive[...] = alpha0 != 0
    lbc.scores.state["momentum"], weight.state["momentum"] = v_alpha0.copy(), v_w0.copy()
    lbc.on_epoch(epoch, epochs)
    lbc.before_step()
    alpha_removed, alive_removed = lbc.scores.value.copy(), lbc.alive.copy()
    lbc.masked(weight.value)
    weight.grad = lbc.weight_grad(g, weight.value)
    score_gradient = lbc.scores.grad.copy()
    lr, mu = SGD_HYPER["lr"], SGD_HYPER["momentum"]
    SGD([{"params": [weight], "weight_decay": SGD_HYPER["weight_decay"]},
         {"params": [lbc.scores], "weight_decay": lbc.score_weight_decay}], lr=lr, momentum=mu).step()
    ties_alpha0 = rng.integers(-2, 3, (16, 6)) * 0.25                  # (G, C): ties among alive scores
    ties_alpha, ties_alive = ties_alpha0.copy(), ties_alpha0 != 0
    remove_lowest(ties_alpha, ties_alive, TIES_K)
    arrays = [("weight0", w0, "W before the step"), ("grad_masked", g, "g = dL/dW~ of this step's forward"),
              ("alpha0", alpha0, "scores (G, C) before the step, 0 = removed"),
              ("momentum_weight0", v_w0, "W's momentum buffer before the step"),
              ("momentum_alpha0", v_alpha0, "scores' momentum buffer before the step (0 where removed)"),
              ("k", np.int64(lbc.k), f"removal_schedule({epoch}, C=6, t_i=0, t_f={t_f}, p=3)"),
              ("alpha_removed", alpha_removed, "scores after removing the k lowest per group"),
              ("alive_removed", alive_removed, "alive flags after removal"),
              ("mask", lbc.mask, "E of the forward, weight shape"),
              ("weight_grad", weight.grad, "dL/dW = E * g"),
              ("score_grad", score_gradient, "dL/dalpha = alive * ((g * W) @ I.T)"),
              ("weight1", weight.value, "W after the SGD step"), ("alpha1", lbc.scores.value, "scores after"),
              ("momentum_weight1", weight.state["momentum"], "W's buffer after"),
              ("momentum_alpha1", lbc.scores.state["momentum"], "scores' buffer after"),
              ("lr", np.float64(lr), "lr of both groups"), ("momentum", np.float64(mu), "SGD momentum"),
              ("weight_decay", np.float64(SGD_HYPER["weight_decay"]), "weight decay of W"),
              ("score_weight_decay", np.float64(lbc.score_weight_decay), "weight decay of the scores"),
              ("ties_alpha0", ties_alpha0, "removal only: scores (G, C) in multiples of 0.25, 0 = removed, "
                                           "many equal alive scores"),
              ("ties_k", np.int64(TIES_K), "k lowest removed per group from ties_alpha0"),
              ("ties_alpha_removed", ties_alpha, "ties_alpha0 after removing the k lowest per group"),
              ("ties_alive_removed", ties_alive, "alive flags after that removal")]
    definition = ("LBC 2:4 on a linear (6, 16) weight, strict removal, epoch 4 of 20 with t_f = 10. Removal: "
                  "rank per group with dead (alive False or score 0) first, then alive by signed score, ties to "
                  "the lower index (stable); the k lowest are set to 0, marked dead and their momentum zeroed. "
                  "Then alive = alive_removed, E = ((alpha * alive) @ I) != 0, dW = E * g, dalpha = alive * "
                  "((g * W) @ I.T); torch-style SGD (d = grad + wd * p; v = mu v + d; p -= lr v) on both. "
                  "ties_*: the same removal alone on tie-heavy scores: k counts the dead combinations too (they "
                  "rank first), and among equal scores the lower combination index is removed first.")
    return ("one LBC step: removal, mask, weight and score gradients, SGD with momentum; removal alone on "
            "tie-heavy scores"), definition, arrays


FILES = (("masks.npz", masks_file), ("ste_srste_grads.npz", grads_file), ("srste_sgd_step.npz", sgd_step_file),
         ("sad.npz", sad_file), ("lbc_tables.npz", lbc_tables_file),
         ("lbc_grads.npz", lbc_grads_file), ("lbc_step.npz", lbc_step_file))


def npz_bytes(arrays):
    """An .npz (np.load reads it) whose bytes depend only on the arrays: stored entries, fixed dates."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays:
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.asarray(array, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.create_system, info.external_attr = 3, 0o644 << 16
            archive.writestr(info, npy.getvalue())
    return buffer.getvalue()


def build_golden():
    """(manifest, {file name: bytes}): every golden file, computed from ``SEED``."""
    from . import __version__
    manifest = {"format": "nmref-golden", "format_version": FORMAT_VERSION, "nmref_version": __version__,
                "seed": SEED, "conventions": {"n": "n counts KEPT weights of every m (n:m = keep n)",
                                              "mask": "boolean, True = kept", "tie_rule": TIE_RULE,
                                              "layouts": LAYOUT_RULES, "dtype": "float64 unless stated"},
                "files": {}}
    contents = {}
    for index, (name, build) in enumerate(FILES):
        description, definition, entries = build(np.random.default_rng([SEED, index]))
        arrays = [(key, np.asarray(value)) for key, value, _ in entries]
        contents[name] = data = npz_bytes(arrays)
        manifest["files"][name] = {
            "description": description, "definition": definition, "sha256": hashlib.sha256(data).hexdigest(),
            "arrays": {key: {"shape": list(array.shape), "dtype": str(array.dtype), "meaning": meaning}
                       for (key, array), (_, _, meaning) in zip(arrays, entries)}}
    return manifest, contents


def write_golden(directory):
    """Write the golden .npz files and manifest.json into ``directory``; returns the manifest."""
    directory = os.fspath(directory)
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory}: is a file; give a directory for the golden files (created if "
                                 "missing), e.g. nmref golden golden/")
    os.makedirs(directory, exist_ok=True)
    manifest, contents = build_golden()
    for name, data in contents.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    with open(os.path.join(directory, "manifest.json"), "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
    return manifest
