"""The N:M magnitude mask: n of every m consecutive weights kept (True), ALGORITHMS.md section 1.

Definition (the NumPy reference below): in each group, a stable ascending sort of |w|; the first m - n
positions are pruned. Ties: among equal |w| the lower index is pruned first. NaN / inf raise.
"""
from .backend import array_module
from .groups import from_groups, to_groups


def check_pattern(n, m):
    """Validate n (kept) and m (group size)."""
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, bool) or not isinstance(v, (int,)) and not hasattr(v, "__index__"):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if m < 1:
        raise ValueError(f"m={m} must be >= 1")
    if not 1 <= n <= m:
        raise ValueError(f"n={n} kept out of m={m} is impossible: need 1 <= n <= m (n counts kept weights; "
                         "for a library that counts pruned weights use parse_pattern(..., semantics='prune'))")


def check_finite(w, name="w"):
    xp = array_module(w)
    if w.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {w.dtype}")
    if not bool(xp.isfinite(w).all()):
        raise ValueError(f"{name} contains NaN or inf; an N:M mask of it would be meaningless. "
                         "Check the training run (lr, loss) that produced it")


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


def nm_mask(w, n, m, layout="linear", straddle=False):
    """N:M magnitude keep-mask (True = kept), n of every m consecutive weights along the input axis."""
    return nm_mask_reference(w, n, m, layout, straddle)
