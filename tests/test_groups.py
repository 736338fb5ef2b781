import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmref.groups import (axis_view, from_groups, group_position, grouped_axis_length, grouped_shape,
                          to_groups)

SETTINGS = settings(max_examples=40, deadline=None)


@st.composite
def weights(draw):
    """(w, m, layout) with the grouped axis divisible by m."""
    layout = draw(st.sampled_from(["linear", "conv", "nchw_flatten"]))
    m = draw(st.sampled_from([1, 2, 3, 4, 8]))
    cout = draw(st.integers(1, 5))
    if layout == "linear":
        shape = (cout, m * draw(st.integers(1, 4)))
    elif layout == "conv":
        kernel = draw(st.lists(st.integers(1, 3), min_size=1, max_size=2))
        shape = (cout, m * draw(st.integers(1, 3)), *kernel)
    else:
        shape = (cout, draw(st.integers(1, 4)), m * draw(st.integers(1, 3)))
    seed = draw(st.integers(0, 2**16))
    return np.random.default_rng(seed).standard_normal(shape), m, layout


@SETTINGS
@given(weights())
def test_round_trip_is_exact(case):
    w, m, layout = case
    groups = to_groups(w, m, layout)
    assert groups.shape == (w.size // m, m)
    back = from_groups(groups, w.shape, layout)
    assert back.shape == w.shape and np.array_equal(back, w)
    mask = w > 0
    assert np.array_equal(from_groups(to_groups(mask, m, layout), w.shape, layout), mask)


def test_linear_groups_are_consecutive_inputs_of_a_row():
    w = np.arange(2 * 8).reshape(2, 8).astype(float)
    assert np.array_equal(to_groups(w, 4), [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]])


def test_conv_groups_run_along_input_channels_at_fixed_position():
    w = np.random.default_rng(0).standard_normal((3, 8, 2, 3))         # (Cout, Cin, kh, kw)
    groups = to_groups(w, 4, "conv")
    expected = [w[c, b * 4:(b + 1) * 4, i, j] for c in range(3) for i in range(2) for j in range(3)
                for b in range(2)]
    assert np.array_equal(groups, np.array(expected))


def test_conv1d_weights_group_along_input_channels():
    w = np.random.default_rng(1).standard_normal((2, 4, 5))            # (Cout, Cin, k)
    groups = to_groups(w, 2, "conv")
    expected = [w[c, b * 2:(b + 1) * 2, k] for c in range(2) for k in range(5) for b in range(2)]
    assert np.array_equal(groups, np.array(expected))


def test_nchw_flatten_groups_the_plain_flatten():
    w = np.random.default_rng(2).standard_normal((3, 2, 3, 2))
    assert np.array_equal(to_groups(w, 4, "nchw_flatten"), w.reshape(-1, 4))


def test_not_divisible_raises_naming_axis_length_and_valid_m():
    with pytest.raises(ValueError, match=r"in_features \(axis 1\) = 6 is not divisible by m=4.*\(2, 3, 6\)"):
        to_groups(np.zeros((3, 6)), 4)
    with pytest.raises(ValueError, match=r"Cin \(axis 1\) = 3 is not divisible by m=4.*\(3,\)"):
        to_groups(np.zeros((8, 3, 3, 3)), 4, "conv")
    with pytest.raises(ValueError, match=r"Cin\*prod\(kernel\).* = 18 is not divisible by m=4"):
        to_groups(np.zeros((8, 2, 3, 3)), 4, "nchw_flatten")


def test_straddle_is_opt_in_and_matches_the_public_code_flatten():
    w = np.random.default_rng(3).standard_normal((4, 3, 3, 3))         # Cin = 3: the stem conv
    with pytest.raises(ValueError):
        to_groups(w, 4, "conv")
    groups = to_groups(w, 4, "conv", straddle=True)
    assert np.array_equal(groups, np.moveaxis(w, 1, -1).reshape(-1, 4))
    assert np.array_equal(from_groups(groups, w.shape, "conv"), w)
    with pytest.raises(ValueError, match="weight size 27 divisible by m=4"):
        to_groups(np.zeros((1, 3, 3, 3)), 4, "conv", straddle=True)


@pytest.mark.parametrize("shape, layout", [((2, 3, 4, 4), "linear"), ((2, 8, 3), "linear"),
                                           ((4, 8), "conv"), ((4, 8), "nchw_flatten"), ((8,), "linear")])
def test_layout_misuse_raises(shape, layout):
    with pytest.raises(ValueError, match="layout"):
        to_groups(np.zeros(shape), 4, layout)


def test_unknown_layout_and_bad_m_raise():
    with pytest.raises(ValueError, match="layout='nhwc'"):
        to_groups(np.zeros((2, 4)), 2, "nhwc")
    for m, err in ((0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="m"):
            to_groups(np.zeros((2, 4)), m)


def test_from_groups_rejects_wrong_size():
    with pytest.raises(ValueError, match="do not fill"):
        from_groups(np.zeros((3, 4)), (2, 8))


@SETTINGS
@given(weights())
def test_axis_view_is_a_view_holding_the_same_groups(case):
    w, m, layout = case
    view = axis_view(w, layout)                                        # (A, K, B)
    assert np.shares_memory(view, w) and view.shape[1] == grouped_axis_length(w.shape, layout)
    a, k, b = view.shape
    groups = view.reshape(a, k // m, m, b).transpose(0, 3, 1, 2).reshape(-1, m)
    assert np.array_equal(groups, to_groups(w, m, layout))
    assert grouped_shape(w.shape, layout)[-1] == k


@SETTINGS
@given(weights(), st.data())
def test_group_position_points_at_the_group(case, data):
    w, m, layout = case
    groups = to_groups(w, m, layout)
    g = data.draw(st.integers(0, len(groups) - 1))
    where = group_position(w.shape, m, layout, g)
    assert np.array_equal(eval(where.split(" (")[0], {"weight": w}), groups[g])


def test_group_position_names_the_conv_index():
    assert group_position((4, 8, 3, 3), 4, "conv", 5) == "weight[0, 4:8, 0, 2] (cout=0, Cin 4..7)"
    assert group_position((3, 8), 4, "linear", 3, name="fc") == "fc[1, 4:8]"
    assert "(straddling)" in group_position((4, 3, 3, 3), 4, "conv", 2, straddle=True)


def test_group_position_rejects_a_group_outside_the_weight():
    with pytest.raises(ValueError, match=r"g=8 must be a group index in \[0, 8\)"):
        group_position((4, 8), 4, "linear", 8)
    with pytest.raises(ValueError, match=r"g=-1 must be a group index"):
        group_position((4, 8), 4, "linear", -1)
    with pytest.raises(ValueError, match="m=0 must be >= 1"):
        group_position((4, 8), 0, "linear", 0)


def test_shapes_and_lists_raise_naming_the_argument():
    w = np.ones((4, 8), np.float32)
    with pytest.raises(TypeError, match=r"shape=32 must be a tuple of ints"):
        from_groups(w.reshape(-1, 4), 32)
    with pytest.raises(ValueError, match=r"shape=\(-4, -8\) has a negative size"):
        from_groups(w.reshape(-1, 4), (-4, -8))
    with pytest.raises(TypeError, match="w is a list; pass a NumPy or CuPy array"):
        axis_view(w.tolist(), "linear")
