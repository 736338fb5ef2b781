"""Hypothesis strategies shared by the mask tests."""
from hypothesis import strategies as st


@st.composite
def nm_shapes(draw, m_choices):
    """(n, m, layout, shape): a small weight shape whose grouped axis is divisible by m."""
    m = draw(st.sampled_from(m_choices))
    n = draw(st.integers(1, m))
    layout = draw(st.sampled_from(["linear", "conv", "nchw_flatten"]))
    cout = draw(st.integers(1, 4))
    if layout == "linear":
        shape = (cout, m * draw(st.integers(1, 3)))
    elif layout == "conv":
        shape = (cout, m * draw(st.integers(1, 2)), *draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    else:
        shape = (cout, draw(st.integers(1, 3)), m * draw(st.integers(1, 2)))
    return n, m, layout, shape
