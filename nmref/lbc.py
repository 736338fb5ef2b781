"""LBC: learning the best combination of kept positions per group (Zhang et al. 2022), docs/algorithms.md section 5.

Each group of M weights carries one score per N-subset ("combination") of its positions, alpha (G, C),
C = C(M, N). A combination is alive while its score is non-zero; position j is kept when the alive scores
of the combinations containing it sum to non-zero:

    E = ((alpha * alive) @ I) != 0                   I (C, M): the 0/1 combination table
    dL/dalpha = alive * ((g * W) @ I.T)              identity backward through the mask
    dL/dW = E * g                                    no STE: uncovered weights get no loss gradient

Before every step the k lowest signed scores per group are removed (set to 0, dead ones ranked first);
k grows once per epoch by a cubic schedule until one combination per group is left at epoch t_f, after
which the scores are frozen and the mask is exactly N:M.

Removal modes:
  "strict"    (default) removed combinations stay dead: their alive flag stays False, their score 0 and
              their momentum (``scores.state["momentum"]``) is cleared.
  "faithful"  the public code: a removed score is zeroed but keeps its momentum, so the next optimizer
              steps move it off 0; it is then alive again (alive = score != 0) and ranked by its value.

Large C (8:16 has C = 12870): nothing of shape (G, C, M) is ever built; the (G, C) products run over
chunks of groups of at most ``CHUNK_ELEMENTS`` scores, next to a plain one-line reference of each.
"""
import itertools
import math
from functools import lru_cache

import numpy as np

from .backend import array_module, check_array, check_state, to_device, to_host
from .groups import check_straddle, from_groups, to_groups
from .masks import check_float, check_pattern
from .params import Param
from .sparsity import Method, masked_grad

MODES = ("strict", "faithful")
MAX_COMBINATIONS = 1 << 20
CHUNK_ELEMENTS = 1 << 18


@lru_cache(maxsize=None)
def _combinations(n, m):
    kept = list(itertools.combinations(range(m), n))
    table = np.zeros((len(kept), m), dtype=np.uint8)                # (C, M)
    rows = np.repeat(np.arange(len(kept)), n)
    table[rows, np.asarray(kept, dtype=np.int64).reshape(-1)] = 1
    table.flags.writeable = False
    return table


def combinations(n, m):
    """The (C, M) uint8 0/1 table I of all N-subsets of M positions, C = C(M, N), rows in lexicographic
    order of the kept index tuples (row 0 keeps positions 0..N-1). Read-only and cached."""
    check_pattern(n, m)
    c = math.comb(m, n)
    if c > MAX_COMBINATIONS:
        raise ValueError(f"{n}:{m} has C({m}, {n}) = {c} combinations per group, more than LBC can hold "
                         f"(max {MAX_COMBINATIONS}); use a smaller m (e.g. 2:4, 4:8 or 8:16)")
    return _combinations(int(n), int(m))


def _check_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} must be finite")


def check_schedule(t_i, t_f, power):
    """Validate the removal schedule's arguments (t_f > t_i >= 0, power > 0)."""
    for name, value in (("t_i", t_i), ("t_f", t_f), ("power", power)):
        _check_number(name, value)
    if t_i < 0:
        raise ValueError(f"t_i={t_i} must be >= 0 (the epoch removal starts)")
    if not t_f > t_i:
        raise ValueError(f"t_f={t_f} must be > t_i={t_i}: removal runs from epoch t_i to t_f "
                         "(pass a larger t_f, or t_f=None for half the run)")
    if not power > 0:
        raise ValueError(f"power={power} must be > 0 (the paper uses 3, its DeiT code 4)")


def removal_schedule(epoch, c, t_i, t_f, power=3):
    """Combinations removed per group at ``epoch``: k = C - card(e),
    card(e) = 1 + ceil((C - 1) (1 - (e - t_i) / (t_f - t_i))^p), clamped to [0, C - 1].

    e >= t_f leaves exactly one combination (k = C - 1). Before t_i the formula gives card > C, i.e. k < 0,
    which breaks the public code's top-k; nmref clamps it to k = 0 (nothing removed). Computed in Python
    floats in the public code's order of operations, so its ceil matches the public code's bit for bit.
    """
    _check_number("epoch", epoch)
    if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
        raise ValueError(f"c={c!r} must be a positive int, the number of combinations per group")
    check_schedule(t_i, t_f, power)
    if epoch >= t_f:
        return int(c) - 1
    if epoch <= t_i:
        return 0
    card = 1 + math.ceil((c - 1) * (1 - (epoch - t_i) / (t_f - t_i)) ** power)
    return int(min(max(c - card, 0), c - 1))


def init_scores(n_groups, n, m, like=None):
    """alpha (G, C) filled with 1 / C(M-1, N-1), so alpha @ I = 1 at every position: training starts dense.
    dtype and array module are those of ``like`` (default float64 NumPy)."""
    check_pattern(n, m)
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 0:
        raise ValueError(f"n_groups={n_groups!r} must be an int >= 0 (the number of N:M groups, w.size // m)")
    if like is not None:
        check_float(like, "like")
    xp = array_module(like)
    dtype = like.dtype if like is not None else np.float64
    c = len(combinations(n, m))
    return xp.full((n_groups, c), 1.0 / math.comb(m - 1, n - 1), dtype=dtype)    # (G, C)


def _table_like(table, alpha):
    xp = array_module(alpha)
    return xp.asarray(table).astype(alpha.dtype, copy=False)                     # (C, M)


def _chunk_rows(n_cols, chunk):
    if chunk is None:
        return max(1, CHUNK_ELEMENTS // max(1, n_cols))
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk={chunk!r} must be a positive int (groups per chunk) or None")
    return int(chunk)


def _check_scores(alpha, alive, table):
    for name, a in (("alpha", alpha), ("alive", alive), ("table", table)):
        check_array(a, name)
    if alpha.ndim != 2 or alive.shape != alpha.shape:
        raise ValueError(f"alpha {tuple(alpha.shape)} and alive {tuple(alive.shape)} must both be (G, C)")
    if alive.dtype != bool:
        raise TypeError(f"alive must be a boolean array, got dtype {alive.dtype}")
    if table.ndim != 2 or table.shape[0] != alpha.shape[1]:
        raise ValueError(f"table {tuple(table.shape)} must be (C, M) with C = alpha.shape[1] = {alpha.shape[1]}")


def mask_from_scores_reference(alpha, alive, table):
    """E = ((alpha * alive) @ I) != 0, the definition (one (G, C) temporary)."""
    _check_scores(alpha, alive, table)
    return ((alpha * alive) @ _table_like(table, alpha)) != 0                    # (G, M)


def mask_from_scores(alpha, alive, table, chunk=None):
    """Keep-mask (G, M): E = ((alpha * alive) @ I) != 0, over chunks of groups (LBC, Zhang et al. 2022).

    The formula is the definition, as in the public code: a position is kept when the alive scores covering
    it sum to non-zero. With signed scores two alive combinations can cancel (0.5 + (-0.5) = 0) and leave
    a covered position pruned; an all-dead group is fully pruned.
    """
    _check_scores(alpha, alive, table)
    xp = array_module(alpha)
    t = _table_like(table, alpha)                                                # (C, M)
    mask = xp.empty((alpha.shape[0], t.shape[1]), dtype=bool)                    # (G, M)
    rows = _chunk_rows(alpha.shape[1], chunk)
    for s in range(0, alpha.shape[0], rows):
        mask[s:s + rows] = ((alpha[s:s + rows] * alive[s:s + rows]) @ t) != 0   # (B, M)
    return mask


def score_grad_reference(g_groups, w_groups, alive, table):
    """dL/dalpha = alive * ((g * W) @ I.T), the definition."""
    return alive * ((g_groups * w_groups) @ _table_like(table, g_groups).T)     # (G, C)


def score_grad(g_groups, w_groups, alive, table, out=None, chunk=None):
    """dL/dalpha[g, k] = alive[g, k] * sum_{j in theta_k} g[g, j] W[g, j] (Zhang et al. 2022), (G, C).

    g_groups = dL/dW~ and w_groups = W as (G, M) groups; written into ``out`` when given (same dtype).
    """
    for name, a in (("g_groups", g_groups), ("w_groups", w_groups), ("alive", alive), ("table", table)):
        check_array(a, name)
    if g_groups.ndim != 2 or g_groups.shape != w_groups.shape or alive.shape[:1] != g_groups.shape[:1]:
        raise ValueError(f"g_groups {tuple(g_groups.shape)}, w_groups {tuple(w_groups.shape)} must be the same "
                         f"(G, M) and alive {tuple(alive.shape)} (G, C)")
    if alive.dtype != bool or table.shape != (alive.shape[1], g_groups.shape[1]):
        raise ValueError(f"alive {tuple(alive.shape)} {alive.dtype} and table {tuple(table.shape)} must be "
                         f"(G, C) bool and (C, M) for groups {tuple(g_groups.shape)}")
    xp = array_module(g_groups, w_groups)
    gw = g_groups * w_groups                                                     # (G, M)
    t = _table_like(table, gw)                                                   # (C, M)
    if out is None:
        out = xp.empty(alive.shape, dtype=gw.dtype)                              # (G, C)
    elif out.shape != alive.shape or out.dtype != gw.dtype:
        raise ValueError(f"out {tuple(out.shape)} {out.dtype} must be {tuple(alive.shape)} {gw.dtype}")
    rows = _chunk_rows(alive.shape[1], chunk)
    for s in range(0, gw.shape[0], rows):
        block = out[s:s + rows]                                                  # (B, C)
        xp.matmul(gw[s:s + rows], t.T, out=block)
        xp.multiply(block, alive[s:s + rows], out=block)
    return out


def _ranking_key(alpha, alive):
    """Ranking value per combination: dead (alive False) first, then alive by signed score."""
    xp = array_module(alpha)
    return xp.where(alive, alpha, -xp.inf)                                       # (G, C)


def check_k(k, c):
    """k, the combinations removed per group, as an int in [0, C - 1]: at least one must survive."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= c - 1:
        raise ValueError(f"k={k!r} must be an int in [0, C - 1 = {c - 1}]: at least one "
                         "combination per group must survive")
    return int(k)


def lowest_reference(alpha, alive, k):
    """(G, C) bool: the k lowest of the ranking key per group; a stable sort, ties -> lower index first."""
    k = check_k(k, alpha.shape[1])
    xp = array_module(alpha)
    order = xp.argsort(_ranking_key(alpha, alive), axis=1, kind="stable")        # (G, C)
    rank = xp.argsort(order, axis=1)                                             # (G, C)
    return rank < k


def lowest(alpha, alive, k, chunk=None):
    """Same as ``lowest_reference`` in O(G C). Groups with exactly k dead combinations (every step but the
    first of an epoch in strict mode) choose them directly; the others partition for the k-th value and
    break ties at it by index."""
    k = check_k(k, alpha.shape[1])
    xp = array_module(alpha)
    chosen = xp.zeros(alpha.shape, dtype=bool)                                   # (G, C)
    if k == 0:
        return chosen
    rows = _chunk_rows(alpha.shape[1], chunk)
    for s in range(0, alpha.shape[0], rows):
        dead = ~alive[s:s + rows]                                                # (B, C)
        block = chosen[s:s + rows]                                               # (B, C) view
        exact = xp.count_nonzero(dead, axis=1) == k                              # (B,)
        if bool(exact.all()):
            block[...] = dead
            continue
        block[exact] = dead[exact]
        todo = xp.flatnonzero(~exact)                                            # (B',)
        key = _ranking_key(alpha[s:s + rows][todo], ~dead[todo])                # (B', C)
        kth = xp.partition(key, k - 1, axis=1)[:, k - 1:k]                      # (B', 1)
        pick = key <= kth                                                        # (B', C)
        tied = xp.flatnonzero(xp.count_nonzero(pick, axis=1) > k)               # rows tied at kth
        if tied.size:
            key_t, kth_t = key[tied], kth[tied]                                  # (T, C), (T, 1)
            below = key_t < kth_t                                                # (T, C)
            ties = key_t == kth_t                                                # (T, C)
            need = k - below.sum(axis=1, keepdims=True)                          # (T, 1)
            pick[tied] = below | (ties & (xp.cumsum(ties, axis=1) <= need))
        block[todo] = pick
    return chosen


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"removal={mode!r} is not one of {MODES} ('strict': removed combinations stay dead; "
                         "'faithful': the public code, removed scores keep their momentum)")


def remove_lowest(alpha, alive, k, mode="strict", momentum=None, chunk=None):
    """Remove the k lowest signed scores per group in place: alpha[removed] = 0, alive[removed] = False.

    Dead combinations rank first (the public code subtracts 1000 from zero scores before its top-k): in
    "strict" mode dead = not alive or score exactly 0 (``alive`` holds the flags, removed stay dead, and
    ``momentum``, the scores' optimizer buffer when given, is cleared for them); in "faithful" mode
    dead = score exactly 0, ``alive`` is first reset to alpha != 0, so a removed score that momentum moved
    off 0 is alive again and ranked by its value, and momentum is left alone. Ties: the lower combination
    index is removed first. Dead scores beyond the k chosen stay 0 (the public code would leave them at
    -1000, a case its schedule never reaches). Removed scores become +0.0. Returns the removed (G, C) bool.
    """
    check_mode(mode)
    check_float(alpha, "alpha")
    check_array(alive, "alive")
    xp = array_module(alpha)
    if alive.shape != alpha.shape or alive.dtype != bool:
        raise ValueError(f"alive must be a boolean array of alpha's shape {tuple(alpha.shape)}")
    if momentum is not None and momentum.shape != alpha.shape:
        raise ValueError(f"momentum {tuple(momentum.shape)} must have alpha's shape {tuple(alpha.shape)}")
    k = check_k(k, alpha.shape[1])
    if not bool(xp.isfinite(alpha).all()):
        raise ValueError("LBC scores contain NaN or inf; lower the learning rate of the 'scores' group")
    removed = xp.empty(alpha.shape, dtype=bool)                                  # (G, C)
    rows = _chunk_rows(alpha.shape[1], chunk)
    for s in range(0, alpha.shape[0], rows):
        a, live = alpha[s:s + rows], alive[s:s + rows]                          # (B, C) views
        if mode == "faithful":
            xp.not_equal(a, 0, out=live)
        else:
            live &= a != 0
        chosen = lowest(a, live, k)                                              # (B, C)
        removed[s:s + rows] = chosen
        kept = ~chosen                                                           # (B, C)
        a *= kept                                                                # branch-free zeroing
        a += 0.0                                                                 # -0.0 -> +0.0, others exact
        live &= kept
        if momentum is not None and mode == "strict":
            momentum[s:s + rows] *= kept
    return removed


class LBC(Method):
    """Learned N:M combinations (Zhang et al. 2022): W~ = E * W with E = ((alpha*alive) @ I) != 0,
    dW = E * g, dalpha = alive * ((g*W) @ I.T); k lowest scores removed before each step (section 5).

    n kept of every m; t_i, t_f: first and last epoch of removal (t_f=None: half the run, ``epochs / 2``
    from ``on_epoch``); power: the schedule's exponent; removal: "strict" or "faithful" (module docstring);
    score_weight_decay: the weight decay the training loop gives the "scores" optimizer group;
    straddle: groups may cross rows / kernel positions, as the public code's flatten does (groups.py).
    """

    def __init__(self, n, m, t_i=0, t_f=None, power=3, removal="strict", score_weight_decay=1e-4,
                 straddle=False):
        self.table = combinations(n, m)                                          # (C, M) uint8
        self.n, self.m, self.c = int(n), int(m), len(self.table)
        check_schedule(t_i, t_i + 1 if t_f is None else t_f, power)
        check_mode(removal)
        _check_number("score_weight_decay", score_weight_decay)
        if score_weight_decay < 0:
            raise ValueError(f"score_weight_decay={score_weight_decay} must be >= 0 (the scores' weight decay, "
                             "default 1e-4)")
        self.t_i, self.t_f, self.power, self.removal = t_i, t_f, power, removal
        self.score_weight_decay = score_weight_decay
        check_straddle(straddle)
        self.straddle = straddle
        self.k, self.epoch, self.frozen = 0, 0, False
        self.scores = None

    def bind(self, weight, layout):
        """Create the scores Param (G, C), group "scores", for the weight's N:M groups."""
        super().bind(weight, layout)
        w = weight.value
        xp = array_module(w)
        n_groups = to_groups(w, self.m, layout, self.straddle).shape[0]
        name = f"{weight.name}.scores" if weight.name else "scores"
        self.scores = Param(init_scores(n_groups, self.n, self.m, like=w), name=name, group="scores")
        self.alive = xp.ones((n_groups, self.c), dtype=bool)                     # (G, C)
        self._table = xp.asarray(self.table).astype(w.dtype)                     # (C, M)
        self._frozen_scores = None
        self._removed_k = None
        return self

    def _groups(self, w):
        return to_groups(w, self.m, self.layout, self.straddle)                 # (G, M)

    def _require_bound(self):
        if self.scores is None:
            raise RuntimeError("LBC is not bound to a weight: call method.bind(weight_param, layout) first "
                               "(layers do this when given method=lambda: LBC(n, m))")

    def current_alive(self):
        """(G, C) bool: score non-zero, and (strict mode) not removed."""
        self._require_bound()
        nonzero = self.scores.value != 0                                         # (G, C)
        return nonzero & self.alive if self.removal == "strict" else nonzero

    def group_mask(self):
        """(G, M) keep-mask of the current scores."""
        return mask_from_scores(self.scores.value, self.current_alive(), self._table)

    def masked(self, w):
        self._require_bound()
        self._alive_forward = self.current_alive()                               # (G, C)
        groups_mask = mask_from_scores(self.scores.value, self._alive_forward, self._table)  # (G, M)
        self.mask = from_groups(groups_mask, w.shape, self.layout)
        return w * self.mask

    def weight_grad(self, g, w):
        if self.mask is None:
            raise RuntimeError("LBC.weight_grad needs the mask of a forward: call masked(w) first")
        if self.frozen:
            self.scores.grad[...] = 0
        else:
            out = self.scores.grad if self.scores.grad.dtype == g.dtype else None
            grad = score_grad(self._groups(g), self._groups(w),
                              self._alive_forward, self._table, out=out)
            if out is None:
                self.scores.grad[...] = grad
        return masked_grad(g, w, self.mask)

    def params(self):
        self._require_bound()
        return [self.scores]

    def on_epoch(self, epoch, epochs):
        """k for this epoch from the schedule; t_f=None means epochs / 2."""
        t_f = self.t_f if self.t_f is not None else epochs / 2
        if self.t_f is None and not t_f > self.t_i:
            raise ValueError(f"t_f = epochs / 2 = {t_f} is not after t_i={self.t_i}; pass t_f explicitly "
                             "or a smaller t_i")
        self.epoch = epoch
        self.k = removal_schedule(epoch, self.c, self.t_i, t_f, self.power)

    def _momentum(self):
        momentum = self.scores.state.get("momentum")
        return momentum if momentum is not None and momentum.shape == self.scores.value.shape else None

    def before_step(self):
        """Remove the k lowest scores per group; at k = C - 1 freeze the scores (one combination left).

        Strict mode with k unchanged since the last removal skips the ranking: every group already has at
        least k dead combinations, which rank first, and dead ones stay dead, so the removal would change
        nothing."""
        self._require_bound()
        if self.frozen:
            self.scores.value[...] = self._frozen_scores
            momentum = self._momentum()
            if momentum is not None:
                momentum[...] = 0
            return
        if self.removal == "strict" and self.k == self._removed_k:
            self.alive &= self.scores.value != 0                                 # the k lowest are dead already
        else:
            remove_lowest(self.scores.value, self.alive, self.k, self.removal, self._momentum())
            self._removed_k = self.k
        if self.k == self.c - 1:
            self.freeze()

    def freeze(self):
        """Stop training the scores: values kept as they are (restored before every step), momentum cleared."""
        self.frozen = True
        self._frozen_scores = self.scores.value.copy()
        self.scores.grad[...] = 0
        momentum = self._momentum()
        if momentum is not None:
            momentum[...] = 0

    def to_device(self, device):
        """Move the method's own arrays (the layer moves the scores Param itself)."""
        for name in ("alive", "_table", "_frozen_scores", "_alive_forward", "mask"):
            if getattr(self, name, None) is not None:
                setattr(self, name, to_device(getattr(self, name), device))
        return self

    def alive_per_group(self):
        """Mean number of alive combinations per group."""
        return float(self.current_alive().sum(axis=1).mean())

    def density(self):
        """Forward density: kept fraction of the last forward's mask (of the current scores before any)."""
        if self.mask is not None or self.scores is None:
            return super().density()
        return float(self.group_mask().mean())

    def is_nm(self):
        """True when every group keeps at most n positions (the mask is deployable as N:M)."""
        return bool((self.group_mask().sum(axis=1) <= self.n).all())

    def state_dict(self):
        self._require_bound()
        scores = self._frozen_scores if self.frozen else self.scores.value
        return {"scores": to_host(scores).copy(), "alive": to_host(self.alive).copy(),
                "k": int(self.k), "epoch": self.epoch, "frozen": bool(self.frozen)}

    def load_state_dict(self, state):
        self._require_bound()
        check_state(state, "LBC", ("scores", "alive", "k", "frozen", "epoch"))
        xp = array_module(self.scores.value)
        for key, like in (("scores", self.scores.value), ("alive", self.alive)):
            if tuple(np.shape(state[key])) != tuple(like.shape):
                raise ValueError(f"LBC state {key!r} has shape {tuple(np.shape(state[key]))}, this layer "
                                 f"needs {tuple(like.shape)} ({self.n}:{self.m}, C = {self.c})")
        self.scores.value[...] = xp.asarray(state["scores"], dtype=self.scores.value.dtype)
        self.alive[...] = xp.asarray(state["alive"], dtype=bool)
        self.k, self.frozen = int(state["k"]), bool(state["frozen"])
        epoch = state["epoch"]
        self.epoch = epoch.item() if hasattr(epoch, "item") else epoch
        self._frozen_scores = self.scores.value.copy() if self.frozen else None
        self._removed_k = None

    def __repr__(self):
        return f"LBC({self.n}, {self.m}, removal={self.removal!r})"
