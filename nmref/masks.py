"""The N:M magnitude mask: n of every m consecutive weights kept (True), docs/algorithms.md section 1.

Definition (the NumPy reference below): in each group, a stable ascending sort of |w|; the first m - n
positions are pruned. Ties: among equal |w| the lower index is pruned first. NaN / inf raise.
``nm_mask`` dispatches to kernels that give the identical mask: Numba for NumPy arrays, a CUDA kernel for
CuPy arrays. Also here: the compressed storage format (values + in-group indices, SR-STE Fig. 1), strict
validators, and the keep / prune pattern conventions.
"""
import re
from dataclasses import dataclass

import numpy as np

from . import kernels
from .backend import array_module, check_array, is_gpu_array, to_host
from .groups import (axis_view, check_divisible, check_layout, check_m, check_shape, from_groups, group_position,
                     grouped_axis_length, grouped_shape, to_groups)

BACKENDS = ("auto", "numpy", "numba", "cupy")
KERNEL_DTYPES = (np.float16, np.float32, np.float64)


def check_pattern(n, m):
    """Validate n (kept) and m (group size)."""
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, (int,)) and not hasattr(v, "__index__"):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if m < 1:
        raise ValueError(f"m={m} must be >= 1")
    if not 1 <= n <= m:
        fix = (f"n comes first: did you mean n={m}, m={n}?" if n > m else
               "for a library that counts pruned weights use parse_pattern(..., semantics='prune')")
        raise ValueError(f"n={n} kept out of m={m} is impossible: need 1 <= n <= m (n counts kept weights; {fix})")


def check_float(w, name="w"):
    check_array(w, name)
    if w.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {w.dtype}; "
                        "cast it (w.astype(np.float32)) or, for a mask, use is_nm / check_nm")


def _nonfinite_error(name):
    return ValueError(f"{name} contains NaN or inf; an N:M mask of it would be meaningless. "
                      "Check the training run (lr, loss) that produced it")


def check_finite(w, name="w"):
    check_float(w, name)
    xp = array_module(w)
    if not bool(xp.isfinite(w).all()):
        raise _nonfinite_error(name)


def nm_mask_reference(w, n, m, layout="linear", straddle=False):
    """Boolean keep-mask of ``w``'s shape, n kept of every m along the grouped axis (the definition)."""
    check_pattern(n, m)
    check_finite(w)
    xp = array_module(w)
    groups = to_groups(w, m, layout, straddle)                      # (G, M)
    order = xp.argsort(xp.abs(groups), axis=1, kind="stable")       # (G, M) ascending |w|, ties by index
    keep = xp.ones(groups.shape, dtype=bool)                        # (G, M)
    xp.put_along_axis(keep, order[:, : m - n], False, axis=1)
    return from_groups(keep, w.shape, layout)


def pick_backend(w, backend="auto"):
    """The mask backend for ``w``: "auto" is CuPy for CuPy arrays, Numba (else the reference) for NumPy."""
    check_array(w)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    on_gpu = is_gpu_array(w)
    if backend == "auto":
        if on_gpu:
            return "cupy"
        fast = w.dtype.type in KERNEL_DTYPES and kernels.available("numba")
        return "numba" if fast else "numpy"
    if backend in ("numba", "cupy"):
        if on_gpu != (backend == "cupy"):
            where = "a CuPy" if on_gpu else "a NumPy"
            raise ValueError(f"backend={backend!r} cannot run on {where} array; use backend='auto' or move "
                             "the array (nmref.to_device / nmref.to_host)")
        if w.dtype.type not in KERNEL_DTYPES:
            raise TypeError(f"backend={backend!r} supports float16/32/64, got dtype {w.dtype}; "
                            "use backend='numpy'")
    return backend


def _kernel_mask(w, n, m, layout, straddle, run):
    """Run a bit-key kernel ``run(keys (A, K, B), m, n, absmask, limit, mask) -> #non-finite`` on ``w``."""
    xp = array_module(w)
    if w.dtype == np.float16 or not w.dtype.isnative:
        w = w.astype(np.float32 if w.dtype == np.float16 else w.dtype.newbyteorder("="))   # exact
    key, absmask, limit = kernels.key_constants(w.dtype)
    if straddle and grouped_axis_length(w.shape, layout) % m:
        groups = xp.ascontiguousarray(to_groups(w, m, layout, straddle))        # (G, M)
        keep = xp.empty(groups.shape, dtype=bool)                               # (G, M)
        bad = run(groups.view(key).reshape(1, -1, 1), m, n, absmask, limit, keep.reshape(1, -1, 1))
        mask = from_groups(keep, w.shape, layout)
    else:
        keys = axis_view(xp.ascontiguousarray(w), layout).view(key)             # (A, K, B)
        mask = xp.empty(w.shape, dtype=bool)
        bad = run(keys, m, n, absmask, limit, axis_view(mask, layout))
    if bad:
        raise _nonfinite_error("w")
    return mask


def nm_mask(w, n, m, layout="linear", straddle=False, backend="auto"):
    """N:M magnitude keep-mask (True = kept), n of every m consecutive weights along the input axis.

    Identical to ``nm_mask_reference`` on every input; ``backend`` forces "numpy" (the reference),
    "numba" or "cupy" (tests); "auto" picks by array type.
    """
    check_pattern(n, m)
    check_float(w)
    check_layout(layout, w.ndim)
    check_divisible(w.shape, m, layout, straddle)
    name = pick_backend(w, backend)
    if name == "numpy":
        return nm_mask_reference(w, n, m, layout, straddle)
    return _kernel_mask(w, n, m, layout, straddle, kernels.load(name).run_mask)


# -- storage format: values + in-group indices (SR-STE Fig. 1) ------------------------------------------

def _check_exact_n(mask_groups, n, m, what="mask"):
    xp = array_module(mask_groups)
    counts = mask_groups.sum(axis=1)                                                # (G,)
    if mask_groups.shape[0] and not bool((counts == n).all()):
        g = int(xp.argmax(counts != n))
        raise ValueError(f"{what} keeps {int(counts[g])} in group {g}, compress_nm needs exactly n={n} "
                         f"of every m={m}; build it with nm_mask(w, {n}, {m}, layout)")


def compress_nm(w, n, m, layout="linear", mask=None):
    """(values, indices): the n kept weights of each group in order and their positions in the group.

    Shapes: grouped view (linear (out, in), conv (Cout, *k, Cin), nchw_flatten (Cout, K)) with the last
    axis K shrunk to K*n/m; indices uint8 in [0, m), increasing within a group. ``mask`` (exactly n kept
    per group) defaults to ``nm_mask(w, n, m, layout)``.
    """
    check_pattern(n, m)
    if m > 256:
        raise ValueError(f"m={m} does not fit uint8 indices; compress_nm supports m <= 256")
    check_array(w)
    xp = array_module(w)
    if mask is None:
        mask = nm_mask(w, n, m, layout)
    else:
        check_array(mask, "mask")
    if tuple(mask.shape) != tuple(w.shape) or mask.dtype != bool:
        raise ValueError(f"mask must be a bool array of w's shape {tuple(w.shape)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    groups = to_groups(w, m, layout)                                                # (G, M)
    keep = to_groups(mask, m, layout)                                               # (G, M)
    _check_exact_n(keep, n, m)
    positions = xp.argsort(~keep, axis=1, kind="stable")[:, :n]                     # (G, n) ascending
    values = xp.take_along_axis(groups, positions, axis=1)                          # (G, n)
    view = grouped_shape(w.shape, layout)
    out_shape = (*view[:-1], view[-1] // m * n)
    return values.reshape(out_shape), positions.astype(xp.uint8).reshape(out_shape)


def decompress_nm(values, indices, n, m, shape, layout="linear"):
    """Dense weight of ``shape`` from ``compress_nm`` output (zeros at pruned positions): exact inverse."""
    check_pattern(n, m)
    check_array(values, "values")
    check_array(indices, "indices")
    check_shape(shape)
    xp = array_module(values)
    shape = tuple(int(s) for s in shape)
    check_layout(layout, len(shape))
    check_divisible(shape, m, layout)
    view = grouped_shape(shape, layout)
    want = (*view[:-1], view[-1] // m * n)
    for name, a in (("values", values), ("indices", indices)):
        if tuple(a.shape) != want:
            raise ValueError(f"{name} has shape {tuple(a.shape)}, expected {want} for a {n}:{m} {layout} "
                             f"weight of shape {shape}")
    if indices.dtype.kind not in "ui":
        raise TypeError(f"indices must be integers (uint8), got {indices.dtype}")
    pos = indices.reshape(-1, n).astype(xp.int64)                                   # (G, n)
    if pos.size and (bool((pos < 0).any()) or bool((pos >= m).any())
                     or bool((xp.diff(pos, axis=1) <= 0).any())):
        raise ValueError(f"indices must be increasing positions in [0, {m}) within each group of {n}")
    groups = xp.zeros((pos.shape[0], m), dtype=values.dtype)                        # (G, M)
    rows = xp.arange(pos.shape[0])[:, None]                                         # (G, 1)
    groups[rows, pos] = values.reshape(-1, n)
    return from_groups(groups, shape, layout)


# -- validators ------------------------------------------------------------------------------------------

def _violations(w, n, m, layout, straddle):
    """(G,) non-zero counts and (G,) bool 'more than n' for the groups of ``w``."""
    counts = (to_groups(w, m, layout, straddle) != 0).sum(axis=1)                   # (G,)
    return counts, counts > n


def _check_transposable(w, m, layout):
    check_array(w)
    if layout != "linear" or w.ndim != 2:
        raise ValueError(f"transposable=True needs a 2-D (out, in) weight with layout='linear', got "
                         f"{w.ndim}-D with layout={layout!r}")
    check_m(m)
    if w.shape[0] % m or w.shape[1] % m:
        raise ValueError(f"transposable=True needs both dims of the weight {tuple(w.shape)} divisible by "
                         f"m={m}")


def is_nm(w, n, m, layout="linear", straddle=False, transposable=False):
    """True when every group of m holds at most n non-zeros (``transposable``: along both axes of a 2-D w)."""
    check_pattern(n, m)
    if transposable:
        _check_transposable(w, m, layout)
        return is_nm(w, n, m) and is_nm(w.T, n, m)
    return not bool(_violations(w, n, m, layout, straddle)[1].any())


def check_nm(w, n, m, layout="linear", straddle=False, transposable=False, name="weight"):
    """Raise ValueError naming the first group with more than n non-zeros (its weight index and count)."""
    check_pattern(n, m)
    checks = [(w, layout, name, "")]
    if transposable:
        _check_transposable(w, m, layout)
        checks.append((w.T, "linear", f"{name}.T", " (transposed: groups along the output axis)"))
    for arr, lay, label, note in checks:
        counts, bad = _violations(arr, n, m, lay, straddle)
        if bool(bad.any()):
            xp = array_module(bad)
            g = int(xp.argmax(bad))
            where = group_position(arr.shape, m, lay, g, straddle, name=label)
            raise ValueError(f"{name} is not {n}:{m}{note}: {where} holds {int(counts[g])} non-zeros, at most "
                             f"n={n} of every m={m} may be kept; {int(bad.sum())} of {bad.size} groups violate")


def auto_layout(ndim):
    """"linear" for 2-D weights, "conv" for >= 3-D (the layout every nmref layer uses)."""
    return "linear" if ndim == 2 else "conv"


def nm_report(arrays, n, m, layout="auto", straddle=False, max_positions=5):
    """Per-tensor N:M compliance of a dict of arrays (a checkpoint): {name: report dict}.

    Each report: shape, layout, density (non-zero fraction), groups, violating_groups, first_violations
    (weight indices), compliant (None when skipped) and skipped (the reason, or None). ``layout`` is
    "auto" (linear for 2-D, conv for >= 3-D), one layout for all, or a {name: layout} dict.
    """
    check_pattern(n, m)
    if not isinstance(arrays, dict):
        raise TypeError(f"arrays must be a dict name -> array, got {type(arrays).__name__}; for a torch model: "
                        "{k: v.numpy() for k, v in model.state_dict().items()}")
    out = {}
    for name, arr in arrays.items():
        check_array(arr, name)
        lay = layout.get(name, "auto") if isinstance(layout, dict) else layout
        if lay == "auto":
            lay = auto_layout(arr.ndim)
        xp = array_module(arr)
        rep = {"shape": tuple(arr.shape), "layout": lay, "compliant": None, "skipped": None,
               "density": float(xp.count_nonzero(arr)) / arr.size if arr.size else 0.0,
               "groups": 0, "violating_groups": 0, "first_violations": []}
        out[name] = rep
        if arr.ndim < 2:
            rep["skipped"] = f"{arr.ndim}-D (bias or norm parameter): N:M applies to weights of >= 2 dims"
            continue
        try:
            check_layout(lay, arr.ndim)
            check_divisible(arr.shape, m, lay, straddle)
        except ValueError as exc:
            rep["skipped"] = f"not groupable: {exc}"
            continue
        counts, bad = _violations(arr, n, m, lay, straddle)
        bad_groups = np.flatnonzero(to_host(bad))
        rep.update(groups=int(bad.size), violating_groups=int(bad_groups.size), compliant=not bad_groups.size,
                   first_violations=[group_position(arr.shape, m, lay, int(g), straddle, name=name)
                                     for g in bad_groups[:max_positions]])
    return out


# -- pattern conventions ---------------------------------------------------------------------------------

SEMANTICS = ("keep", "prune")


@dataclass(frozen=True)
class Pattern:
    """An N:M pattern in nmref's convention: keep ``n_keep`` of every ``m`` consecutive weights."""

    n_keep: int
    m: int

    def __post_init__(self):
        check_pattern(self.n_keep, self.m)

    @property
    def n_prune(self):
        return self.m - self.n_keep

    @property
    def density(self):
        return self.n_keep / self.m

    def __str__(self):
        return f"{self.n_keep}:{self.m} (keep {self.n_keep} of {self.m})"


def parse_pattern(pattern, semantics="keep"):
    """Pattern from "N:M" or (N, M); ``semantics="prune"`` reads N as the zeroed count (SparseGPT, Wanda)."""
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics={semantics!r} is not one of {SEMANTICS}: 'keep' if N counts kept weights "
                         "(SR-STE, LBC, NVIDIA 2:4), 'prune' if it counts zeroed ones (SparseGPT, Wanda)")
    if isinstance(pattern, Pattern):
        if semantics != "keep":
            raise ValueError(f"pattern={pattern} is already a Pattern (keep semantics); semantics='prune' "
                             "applies only to 'N:M' strings and (N, M) tuples")
        return pattern
    if isinstance(pattern, str):
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern)
        if not match:
            raise ValueError(f"pattern={pattern!r} is not of the form 'N:M' (e.g. '2:4')")
        a, m = int(match[1]), int(match[2])
    elif (isinstance(pattern, (tuple, list)) and len(pattern) == 2
          and all(hasattr(v, "__index__") and not isinstance(v, bool) for v in pattern)):
        a, m = int(pattern[0]), int(pattern[1])
    else:
        raise ValueError(f"pattern={pattern!r} must be an 'N:M' string or an (N, M) tuple of ints")
    if m < 1:
        raise ValueError(f"pattern={pattern!r}: M={m} must be >= 1")
    swapped = f"; did you mean '{m}:{a}'?" if a > m else ""
    if semantics == "keep" and not 1 <= a <= m:
        raise ValueError(f"pattern={pattern!r}: keeping N={a} of M={m} is impossible, need 1 <= N <= M"
                         + (swapped or " (if N counts zeroed weights, pass semantics='prune')"))
    if semantics == "prune" and not 0 <= a < m:
        raise ValueError(f"pattern={pattern!r}: pruning N={a} of M={m} would keep {m - a}, need 0 <= N < M"
                         + (swapped or " (if N counts kept weights, pass semantics='keep')"))
    return Pattern(a if semantics == "keep" else m - a, m)


from .transposable import nm_mask_transposable  # noqa: E402  (re-export; transposable imports this module)
