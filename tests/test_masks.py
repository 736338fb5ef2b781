import dataclasses
import itertools
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import nm_shapes

import nmref
from nmref.groups import from_groups, grouped_shape, to_groups
from nmref.masks import (Pattern, check_nm, compress_nm, decompress_nm, is_nm, nm_mask,
                         nm_report, parse_pattern)

OFFICIAL = pathlib.Path(__file__).parent / "data" / "official"
SETTINGS = settings(max_examples=30, deadline=None)


@st.composite
def cases(draw, max_m=8):
    """(w, n, m, layout): a small weight with the grouped axis divisible by m, values with many ties."""
    n, m, layout, shape = draw(nm_shapes([m for m in (1, 2, 3, 4, 5, 8) if m <= max_m]))
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        w = rng.integers(-3, 4, size=shape).astype(dtype)              # ties and +-0
    else:
        w = rng.standard_normal(shape).astype(dtype)
    return w, n, m, layout


# -- the definition ---------------------------------------------------------------------------------------

def test_hand_example_keeps_largest_magnitudes():
    w = np.array([[1.0, -3.0, 2.0, 0.5, 0.0, -7.0, 7.0, 1.0]])
    assert np.array_equal(nm_mask(w, 2, 4), [[False, True, True, False, False, True, True, False]])
    assert np.array_equal(nm_mask(w, 1, 4), [[False, True, False, False, False, False, True, False]])


def test_ties_prune_lower_index_first():
    w = np.array([[1.0, 1.0, 1.0, 1.0, -2.0, 2.0, 0.0, -0.0]])
    for backend in ("numpy", "numba"):
        assert np.array_equal(nm_mask(w, 2, 4, backend=backend), [[0, 0, 1, 1, 1, 1, 0, 0]])
        assert np.array_equal(nm_mask(w, 3, 4, backend=backend), [[0, 1, 1, 1, 1, 1, 0, 1]])


@pytest.mark.parametrize("path", sorted(OFFICIAL.glob("srste_*to*.npz")), ids=lambda p: p.stem)
def test_golden_masks_of_the_public_code(path):
    data = np.load(path)
    n, m, w = int(data["n"]), int(data["m"]), data["weight"]
    layout = "linear" if w.ndim == 2 else "conv"
    for backend in ("numpy", "numba"):
        assert np.array_equal(nm_mask(w, n, m, layout, backend=backend), data["mask"])
    assert np.array_equal(w * nm_mask(w, n, m, layout), data["masked_weight"])


@SETTINGS
@given(cases())
def test_exactly_n_kept_per_group(case):
    w, n, m, layout = case
    mask = nm_mask(w, n, m, layout)
    assert mask.dtype == bool and mask.shape == w.shape
    assert (to_groups(mask, m, layout).sum(axis=1) == n).all()


@SETTINGS
@given(cases())
def test_idempotent_when_no_kept_weight_is_zero(case):
    w, n, m, layout = case
    mask = nm_mask(w, n, m, layout)
    assume(not (w[mask] == 0).any())
    assert np.array_equal(nm_mask(w * mask, n, m, layout), mask)


@SETTINGS
@given(cases(), st.integers(-3, 3))
def test_invariant_under_positive_scaling(case, power):
    w, n, m, layout = case
    scale = w.dtype.type(2.0 ** power)                                   # exact: no new ties
    assert np.array_equal(nm_mask(w * scale, n, m, layout), nm_mask(w, n, m, layout))


@SETTINGS
@given(cases(max_m=8))
def test_kept_magnitude_is_the_best_of_all_valid_masks(case):
    w, n, m, layout = case
    mag = np.abs(to_groups(w, m, layout).astype(np.float64))             # (G, M)
    kept = (mag * to_groups(nm_mask(w, n, m, layout), m, layout)).sum(axis=1)
    best = np.max([mag[:, list(c)].sum(axis=1) for c in itertools.combinations(range(m), n)], axis=0)
    assert np.allclose(kept, best, rtol=1e-12, atol=0)


@SETTINGS
@given(cases())
def test_validators_accept_nm_masks_and_weights(case):
    w, n, m, layout = case
    mask = nm_mask(w, n, m, layout)
    assert is_nm(mask, n, m, layout) and is_nm(w * mask, n, m, layout)
    check_nm(w * mask, n, m, layout)
    if n < m and (to_groups(w, m, layout) != 0).sum(axis=1).max() > n:
        assert not is_nm(w, n, m, layout)


# -- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "numba", "auto"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_nan_and_inf_raise(backend, bad, dtype):
    w = np.ones((3, 8), dtype=dtype)
    w[2, 7] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        nm_mask(w, 2, 4, backend=backend)


@pytest.mark.parametrize("n, m, err, match", [
    (5, 4, ValueError, "need 1 <= n <= m"), (0, 4, ValueError, "need 1 <= n <= m"),
    (-1, 4, ValueError, "need 1 <= n <= m"), (2, 0, ValueError, "m=0"), (2.0, 4, TypeError, "n must be an int"),
    (2, 4.0, TypeError, "m must be an int"), (True, 4, TypeError, "n must be an int")])
def test_bad_pattern_raises(n, m, err, match):
    with pytest.raises(err, match=match):
        nm_mask(np.ones((2, 8)), n, m)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, bool, np.complex64])
def test_non_float_weight_raises(dtype):
    with pytest.raises(TypeError, match="floating-point"):
        nm_mask(np.ones((2, 8), dtype=dtype), 2, 4)


def test_non_array_weight_raises_a_clear_type_error():
    torch = pytest.importorskip("torch")
    for w, kind in (([[1.0, 2.0, 3.0, 4.0]], "list"), (torch.ones(2, 8), "torch.Tensor")):
        for call in (nm_mask, is_nm, check_nm, lambda w, n, m: to_groups(w, m)):
            with pytest.raises(TypeError, match=rf"w is a {kind}; pass a NumPy or CuPy array .*t\.numpy\(\)"):
                call(w, 2, 4)
        with pytest.raises(TypeError, match=rf"fc.weight is a {kind}; pass a NumPy or CuPy array"):
            nm_report({"fc.weight": w}, 2, 4)
    with pytest.raises(TypeError, match="groups is a torch.Tensor; pass a NumPy or CuPy array"):
        from_groups(torch.zeros(8, 4), (4, 8))
    with pytest.raises(TypeError, match=r"arrays must be a dict .*state_dict"):
        nm_report([np.ones((2, 8))], 2, 4)


@pytest.mark.parametrize("straddle", [1, 0, "yes", None])
def test_straddle_must_be_a_bool_as_in_the_methods(straddle):
    from nmref import STE
    for call in (lambda: nm_mask(np.ones((2, 8)), 2, 4, straddle=straddle),
                 lambda: is_nm(np.ones((2, 8)), 2, 4, straddle=straddle),
                 lambda: STE(2, 4, straddle=straddle)):
        with pytest.raises(TypeError, match="straddle must be True or False"):
            call()


def test_layout_misuse_and_divisibility_raise():
    with pytest.raises(ValueError, match="layout='linear' needs a 2-D"):
        nm_mask(np.ones((4, 8, 3, 3)), 2, 4)
    with pytest.raises(ValueError, match="needs a conv weight"):
        nm_mask(np.ones((4, 8)), 2, 4, "conv")
    with pytest.raises(ValueError, match="in_features .* = 6 is not divisible by m=4"):
        nm_mask(np.ones((4, 6)), 2, 4)
    with pytest.raises(ValueError, match="backend='torch'"):
        nm_mask(np.ones((4, 8)), 2, 4, backend="torch")
    with pytest.raises(ValueError, match="cannot run on a NumPy array"):
        nm_mask(np.ones((4, 8)), 2, 4, backend="cupy")


def test_straddle_reproduces_the_public_code_on_the_stem_conv():
    w = np.random.default_rng(5).standard_normal((4, 3, 3, 3))
    flat = np.moveaxis(w, 1, -1).reshape(-1, 4)                          # the public code's groups
    expected = np.zeros(flat.shape, dtype=bool)
    np.put_along_axis(expected, np.argsort(-np.abs(flat), axis=1)[:, :2], True, axis=1)
    expected = np.moveaxis(expected.reshape(4, 3, 3, 3), -1, 1)
    for backend in ("numpy", "numba"):
        assert np.array_equal(nm_mask(w, 2, 4, "conv", straddle=True, backend=backend), expected)


def test_import_nmref_does_not_import_kernels():
    code = "import sys, nmref; print('numba' in sys.modules, 'cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- storage format ---------------------------------------------------------------------------------------

@SETTINGS
@given(cases())
def test_compress_round_trip(case):
    w, n, m, layout = case
    values, indices = compress_nm(w, n, m, layout)
    mask = nm_mask(w, n, m, layout)
    view = grouped_shape(w.shape, layout)
    assert values.shape == indices.shape == (*view[:-1], view[-1] * n // m)
    assert values.dtype == w.dtype and indices.dtype == np.uint8
    dense = decompress_nm(values, indices, n, m, w.shape, layout)
    assert dense.dtype == w.dtype and np.array_equal(dense, w * mask)
    again = compress_nm(dense, n, m, layout, mask=mask)
    assert np.array_equal(again[0], values) and np.array_equal(again[1], indices)


def test_compress_layout_example():
    w = np.array([[0.1, -3.0, 2.0, 0.5, 9.0, 0.0, 0.0, -1.0]])
    values, indices = compress_nm(w, 2, 4)
    assert np.array_equal(values, [[-3.0, 2.0, 9.0, -1.0]]) and np.array_equal(indices, [[1, 2, 0, 3]])
    conv = np.random.default_rng(0).standard_normal((3, 8, 2, 2))
    values, indices = compress_nm(conv, 1, 4, "conv")
    assert values.shape == (3, 2, 2, 2)                                  # (Cout, kh, kw, Cin * n / m)
    assert values[1, 0, 1, 1] == conv[1, 4 + indices[1, 0, 1, 1], 0, 1]


def test_compress_keeps_zero_weights_of_an_nm_weight():
    w = np.array([[0.0, 0.0, 0.0, 5.0]])                                  # fewer non-zeros than n
    values, indices = compress_nm(w, 2, 4)
    assert np.array_equal(indices, [[2, 3]]) and np.array_equal(decompress_nm(values, indices, 2, 4, w.shape), w)


def test_compress_and_decompress_reject_bad_input():
    w = np.ones((2, 8))
    bad_mask = np.zeros((2, 8), dtype=bool)
    bad_mask[0, :3] = True
    with pytest.raises(ValueError, match="keeps 3 in group 0"):
        compress_nm(w, 2, 4, mask=bad_mask)
    with pytest.raises(ValueError, match="bool array of w's shape"):
        compress_nm(w, 2, 4, mask=np.ones((2, 4), dtype=bool))
    values, indices = compress_nm(w, 2, 4)
    with pytest.raises(ValueError, match=r"values has shape \(2, 2\), expected \(2, 4\)"):
        decompress_nm(values[:, :2], indices, 2, 4, w.shape)
    for broken in ([[0, 0, 0, 1]], [[0, 4, 0, 1]], [[1, 0, 0, 1]]):
        idx = np.array(broken * 2, dtype=np.uint8)
        with pytest.raises(ValueError, match="increasing positions"):
            decompress_nm(values, idx, 2, 4, w.shape)
    with pytest.raises(TypeError, match="integers"):
        decompress_nm(values, indices.astype(float), 2, 4, w.shape)


# -- validators ---------------------------------------------------------------------------------------------

def test_check_nm_names_the_first_offending_linear_group():
    w = nmref.nm_mask(np.random.default_rng(1).standard_normal((6, 16)), 2, 4).astype(np.float32)
    w[3, 8:11] = 1.0
    w[5, 0:4] = 1.0
    assert not is_nm(w, 2, 4)
    with pytest.raises(ValueError, match=r"weight\[3, 8:12\] holds 3 non-zeros.*2 of 24 groups violate"):
        check_nm(w, 2, 4)
    assert is_nm(w, 4, 4)


def test_check_nm_names_the_conv_index():
    w = np.zeros((4, 8, 3, 3))
    w[2, 4:7, 1, 0] = 1.0
    with pytest.raises(ValueError, match=r"conv1\[2, 4:8, 1, 0\] \(cout=2, Cin 4..7\) holds 3"):
        check_nm(w, 2, 4, "conv", name="conv1")
    assert is_nm(w, 2, 4, "nchw_flatten") is True                        # spread over flatten groups
    w = np.zeros((4, 8, 3, 3))
    w[2, 4, 0, 0:3] = 1.0
    assert is_nm(w, 2, 4, "conv") is True and is_nm(w, 2, 4, "nchw_flatten") is False
    with pytest.raises(ValueError, match=r"weight\[2\]\.reshape\(-1\)\[36:40\] \(weight\[2, 4, 0, 0\] .. "):
        check_nm(w, 2, 4, "nchw_flatten")


def test_validators_reject_bad_arguments():
    with pytest.raises(ValueError, match="need 1 <= n <= m"):
        is_nm(np.ones((2, 4)), 0, 4)
    with pytest.raises(ValueError, match="not divisible"):
        check_nm(np.ones((2, 6)), 2, 4)
    with pytest.raises(ValueError, match="layout='linear' needs a 2-D"):
        is_nm(np.ones((2, 4, 3)), 2, 4)


def test_nm_report_per_tensor():
    rng = np.random.default_rng(2)
    conv = rng.standard_normal((4, 8, 3, 3))
    conv *= nm_mask(conv, 2, 4, "conv")
    fc = rng.standard_normal((3, 8))
    fc *= nm_mask(fc, 2, 4)
    fc[1, 4:8] = 1.0
    fc[2, 0:3] = 1.0
    arrays = {"conv.weight": conv, "fc.weight": fc, "fc.bias": np.ones(3), "stem": np.ones((4, 3, 3, 3)),
              "mask": nm_mask(fc, 2, 4)}
    report = nm_report(arrays, 2, 4)
    assert report["conv.weight"]["compliant"] is True and report["conv.weight"]["layout"] == "conv"
    assert report["conv.weight"]["density"] == 0.5 and report["conv.weight"]["violating_groups"] == 0
    fc_report = report["fc.weight"]
    assert fc_report["compliant"] is False and fc_report["layout"] == "linear"
    assert fc_report["violating_groups"] == 2 and fc_report["groups"] == 6
    assert fc_report["first_violations"] == ["fc.weight[1, 4:8]", "fc.weight[2, 0:4]"]
    assert report["fc.bias"]["compliant"] is None and "1-D" in report["fc.bias"]["skipped"]
    assert report["stem"]["compliant"] is None and "not divisible by m=4" in report["stem"]["skipped"]
    assert report["mask"]["compliant"] is True
    short = nm_report({"fc.weight": fc}, 2, 4, max_positions=1)["fc.weight"]
    assert short["first_violations"] == ["fc.weight[1, 4:8]"]
    flat = nm_report({"conv.weight": conv}, 2, 4, layout={"conv.weight": "nchw_flatten"})["conv.weight"]
    assert flat["layout"] == "nchw_flatten" and flat["compliant"] is False


# -- pattern conventions ------------------------------------------------------------------------------------

def test_parse_pattern_keep_and_prune_are_not_confusable():
    keep = parse_pattern("1:4")
    prune = parse_pattern("1:4", semantics="prune")
    assert keep == Pattern(1, 4) and prune == Pattern(3, 4) and keep != prune
    assert str(keep) == "1:4 (keep 1 of 4)" and str(prune) == "3:4 (keep 3 of 4)"
    assert parse_pattern("2:4") == parse_pattern("2:4", semantics="prune") == parse_pattern((2, 4))
    assert parse_pattern(" 8 : 16 ").n_keep == 8 and parse_pattern((1, 4), "prune").n_prune == 1
    assert parse_pattern(keep) is keep and keep.density == 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        keep.n_keep = 2


@pytest.mark.parametrize("bad", ["5:4", "2-4", "0:4", "a:b", "2:0", "2:4:8", "", (2,), (2.0, 4), (True, 4),
                                 3, None])
def test_parse_pattern_rejects_bad_input_naming_the_argument(bad):
    with pytest.raises(ValueError, match="pattern="):
        parse_pattern(bad)


def test_swapped_pattern_suggests_the_swap_not_the_other_semantics():
    for semantics in ("keep", "prune"):
        with pytest.raises(ValueError, match=r"pattern='4:2': .*did you mean '2:4'\?$"):
            parse_pattern("4:2", semantics=semantics)
    with pytest.raises(ValueError, match="n=4 kept out of m=2 is impossible.*did you mean n=2, m=4") as err:
        nm_mask(np.ones((2, 8), np.float32), 4, 2)
    assert "semantics" not in str(err.value)
    with pytest.raises(ValueError, match=r"pattern='0:4': .*pass semantics='prune'\)$"):
        parse_pattern("0:4")


def test_parse_pattern_prune_bounds_and_semantics_name():
    assert parse_pattern("0:4", semantics="prune") == Pattern(4, 4)
    with pytest.raises(ValueError, match="pattern='4:4': pruning N=4 of M=4"):
        parse_pattern("4:4", semantics="prune")
    with pytest.raises(ValueError, match="semantics='kept'"):
        parse_pattern("2:4", semantics="kept")
    with pytest.raises(ValueError, match="already a Pattern"):
        parse_pattern(Pattern(2, 4), semantics="prune")
    with pytest.raises(ValueError, match="need 1 <= n <= m"):
        Pattern(0, 4)


def test_compress_the_largest_group_uint8_indices_hold():
    w = np.random.default_rng(6).standard_normal((2, 512))
    values, indices = compress_nm(w, 3, 256)
    assert indices.dtype == np.uint8 and indices.shape == (2, 6)
    assert np.array_equal(decompress_nm(values, indices, 3, 256, w.shape), w * nm_mask(w, 3, 256))
    with pytest.raises(ValueError, match="m <= 256"):
        compress_nm(w, 1, 512)


def test_list_arguments_raise_a_clear_type_error_everywhere():
    w = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    mask = nm_mask(w, 2, 4)
    values, indices = compress_nm(w, 2, 4)
    cases = [(lambda: is_nm(w.tolist(), 2, 4, transposable=True), "w is a list"),
             (lambda: check_nm(w.tolist(), 2, 4, transposable=True), "w is a list"),
             (lambda: compress_nm(w, 2, 4, mask=mask.tolist()), "mask is a list"),
             (lambda: compress_nm(w.tolist(), 2, 4, mask=mask), "w is a list"),
             (lambda: decompress_nm(values.tolist(), indices, 2, 4, w.shape), "values is a list"),
             (lambda: decompress_nm(values, indices.tolist(), 2, 4, w.shape), "indices is a list"),
             (lambda: decompress_nm(values, indices, 2, 4, 32), r"shape=32 must be a tuple of ints"),
             (lambda: nmref.masks.pick_backend(w.tolist()), "w is a list")]
    for call, match in cases:
        with pytest.raises(TypeError, match=match):
            call()
