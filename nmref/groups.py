"""Weight <-> (G, M) groups of M consecutive weights along the reduction (input) axis.

Layouts (ALGORITHMS.md section 0):
  "linear"        weight (out, in): M consecutive input features of one output row.
  "conv"          weight (Cout, Cin, *k): M consecutive input channels at a fixed (cout, *k), i.e. the weight
                  viewed as (Cout, *k, Cin) ("NHWC", NVIDIA ASP and cuSPARSELt). Conv1d weights too.
  "nchw_flatten"  weight (Cout, ...): the plain C-order flatten of each output's Cin*kh*kw weights
                  (SR-STE paper-era runs).
``straddle=True`` reproduces the public SR-STE code: the whole grouped view is flattened and cut into
groups of M, so groups may cross rows / kernel positions when the grouped axis is not divisible by M.
"""
from .backend import array_module

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


def _axis_name(layout):
    return {"linear": "in_features (axis 1)", "conv": "Cin (axis 1)",
            "nchw_flatten": "Cin*prod(kernel) (the flattened axes 1..)"}[layout]


def grouped_axis_length(shape, layout):
    """Length of the axis that groups run along."""
    check_layout(layout, len(shape))
    if layout == "nchw_flatten":
        k = 1
        for s in shape[1:]:
            k *= s
        return k
    return shape[1]


def _rows(w, layout):
    """The weight as (R, K) rows with the grouped axis last and contiguous."""
    xp = array_module(w)
    if layout == "linear":
        return w                                                  # (out, in)
    if layout == "conv":
        return xp.moveaxis(w, 1, -1).reshape(-1, w.shape[1])      # (Cout*prod(k), Cin)
    return w.reshape(w.shape[0], -1)                              # (Cout, Cin*prod(k))


def divisors(k):
    return tuple(d for d in range(2, k + 1) if k % d == 0)


def to_groups(w, m, layout="linear", straddle=False):
    """Weight -> (G, M) groups (a copy for "conv"; G = w.size // m), in C order of the grouped view."""
    check_layout(layout, w.ndim)
    rows = _rows(w, layout)
    k = rows.shape[1]
    if k % m:
        if not straddle:
            raise ValueError(f"{_axis_name(layout)} = {k} is not divisible by m={m} for weight shape "
                             f"{tuple(w.shape)}; pad the weight, keep this layer dense, or choose m in "
                             f"{divisors(k)}")
        if w.size % m:
            raise ValueError(f"straddle=True still needs the weight size {w.size} divisible by m={m}")
    return rows.reshape(-1, m)


def from_groups(groups, shape, layout="linear"):
    """(G, M) groups -> weight of ``shape``: the exact inverse of ``to_groups``."""
    check_layout(layout, len(shape))
    xp = array_module(groups)
    if layout == "conv":
        nhwc = (shape[0], *shape[2:], shape[1])
        return xp.ascontiguousarray(xp.moveaxis(groups.reshape(nhwc), -1, 1))
    return groups.reshape(shape)
