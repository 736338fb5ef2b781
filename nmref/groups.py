"""Weight <-> (G, M) groups of M consecutive weights along the reduction (input) axis.

Layouts (docs/algorithms.md section 0):
  "linear"        weight (out, in): M consecutive input features of one output row.
  "conv"          weight (Cout, Cin, *k): M consecutive input channels at a fixed (cout, *k), i.e. the weight
                  viewed as (Cout, *k, Cin) ("NHWC", NVIDIA ASP and cuSPARSELt). Conv1d weights too.
  "nchw_flatten"  weight (Cout, ...): the plain C-order flatten of each output's Cin*kh*kw weights
                  (SR-STE paper-era runs).
``straddle=True`` reproduces the public SR-STE code: the whole grouped view is flattened and cut into
groups of M, so groups may cross rows / kernel positions when the grouped axis is not divisible by M.
"""
import math

from .backend import array_module, check_array

LAYOUTS = ("linear", "conv", "nchw_flatten")


def check_layout(layout, ndim):
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    if layout == "linear" and ndim != 2:
        raise ValueError(f"layout='linear' needs a 2-D (out, in) weight, got {ndim}-D; "
                         "use layout='conv' (NHWC groups) or 'nchw_flatten' for conv weights")
    if layout in ("conv", "nchw_flatten") and ndim < 3:
        raise ValueError(f"layout={layout!r} needs a conv weight (Cout, Cin, *kernel), got {ndim}-D; "
                         "use layout='linear' for (out, in) weights")


def check_m(m):
    if isinstance(m, bool) or not hasattr(m, "__index__"):
        raise TypeError(f"m must be an int (the group size), got {type(m).__name__}")
    if m < 1:
        raise ValueError(f"m={m} must be >= 1 (the group size)")


def check_straddle(straddle):
    if not isinstance(straddle, bool):
        raise TypeError(f"straddle must be True or False, got {straddle!r}")


def check_shape(shape, name="shape"):
    """A weight shape: a tuple (or list) of ints >= 0."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or not all(
            hasattr(s, "__index__") and not isinstance(s, bool) for s in shape):
        raise TypeError(f"{name}={shape!r} must be a tuple of ints, e.g. w.shape")
    if any(s < 0 for s in shape):
        raise ValueError(f"{name}={tuple(shape)} has a negative size; pass the weight's shape, e.g. w.shape")


def _axis_name(layout):
    return {"linear": "in_features (axis 1)", "conv": "Cin (axis 1)",
            "nchw_flatten": "Cin*prod(kernel) (the flattened axes 1..)"}[layout]


def grouped_axis_length(shape, layout):
    """Length of the axis that groups run along."""
    check_layout(layout, len(shape))
    if layout == "nchw_flatten":
        return math.prod(shape[1:])
    return shape[1]


def grouped_shape(shape, layout):
    """Shape of the grouped view, grouped axis last: (out, in), (Cout, *k, Cin) or (Cout, Cin*prod(k))."""
    check_layout(layout, len(shape))
    if layout == "linear":
        return tuple(shape)
    if layout == "conv":
        return (shape[0], *shape[2:], shape[1])
    return (shape[0], math.prod(shape[1:]))


def _rows(w, layout):
    """The weight as (R, K) rows with the grouped axis last and contiguous."""
    xp = array_module(w)
    if layout == "linear":
        return w                                                  # (out, in)
    if layout == "conv":
        return xp.moveaxis(w, 1, -1).reshape(-1, w.shape[1])      # (Cout*prod(k), Cin)
    return w.reshape(w.shape[0], -1)                              # (Cout, Cin*prod(k))


def axis_view(w, layout):
    """The weight as (A, K, B) with groups along the middle axis (a view of a contiguous w, no transpose).

    linear (out, in, 1); conv (Cout, Cin, prod(k)); nchw_flatten (Cout, Cin*prod(k), 1). Group order
    (a, k // M, b) for linear / nchw_flatten equals ``to_groups`` order; for conv ``to_groups`` order is
    (a, b, k // M).
    """
    check_array(w)
    check_layout(layout, w.ndim)
    if layout == "conv":
        return w.reshape(w.shape[0], w.shape[1], math.prod(w.shape[2:]))   # (Cout, Cin, prod(k))
    return w.reshape(w.shape[0], grouped_axis_length(w.shape, layout), 1)  # (out, K, 1)


def divisors(k):
    return tuple(d for d in range(2, k + 1) if k % d == 0)


def check_divisible(shape, m, layout, straddle=False):
    """Raise unless groups of ``m`` tile the grouped axis (or, with straddle, the whole weight)."""
    check_straddle(straddle)
    check_m(m)
    k = grouped_axis_length(shape, layout)
    if k % m == 0:
        return
    if not straddle:
        raise ValueError(f"{_axis_name(layout)} = {k} is not divisible by m={m} for weight shape "
                         f"{tuple(shape)}; pad the weight, keep this layer dense, or choose m in "
                         f"{divisors(k)}")
    size = math.prod(shape)
    if size % m:
        raise ValueError(f"straddle=True still needs the weight size {size} divisible by m={m}")


def to_groups(w, m, layout="linear", straddle=False):
    """Weight -> (G, M) groups (a copy for "conv"; G = w.size // m), in C order of the grouped view."""
    check_array(w)
    check_layout(layout, w.ndim)
    check_divisible(w.shape, m, layout, straddle)
    return _rows(w, layout).reshape(-1, m)


def from_groups(groups, shape, layout="linear"):
    """(G, M) groups -> weight of ``shape``: the exact inverse of ``to_groups`` (straddling groups too)."""
    check_array(groups, "groups")
    check_shape(shape)
    check_layout(layout, len(shape))
    xp = array_module(groups)
    if groups.size != math.prod(shape):
        raise ValueError(f"groups of shape {tuple(groups.shape)} do not fill a weight of shape {tuple(shape)}")
    if layout == "conv":
        return xp.ascontiguousarray(xp.moveaxis(groups.reshape(grouped_shape(shape, layout)), -1, 1))
    return groups.reshape(shape)


def _index(idx):
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def group_position(shape, m, layout, g, straddle=False, name="weight"):
    """Where group ``g`` (the to_groups row) sits in the weight, as an index a reader can paste."""
    check_shape(shape)
    check_divisible(shape, m, layout, straddle)
    n_groups = math.prod(shape) // m
    if isinstance(g, bool) or not hasattr(g, "__index__") or not 0 <= g < n_groups:
        raise ValueError(f"g={g!r} must be a group index in [0, {n_groups}) (the to_groups row) for a weight of "
                         f"shape {tuple(shape)} in groups of m={m}")
    view = grouped_shape(shape, layout)
    k = view[-1]
    start = g * m
    if straddle and k % m:
        first = [int(i) for i in _unravel(start, view)]
        last = [int(i) for i in _unravel(start + m - 1, view)]
        return f"{name} grouped view {view} elements {_index(first)}..{_index(last)} (straddling)"
    row, col = divmod(start, k)
    outer = _unravel(row, view[:-1])
    if layout == "linear":
        return f"{name}[{outer[0]}, {col}:{col + m}]"
    if layout == "conv":
        kernel = "".join(f", {i}" for i in outer[1:])
        return f"{name}[{outer[0]}, {col}:{col + m}{kernel}] (cout={outer[0]}, Cin {col}..{col + m - 1})"
    first = _unravel(col, shape[1:])
    last = _unravel(col + m - 1, shape[1:])
    return (f"{name}[{outer[0]}].reshape(-1)[{col}:{col + m}] ({name}{_index([outer[0], *first])} .. "
            f"{name}{_index([outer[0], *last])})")


def _unravel(flat, shape):
    out = []
    for s in reversed(shape):
        flat, r = divmod(flat, s)
        out.append(int(r))
    return out[::-1]
