"""nmref.cusparselt: argument rules and missing-dependency errors on any machine; the 2:4 matmul itself
against CuPy dense and PyTorch's semi-structured path where a GPU, CuPy and nvmath-python are present."""
import gc
import subprocess
import sys
import types

import numpy as np
import pytest

from nmref import cusparselt as cslt
from nmref.masks import nm_mask

TOL = {"float16": 1e-3, "bfloat16": 1e-2}          # docs/tolerances.md


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# ---------------------------------------------------------------- any machine
def test_import_nmref_loads_neither_cupy_nor_this_module():
    code = "import sys, nmref; print('cupy' in sys.modules, 'nmref.cusparselt' in sys.modules, 'nvmath' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False"]


@pytest.mark.parametrize("shape, dtype, match", [
    ((32, 30), "float16", r"in_features=30 .* multiple of 16 .* to 32"),
    ((24, 64), "bfloat16", r"out_features=24 .* multiple of 16 .* to 32"),
    ((64, 48), "int8", r"in_features=48 .* multiple of 32 .* to 64"),
    ((0, 64), "float16", r"out_features=0 .* to 16"),
    ((16, 16, 4), "float16", r"2-D"),
])
def test_weight_shape_errors_say_what_to_pad(shape, dtype, match):
    with pytest.raises(ValueError, match=match):
        cslt.check_weight_shape(shape, dtype)


def test_weight_dtype_error_names_supported_dtypes():
    with pytest.raises(TypeError, match=r"float32 .*float16"):
        cslt.check_weight_shape((16, 16), "float32")
    with pytest.raises(TypeError, match=r"shape \(16.0, 32.0\) must hold ints"):
        cslt.check_weight_shape((16.0, 32.0), "float16")


@pytest.mark.parametrize("batch, dtype, match", [(12, "float16", r"batch=12 .* 8 .* to 16"),
                                                 (24, "int8", r"batch=24 .* 16 .* to 32"),
                                                 (0, "bfloat16", r"batch=0 .* to 8")])
def test_batch_errors_say_what_to_pad(batch, dtype, match):
    with pytest.raises(ValueError, match=match):
        cslt.check_batch(batch, dtype)


def test_valid_shapes_pass():
    cslt.check_weight_shape((16, 16), "float16")
    cslt.check_weight_shape((4096, 11008), "bfloat16")
    cslt.check_weight_shape((64, 32), "int8")
    cslt.check_batch(8, "float16")
    cslt.check_batch(16, "int8")


def test_first_bad_group_finds_the_offending_group():
    w = np.zeros((3, 12), np.float32)
    w[:, 0:2] = 1.0
    assert cslt._first_bad_group(w) is None
    w[2, 8:11] = 2.0                                  # 3 of 4 non-zero in row 2, columns 8..11
    assert cslt._first_bad_group(w) == (2, 8, 3)


def test_layout_candidates():
    assert cslt._candidate_layouts(None, False) == cslt.DEFAULT_LAYOUTS
    assert cslt._candidate_layouts("auto", False) == tuple(cslt.LAYOUTS)
    assert cslt._candidate_layouts("wB_wrow_xrow", False) == ("wB_wrow_xrow",)
    with_bias = cslt._candidate_layouts("auto", True)
    assert with_bias and all(name.startswith("wA_") for name in with_bias)
    with pytest.raises(ValueError, match="operand B, where .* bias"):
        cslt._candidate_layouts(("wB_wrow_xrow", "wB_wcol_xcol"), True)
    with pytest.raises(ValueError, match="'wX' is not known"):
        cslt._candidate_layouts("wX", False)
    with pytest.raises(ValueError, match="not known"):
        cslt._candidate_layouts((), False)


def test_missing_cupy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match="needs CuPy"):
        cslt.SparseMatmul(np.zeros((16, 16), np.float16))


def _fake_cupy(n_devices):
    runtime = types.SimpleNamespace(getDeviceCount=lambda: n_devices)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime), ndarray=type(None))


def test_missing_nvmath_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(1))
    monkeypatch.setitem(sys.modules, "nvmath", None)
    monkeypatch.setitem(sys.modules, "nvmath.bindings", None)
    with pytest.raises(RuntimeError, match="nvmath-python"):
        cslt.SparseMatmul(np.zeros((16, 16), np.float16))


def test_missing_gpu_is_a_clear_error(monkeypatch):
    fake_bindings = types.ModuleType("nvmath.bindings")
    fake_bindings.cusparseLt = types.ModuleType("nvmath.bindings.cusparseLt")
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(0))
    monkeypatch.setitem(sys.modules, "nvmath", types.ModuleType("nvmath"))
    monkeypatch.setitem(sys.modules, "nvmath.bindings", fake_bindings)
    monkeypatch.setitem(sys.modules, "nvmath.bindings.cusparseLt", fake_bindings.cusparseLt)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        cslt.SparseMatmul(np.zeros((16, 16), np.float16))


# ---------------------------------------------------------------- GPU
@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    from nmref.backend import gpu_available
    if not gpu_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    lt = pytest.importorskip("nvmath.bindings.cusparseLt")
    try:
        lt.destroy(lt.init())
    except Exception as exc:                          # no libcusparseLt: the class raises; here we skip
        pytest.skip(f"cuSPARSELt does not start here: {exc}")
    return cupy


def weight_24(rng, out_features, in_features):
    """Host float32 2:4 weight (out, in) from nmref's reference mask."""
    w = rng.standard_normal((out_features, in_features)).astype(np.float32)   # (out, in)
    return w * nm_mask(w, 2, 4)


def to_gpu(cp, a, dtype):
    return cp.asarray(a).astype(cslt.np_dtype(dtype))


def reference(cp, x, w, bias=None):
    """float32 x @ W.T (+ bias) from the low-precision operands, on the host in float64."""
    y = cp.asnumpy(x.astype(cp.float32)).astype(np.float64) @ cp.asnumpy(w.astype(cp.float32)).astype(np.float64).T
    return y if bias is None else y + cp.asnumpy(bias.astype(cp.float32))


def poisoned(cp, shape, dtype):
    out = cp.empty(shape, dtype=cslt.np_dtype(dtype))
    out.fill(np.nan if dtype != "int32" and dtype != "int8" else 77)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_matches_dense_on_random_aligned_shapes(cp, dtype):
    rng = np.random.default_rng(0)
    shapes = [(16, 16, 8), (64, 128, 32), (4096 // 16, 512, 8)]
    shapes += [(16 * rng.integers(1, 20), 16 * rng.integers(1, 40), 8 * rng.integers(1, 30)) for _ in range(5)]
    for out_features, in_features, batch in shapes:
        w = to_gpu(cp, weight_24(rng, out_features, in_features), dtype)          # (out, in)
        x = to_gpu(cp, rng.standard_normal((batch, in_features)), dtype)          # (batch, in)
        op = cslt.SparseMatmul(w)
        y = op(x, out=poisoned(cp, (batch, out_features), dtype))                 # (batch, out)
        assert bool(cp.isfinite(y.astype(cp.float32)).all()), (out_features, in_features, batch)
        shape = (out_features, in_features, batch)
        assert rel(cp.asnumpy(y.astype(cp.float32)), reference(cp, x, w)) < TOL[dtype], shape
        dense = (x @ w.T).astype(cp.float32)
        assert rel(cp.asnumpy(y.astype(cp.float32)), cp.asnumpy(dense)) < 2 * TOL[dtype]
        op.close()


@pytest.mark.gpu
@pytest.mark.parametrize("layout", list(cslt.LAYOUTS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_every_layout_matches_dense(cp, dtype, layout):
    rng = np.random.default_rng(20)
    for out_features, in_features, batches in [(16, 16, (8,)), (48, 96, (8, 40)), (256, 512, (16, 256))]:
        w = to_gpu(cp, weight_24(rng, out_features, in_features), dtype)          # (out, in)
        with cslt.SparseMatmul(w, layout=layout, engines="cusparselt") as op:
            for batch in batches:
                x = to_gpu(cp, rng.standard_normal((batch, in_features)), dtype)  # (batch, in)
                y = op(x, out=poisoned(cp, (batch, out_features), dtype))         # (batch, out)
                assert op.layout_for(batch) == layout
                assert bool(cp.isfinite(y.astype(cp.float32)).all())
                err = rel(cp.asnumpy(y.astype(cp.float32)), reference(cp, x, w))
                assert err < TOL[dtype], (layout, out_features, in_features, batch, err)


@pytest.mark.gpu
def test_auto_layout_keeps_one_plan_per_batch_size(cp):
    rng = np.random.default_rng(21)
    w = to_gpu(cp, weight_24(rng, 128, 256), "float16")
    with cslt.SparseMatmul(w, layout="auto", search=True, engines="cusparselt") as op:
        for batch in (16, 64, 16):
            x = to_gpu(cp, rng.standard_normal((batch, 256)), "float16")
            y = op(x, out=poisoned(cp, (batch, 128), "float16"))
            assert rel(cp.asnumpy(y), reference(cp, x, w)) < 1e-3
        assert op.batch_sizes == [16, 64] and op.layout_for(16) in cslt.LAYOUTS
        assert len(op._res.plans) == 2                                           # the other candidates released
    with cslt.SparseMatmul(w, layout=("wB_wcol_xrow", "wA_wrow_xrow"), search=False, engines="cusparselt") as op:
        op(to_gpu(cp, rng.standard_normal((8, 256)), "float16"))
        assert op.layout_for(8) == "wB_wcol_xrow" and op.layout_for(16) is None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_pinned_config_plan_matches_and_is_a_candidate(cp, dtype):
    rng = np.random.default_rng(24)
    w = to_gpu(cp, weight_24(rng, 256, 512), dtype)
    x = to_gpu(cp, rng.standard_normal((64, 512)), dtype)
    expected = reference(cp, x, w)
    with cslt.SparseMatmul(w, search=True, engines="cusparselt") as op:
        y = op(x, out=poisoned(cp, (64, 256), dtype))
        info = op.plan_info(64)
        assert rel(cp.asnumpy(y.astype(cp.float32)), expected) < TOL[dtype]
        assert info["layout"] == cslt.DEFAULT_LAYOUTS[0] and info["config"] >= 0 and len(op._res.plans) == 1
        searched = op._planned(64, info["layout"], x, y)                           # both candidates, run directly
        pinned = op._planned(64, info["layout"], x, y, config=searched.config)
        assert pinned.pinned and not searched.pinned and pinned.config == searched.config
        for entry in (searched, pinned):
            out = poisoned(cp, (64, 256), dtype)
            op._run(entry, x, out)
            assert rel(cp.asnumpy(out.astype(cp.float32)), expected) < TOL[dtype]
    with cslt.SparseMatmul(w, search=True, pin_config=False, engines="cusparselt") as op:
        op(x)
        assert op.plan_info(64)["pinned"] is False and op.plan_info(8) is None
    with cslt.SparseMatmul(w, search=False, engines="cusparselt") as op:
        op(x)
        assert op.plan_info(64) == {"engine": "cusparselt", "layout": cslt.DEFAULT_LAYOUTS[0],
                                    "config": op.plan_info(64)["config"], "pinned": False}


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [name for name in cslt.LAYOUTS if name.startswith("wA_")])
def test_bias_in_every_w_a_layout(cp, layout):
    rng = np.random.default_rng(22)
    w = to_gpu(cp, weight_24(rng, 64, 128), "float16")
    bias = cp.asarray(rng.standard_normal(64).astype(np.float32))
    x = to_gpu(cp, rng.standard_normal((24, 128)), "float16")
    with cslt.SparseMatmul(w, bias, layout=layout, engines="cusparselt") as op:
        y = op(x, out=poisoned(cp, (24, 64), "float16"))
        assert rel(cp.asnumpy(y), reference(cp, x, w, bias.astype(cp.float16))) < 1e-3
    with pytest.raises(ValueError, match="operand B"):
        cslt.SparseMatmul(w, bias, layout="wB_wrow_xrow")


@pytest.mark.gpu
@pytest.mark.parametrize("layout", list(cslt.LAYOUTS))
def test_prune_check_refuses_a_3_of_4_weight_in_every_layout(cp, layout):
    rng = np.random.default_rng(23)
    w = weight_24(rng, 32, 64)
    w[7, 40:44] = [0.0, 1.5, 1.5, 1.5]                                           # row 7, group 40..43: 3 non-zeros
    with pytest.raises(ValueError, match=r"not 2:4 .* row 7, columns 40\.\.43 hold 3"):
        cslt.SparseMatmul(to_gpu(cp, w, "float16"), layout=layout)


@pytest.mark.gpu
def test_one_object_caches_a_plan_per_batch_size(cp):
    rng = np.random.default_rng(1)
    w = to_gpu(cp, weight_24(rng, 96, 160), "float16")
    op = cslt.SparseMatmul(w)
    for batch in (8, 64, 8, 256, 24, 64):
        x = to_gpu(cp, rng.standard_normal((batch, 160)), "float16")
        y = op(x, out=poisoned(cp, (batch, 96), "float16"))
        assert not bool(cp.isnan(y).any())
        assert rel(cp.asnumpy(y), reference(cp, x, w)) < 1e-3
    assert op.batch_sizes == [8, 24, 64, 256]
    y_default = op(x)                                                            # no out: a fresh array
    assert rel(cp.asnumpy(y_default), reference(cp, x, w)) < 1e-3


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bias(cp, dtype):
    rng = np.random.default_rng(2)
    w = to_gpu(cp, weight_24(rng, 48, 64), dtype)
    bias = cp.asarray(rng.standard_normal(48).astype(np.float32))
    x = to_gpu(cp, rng.standard_normal((16, 64)), dtype)
    with cslt.SparseMatmul(w, bias) as op:
        y = op(x, out=poisoned(cp, (16, 48), dtype))
        expected = reference(cp, x, w, bias.astype(cslt.np_dtype(dtype)))
        assert rel(cp.asnumpy(y.astype(cp.float32)), expected) < TOL[dtype]


@pytest.mark.gpu
def test_prune_check_refuses_a_3_of_4_weight(cp):
    rng = np.random.default_rng(3)
    w = weight_24(rng, 32, 64)
    w[5, 20:24] = [1.5, 1.5, 1.5, 0.0]                                           # row 5, group 20..23: 3 non-zeros
    with pytest.raises(ValueError, match=r"not 2:4 .* row 5, columns 20\.\.23 hold 3"):
        cslt.SparseMatmul(to_gpu(cp, w, "float16"))


@pytest.mark.gpu
def test_sparser_weights_are_accepted(cp):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((32, 64)).astype(np.float32)
    w = w * nm_mask(w, 1, 4)
    w[3] = 0.0                                                                   # a zero row too
    w16 = to_gpu(cp, w, "float16")
    x = to_gpu(cp, rng.standard_normal((8, 64)), "float16")
    with cslt.SparseMatmul(w16) as op:
        assert rel(cp.asnumpy(op(x, out=poisoned(cp, (8, 32), "float16"))), reference(cp, x, w16)) < 1e-3


@pytest.mark.gpu
def test_shape_alignment_and_type_errors(cp):
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="in_features=24"):
        cslt.SparseMatmul(to_gpu(cp, weight_24(rng, 32, 24), "float16"))
    with pytest.raises(ValueError, match="out_features=40"):
        cslt.SparseMatmul(to_gpu(cp, weight_24(rng, 40, 32), "float16"))
    with pytest.raises(TypeError, match="CuPy array"):
        cslt.SparseMatmul(weight_24(rng, 32, 32).astype(np.float16))
    with pytest.raises(TypeError, match="not supported"):
        cslt.SparseMatmul(cp.asarray(weight_24(rng, 32, 32)))                     # float32
    op = cslt.SparseMatmul(to_gpu(cp, weight_24(rng, 32, 64), "float16"))
    x = to_gpu(cp, rng.standard_normal((16, 64)), "float16")
    with pytest.raises(ValueError, match="batch=12"):
        op(x[:12])
    with pytest.raises(ValueError, match="C-contiguous"):
        op(cp.asfortranarray(x))
    misaligned = cp.empty(16 * 64 + 1, dtype=cp.float16)[1:].reshape(16, 64)
    with pytest.raises(ValueError, match="16-byte"):
        op(misaligned)
    with pytest.raises(TypeError, match="x is float32"):
        op(x.astype(cp.float32))
    with pytest.raises(ValueError, match="in_features=64"):
        op(to_gpu(cp, rng.standard_normal((16, 32)), "float16"))
    with pytest.raises(TypeError, match="CuPy array"):
        op(cp.asnumpy(x))
    with pytest.raises(ValueError, match="out must be"):
        op(x, out=cp.empty((16, 32), dtype=cp.float32))
    with pytest.raises(TypeError, match="out_dtype"):
        cslt.SparseMatmul(to_gpu(cp, weight_24(rng, 32, 64), "float16"), out_dtype="float32")


@pytest.mark.gpu
def test_batch_sizes_up_front_keep_no_dense_weight(cp):
    rng = np.random.default_rng(6)
    w = to_gpu(cp, weight_24(rng, 64, 128), "float16")
    with cslt.SparseMatmul(w, batch_sizes=(64, 8, 8)) as op:
        assert op.batch_sizes == [8, 64] and op._weight is None
        for batch in (8, 64):
            x = to_gpu(cp, rng.standard_normal((batch, 128)), "float16")
            assert rel(cp.asnumpy(op(x, out=poisoned(cp, (batch, 64), "float16"))), reference(cp, x, w)) < 1e-3
        with pytest.raises(ValueError, match="batch=16 has no plan"):
            op(to_gpu(cp, rng.standard_normal((16, 128)), "float16"))
    with pytest.raises(ValueError, match="batch=12"):
        cslt.SparseMatmul(w, batch_sizes=(12,))


@pytest.mark.gpu
def test_search_off_matches_search_on(cp):
    rng = np.random.default_rng(13)
    w = to_gpu(cp, weight_24(rng, 256, 512), "bfloat16")
    x = to_gpu(cp, rng.standard_normal((64, 512)), "bfloat16")
    with cslt.SparseMatmul(w, search=False) as plain, cslt.SparseMatmul(w, search=True) as searched:
        y_plain, y_searched = plain(x), searched(x)
        for y in (y_plain, y_searched):
            assert rel(cp.asnumpy(y.astype(cp.float32)), reference(cp, x, w)) < TOL["bfloat16"]


@pytest.mark.gpu
def test_runs_on_the_current_stream(cp):
    rng = np.random.default_rng(7)
    w = to_gpu(cp, weight_24(rng, 64, 64), "float16")
    x = to_gpu(cp, rng.standard_normal((64, 64)), "float16")
    op = cslt.SparseMatmul(w)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        y = op(x, out=poisoned(cp, (64, 64), "float16"))
        y2 = y * 2                                                               # ordered after the matmul
    stream.synchronize()
    assert rel(cp.asnumpy(y2), 2 * reference(cp, x, w)) < 1e-3


@pytest.mark.gpu
def test_resources_are_released(cp):
    rng = np.random.default_rng(8)
    w = to_gpu(cp, weight_24(rng, 32, 32), "float16")
    x = to_gpu(cp, rng.standard_normal((8, 32)), "float16")
    with cslt.SparseMatmul(w, engines="cusparselt") as op:
        op(x)
        resources = op._res
        assert resources.plans and resources.handle is not None
    assert resources.released and not resources.plans and resources.handle is None
    with pytest.raises(RuntimeError, match="closed"):
        op(x)
    op = cslt.SparseMatmul(w)
    op(x)
    resources = op._res
    del op
    gc.collect()
    assert resources.released


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", ["int32", "float16"])
def test_int8(cp, out_dtype):
    rng = np.random.default_rng(9)
    w = np.rint(weight_24(rng, 64, 128) * 10).clip(-40, 40)                      # (out, in)
    x = rng.integers(-8, 9, (32, 128))                                           # (batch, in): |y| < 2**15
    op = cslt.SparseMatmul(cp.asarray(w.astype(np.int8)), out_dtype=out_dtype)
    y = op(cp.asarray(x.astype(np.int8)), out=poisoned(cp, (32, 64), out_dtype))
    exact = x.astype(np.int64) @ w.astype(np.int64).T
    if out_dtype == "int32":
        assert np.array_equal(cp.asnumpy(y), exact)
    else:
        assert rel(cp.asnumpy(y.astype(cp.float32)), exact) < 1e-3


@pytest.mark.gpu
def test_matches_torch_semi_structured(cp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA GPU")
    rng = np.random.default_rng(10)
    w = to_gpu(cp, weight_24(rng, 128, 256), "float16")
    x = to_gpu(cp, rng.standard_normal((64, 256)), "float16")
    bias = to_gpu(cp, rng.standard_normal(128), "float16")
    w_t, x_t, b_t = torch.from_dlpack(w), torch.from_dlpack(x), torch.from_dlpack(bias)
    y_torch = torch.nn.functional.linear(x_t, torch.sparse.to_sparse_semi_structured(w_t), b_t)
    torch.cuda.synchronize()
    with cslt.SparseMatmul(w, bias) as op:
        y = op(x, out=poisoned(cp, (64, 128), "float16"))
        assert rel(cp.asnumpy(y), y_torch.float().cpu().numpy()) < 2e-3
        assert rel(cp.asnumpy(y), reference(cp, x, w, bias)) < 1e-3


@pytest.mark.gpu
def test_linear_layer_switches_to_cusparselt_for_inference(cp):
    from nmref.layers import Linear
    from nmref.sparsity import SRSTE
    layer = Linear(64, 32, method=lambda: SRSTE(2, 4), rng=11)
    x = np.random.default_rng(12).standard_normal((10, 64)).astype(np.float32)   # batch 10: padded inside
    expected = layer.forward(x, train=False)
    sparse = cslt.to_cusparselt(layer)
    y = sparse.forward(cp.asarray(x))
    assert y.shape == (10, 32) and y.dtype == np.float32
    assert rel(cp.asnumpy(y), expected) < 2e-3       # fp16 weights and inputs; fp32 reference
    sparse.close()


def test_check_batch_names_a_bad_dtype_or_batch():
    with pytest.raises(TypeError, match="dtype float32 is not supported by the 2:4 path"):
        cslt.check_batch(8, "float32")                         # was: KeyError: 'float32'
    with pytest.raises(TypeError, match="batch='8' must be an int"):
        cslt.check_batch("8", "float16")
