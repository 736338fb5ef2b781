"""nmref/kernels/sparse_mma.py, nmref's own 2:4 kernel on the sparse tensor cores: the packed layout against
an independent walk of PTX's fragment description (any machine), the CUDA source through nvcc/ptxas (where
nvcc is), and the kernel against dense matmul on the GPU (every launch shape, ties, odd shapes, bias)."""
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmref import cusparselt as cslt
from nmref.kernels import sparse_mma as sm
from nmref.masks import nm_mask

TOL = {"float16": 1e-3, "bfloat16": 1e-2}          # docs/tolerances.md


def weight_24(rng, out_features, in_features, ties=False, n_keep=2):
    """Host float32 (out, in) with at most n_keep non-zeros per group of 4 (integers when ties: many equal)."""
    w = (rng.integers(-2, 3, (out_features, in_features)) if ties else
         rng.standard_normal((out_features, in_features))).astype(np.float32)
    return w * nm_mask(w, n_keep, 4) if n_keep else np.zeros_like(w)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# ---------------------------------------------------------------- any machine
@settings(max_examples=40, deadline=None)
@given(tiles=st.integers(1, 5), extra_rows=st.integers(0, 15), steps=st.integers(1, 4), row_tiles=st.sampled_from([1, 2, 4]),
       n_keep=st.sampled_from([0, 1, 2]), ties=st.booleans(), seed=st.integers(0, 2**31 - 1),
       order=st.sampled_from([sm.GROUP_ORDER, tuple(range(8)), None]))
def test_pack_is_read_back_by_the_fragment_walk(tiles, extra_rows, steps, row_tiles, n_keep, ties, seed, order):
    rng = np.random.default_rng(seed)
    out_features = 16 * tiles - (extra_rows if tiles > 1 else 0)
    w = weight_24(rng, out_features, 32 * steps, ties, n_keep).astype(np.float16)       # (out, in)
    order = tuple(rng.permutation(8)) if order is None else order                      # any group order
    vals, meta = sm.pack(w, row_tiles, order)
    n_tiles = -(-out_features // (16 * row_tiles)) * row_tiles
    assert vals.shape == (n_tiles, steps, 32, 4) and meta.shape == (n_tiles, steps, 16)
    assert vals.dtype == np.uint32 and meta.dtype == np.uint32
    assert np.array_equal(sm.unpack(vals, meta, out_features, np.float16, order), w)
    if order != sm.GROUP_ORDER:                                  # the order is honoured, not ignored
        assert not np.array_equal(sm.unpack(vals, meta, out_features, np.float16), w) or not w.any()
    nibbles = (meta[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 0xF            # per group: p0 | p1 << 2
    assert np.all((nibbles & 3) < (nibbles >> 2))                                       # ascending positions


def test_pack_keeps_signed_values_and_extremes():
    w = np.zeros((16, 32), np.float16)
    w[0, :4] = [0, -65504, 0, 6e-8]                                                    # max and subnormal
    w[1, 4:8] = [np.inf, 0, 0, -1]
    w[15, 28:32] = [0, 0, 0, -0.0]
    vals, meta = sm.pack(w)
    assert np.array_equal(sm.unpack(vals, meta, 16, np.float16), w)


def test_group_order_is_a_permutation_of_the_eight_groups():
    assert sorted(sm.GROUP_ORDER) == list(range(8))


def test_pack_refuses_bad_weights():
    w = np.zeros((16, 64), np.float16)
    w[3, 8:11] = 1
    with pytest.raises(ValueError, match="not 2:4 .* more than 2"):
        sm.pack(w)
    with pytest.raises(ValueError, match="in_features=48 is not a multiple of 32; pad"):
        sm.pack(np.zeros((16, 48), np.float16))


def test_configs_for_small_batches():
    assert all(c[0] == 1 for c in sm.configs_for(8))
    assert set(sm.configs_for(64)) == set(sm.CONFIGS)
    assert all(len(c) == 5 for c in sm.CONFIGS)


def test_engine_choice_and_errors():
    assert cslt._candidate_engines(None, "float16", 64, "float16") == cslt.ENGINES
    assert cslt._candidate_engines(None, "bfloat16", 48, "bfloat16") == ("cusparselt",)
    assert cslt._candidate_engines(None, "int8", 64, "int32") == ("cusparselt",)
    assert cslt._candidate_engines("mma_sp", "float16", 64, "float16") == ("mma_sp",)
    with pytest.raises(ValueError, match="'mma_sp' cannot serve .*in_features=48"):
        cslt._candidate_engines(("mma_sp",), "float16", 48, "float16")
    with pytest.raises(ValueError, match="'mma_sp' cannot serve .*int8"):
        cslt._candidate_engines(("cusparselt", "mma_sp"), "int8", 64, "int32")
    with pytest.raises(ValueError, match="engines='cublas' is not known"):
        cslt._candidate_engines("cublas", "float16", 64, "float16")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_source_compiles_without_spills(tmp_path, arch):
    for dtype in sm.PTX_TYPES:
        for config in sm.CONFIGS:
            src = tmp_path / f"k_{dtype}_{'_'.join(map(str, config))}.cu"
            src.write_text(sm.kernel_source(dtype, *config))
            done = subprocess.run(["nvcc", f"-arch={arch}", "-cubin", "-Xptxas", "-v", str(src), "-o",
                                   str(src.with_suffix(".cubin"))], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "0 bytes spill stores" in done.stderr, (dtype, config, done.stderr[-500:])


# ---------------------------------------------------------------- GPU
@pytest.fixture(scope="module")
def cp():
    cupy = pytest.importorskip("cupy")
    from nmref.backend import gpu_available
    if not gpu_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    if cupy.cuda.Device().compute_capability < "80":
        pytest.skip("mma.sp needs compute capability 8.0 or newer")
    return cupy


def to_gpu(cp, a, dtype):
    return cp.asarray(np.asarray(a, np.float32)).astype(cslt.np_dtype(dtype))


@pytest.mark.gpu
def test_pack_on_the_gpu_equals_pack_on_the_host(cp):
    rng = np.random.default_rng(30)
    w = weight_24(rng, 40, 96, ties=True).astype(np.float16)
    vals, meta = sm.pack(cp.asarray(w), 4)
    host_vals, host_meta = sm.pack(w, 4)
    assert np.array_equal(cp.asnumpy(vals), host_vals) and np.array_equal(cp.asnumpy(meta), host_meta)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kernel_matches_dense_in_every_launch_shape(cp, dtype):
    rng = np.random.default_rng(31)
    cases = [(16, 32, 8, False, 2), (1000, 512, 13, False, 2), (48, 4096, 16, True, 2), (80, 96, 3, False, 1),
             (256, 256, 64, True, 2), (16, 64, 40, False, 0)]
    for out_features, in_features, batch, ties, n_keep in cases:
        w = to_gpu(cp, weight_24(rng, out_features, in_features, ties, n_keep), dtype)         # (out, in)
        x = to_gpu(cp, rng.integers(-3, 4, (batch, in_features)) if ties else
                   rng.standard_normal((batch, in_features)), dtype)                         # (batch, in)
        bias = to_gpu(cp, rng.standard_normal(out_features), dtype)
        for b in (None, bias):
            expected = x.astype(cp.float32) @ w.astype(cp.float32).T + (0 if b is None else b.astype(cp.float32))
            packed = sm.PackedWeight(w, b)
            for config in sm.CONFIGS:
                y = cp.full((batch, out_features), np.nan, np.float32).astype(cslt.np_dtype(dtype))
                packed.launch(x, y, config)
                again = cp.full_like(y, np.nan)
                packed.launch(x, again, config)
                case = (out_features, in_features, batch, b is not None, config)
                assert bool(cp.isfinite(y.astype(cp.float32)).all()), case
                assert cp.asnumpy(y).tobytes() == cp.asnumpy(again).tobytes(), case            # deterministic
                err = rel(cp.asnumpy(y.astype(cp.float32)), cp.asnumpy(expected))
                assert err < TOL[dtype], (case, err)
                if ties and b is None and dtype == "float16":      # small integers: every sum exact
                    assert np.array_equal(cp.asnumpy(y.astype(cp.float32)), cp.asnumpy(expected)), case


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sparse_matmul_on_the_mma_engine(cp, dtype):
    pytest.importorskip("nvmath.bindings.cusparseLt")
    rng = np.random.default_rng(32)
    w = to_gpu(cp, weight_24(rng, 256, 512), dtype)
    bias = to_gpu(cp, rng.standard_normal(256), dtype)
    for engines in (("mma_sp",), None):
        with cslt.SparseMatmul(w, bias, engines=engines) as op:
            for batch in (8, 64, 256):
                x = to_gpu(cp, rng.standard_normal((batch, 512)), dtype)
                y = op(x, out=cp.full((batch, 256), np.nan, np.float32).astype(cslt.np_dtype(dtype)))
                expected = x.astype(cp.float32) @ w.astype(cp.float32).T + bias.astype(cp.float32)
                assert rel(cp.asnumpy(y.astype(cp.float32)), cp.asnumpy(expected)) < TOL[dtype]
                info = op.plan_info(batch)
                if engines == ("mma_sp",):
                    assert info["engine"] == "mma_sp" and tuple(info["config"]) in sm.CONFIGS
                    assert info["layout"] is None and op.layout_for(batch) is None
                elif batch > sm.MAX_BATCH:
                    assert info["engine"] == "cusparselt"
            assert not op.kernel_errors
