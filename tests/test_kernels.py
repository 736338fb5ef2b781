import ctypes
import shutil
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import nm_shapes

from nmref import kernels, masks
from nmref.backend import gpu_available, to_device, to_host
from nmref.kernels import cupy_gpu, key_constants
from nmref.masks import nm_mask, nm_mask_reference, pick_backend

numba_cpu = pytest.importorskip("nmref.kernels.numba_cpu")
SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = (np.float16, np.float32, np.float64)


def special_values(dtype):
    """+-0, subnormals, the extremes and near-ties: everything a bit-level kernel could get wrong."""
    info = np.finfo(dtype)
    one = dtype(1)
    values = [0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal, 2 * info.smallest_subnormal,
              info.smallest_normal, -info.smallest_normal, one, -one, np.nextafter(one, dtype(2)),
              -np.nextafter(one, dtype(0)), info.max, -info.max, np.nextafter(info.max, dtype(0))]
    return np.array(values, dtype=dtype)


@st.composite
def cases(draw, m_choices=(1, 2, 3, 4, 8, 16)):
    n, m, layout, shape = draw(nm_shapes(m_choices))
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    kind = draw(st.sampled_from(["normal", "ties", "special"]))
    if kind == "normal":
        w = rng.standard_normal(shape).astype(dtype)
    elif kind == "ties":
        w = rng.integers(-2, 3, size=shape).astype(dtype)
    else:
        w = rng.choice(special_values(dtype), size=shape)
    return w, n, m, layout


@SETTINGS
@given(cases())
def test_numba_is_bit_identical_to_the_reference(case):
    w, n, m, layout = case
    assert np.array_equal(nm_mask(w, n, m, layout, backend="numba"), nm_mask_reference(w, n, m, layout))


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_in_every_group_position(dtype):
    values = special_values(dtype)
    rng = np.random.default_rng(0)
    w = rng.choice(values, size=(64, 16))
    for n, m in ((1, 4), (2, 4), (3, 4), (4, 8), (7, 16)):
        assert np.array_equal(nm_mask(w, n, m, backend="numba"), nm_mask_reference(w, n, m))


@pytest.mark.parametrize("shape, layout, m, kernel", [
    ((128, 1024), "linear", 4, "_rows_parallel_fixed_m"),
    ((96, 1032), "linear", 3, "_rows_parallel"),
    ((64, 256, 3, 3), "conv", 4, "_strided_parallel_fixed_m"),
    ((64, 192, 3, 3), "conv", 3, "_strided_parallel"),
    ((64, 64, 1, 1), "conv", 8, "_rows_fixed_m"),
    ((8, 24, 3), "conv", 3, "_strided"),
    ((64, 64, 3, 3), "conv", 4, "_strided_fixed_m"),
    ((128, 4096), "linear", 16, "_rows_composite_parallel_fixed_m"),
    ((96, 4080), "linear", 10, "_rows_composite_parallel"),
    ((8, 64), "linear", 16, "_rows_composite_fixed_m"),
    ((8, 60), "linear", 12, "_rows_composite"),
])
def test_every_kernel_path_matches_the_reference(shape, layout, m, kernel):
    rng = np.random.default_rng(1)
    w = rng.integers(-4, 5, size=shape).astype(np.float32)               # many ties
    view = masks.axis_view(w, layout)
    assert numba_cpu.pick_kernel(view.shape, m, np.uint32) is getattr(numba_cpu, kernel)
    for n in (1, m - 1):
        assert np.array_equal(nm_mask(w, max(n, 1), m, layout, backend="numba"),
                              nm_mask_reference(w, max(n, 1), m, layout))
    w[-1, -1] = np.nan                                                   # the last weight of the last group
    with pytest.raises(ValueError, match="NaN or inf"):
        nm_mask(w, 1, m, layout, backend="numba")


@pytest.mark.parametrize("shape, layout, m", [((8, 64), "linear", 4), ((8, 60), "linear", 12),
                                              ((8, 64), "linear", 16), ((128, 4096), "linear", 16),
                                              ((8, 24, 3), "conv", 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_inf_raises_in_every_kernel_like_nan(shape, layout, m, dtype):
    """+inf has the key ``limit`` itself (NaNs lie above it): every kernel must count it."""
    for bad in (np.inf, -np.inf):
        w = np.ones(shape, dtype=dtype)
        w.reshape(-1)[w.size // 2 + 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            nm_mask(w, 1, m, layout, backend="numba")

def test_non_contiguous_and_byte_swapped_input():
    rng = np.random.default_rng(2)
    w = rng.integers(-3, 4, size=(16, 24)).astype(np.float64)
    for variant in (w.T, w[:, ::2], np.asfortranarray(w), w.astype(">f8"), w.astype("<f4")[::2]):
        assert np.array_equal(nm_mask(variant, 2, 4, backend="numba"), nm_mask_reference(variant, 2, 4))


def test_straddling_groups_in_the_kernel():
    w = np.random.default_rng(3).integers(-3, 4, size=(4, 3, 3, 3)).astype(np.float32)
    for layout in ("conv", "nchw_flatten"):
        assert np.array_equal(nm_mask(w, 2, 4, layout, straddle=True, backend="numba"),
                              nm_mask_reference(w, 2, 4, layout, straddle=True))


def test_empty_weight():
    w = np.zeros((0, 8), dtype=np.float32)
    assert nm_mask(w, 2, 4, backend="numba").shape == (0, 8)


def test_auto_falls_back_to_the_reference(monkeypatch):
    w = np.random.default_rng(4).standard_normal((4, 8))
    assert pick_backend(w) == "numba"
    assert pick_backend(w.astype(np.longdouble)) == "numpy"
    with pytest.raises(TypeError, match="float16/32/64"):
        pick_backend(w.astype(np.longdouble), "numba")
    monkeypatch.setattr(kernels, "available", lambda name: False)
    assert pick_backend(w) == "numpy"
    assert np.array_equal(nm_mask(w, 2, 4), nm_mask_reference(w, 2, 4))


def test_key_constants_order_magnitudes():
    for dtype in DTYPES:
        key, absmask, limit = key_constants(dtype)
        values = np.sort(np.abs(special_values(dtype)).astype(np.float64))
        keys = (np.abs(special_values(dtype)).astype(dtype).view(key) & absmask)
        assert np.array_equal(np.sort(keys).astype(np.float64) > 0, values > 0)
        assert (np.array([np.inf, -np.inf, np.nan], dtype=dtype).view(key) & absmask >= limit).all()
        assert (keys < limit).all()


def test_unknown_kernel_backend():
    with pytest.raises(ValueError, match="kernel backend 'torch'"):
        kernels.load("torch")


# -- the CUDA kernel, checked without a GPU -----------------------------------------------------------------

HOST_PRELUDE = """
struct dim3_ { unsigned int x, y, z; };
static dim3_ blockIdx, threadIdx, blockDim;
static int atomicOr(int* address, int value) { int old = *address; *address = old | value; return old; }
#define __global__
"""
HOST_LAUNCH = """
extern "C" void launch(const KEY* keys, bool* mask, long long n_groups, long long k, long long n_b, int n_keep,
                       KEY absmask, KEY limit, int* nonfinite, int threads, long long blocks) {
    blockDim.x = threads;
    for (long long bx = 0; bx < blocks; ++bx)
        for (int tx = 0; tx < threads; ++tx) {
            blockIdx.x = bx; threadIdx.x = tx;
            nm_mask_kernel(keys, mask, n_groups, k, n_b, n_keep, absmask, limit, nonfinite);
        }
}
"""


def host_kernel(tmp_path, key, m):
    """The CUDA source compiled as C++ with an emulated grid: a ``run_mask`` for masks._kernel_mask."""
    src = tmp_path / f"nm_{np.dtype(key).name}_{m}.cpp"
    src.write_text(HOST_PRELUDE + cupy_gpu.kernel_source(key, m) + HOST_LAUNCH)
    lib_path = src.with_suffix(".so")
    subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-Wno-unknown-pragmas", str(src), "-o", str(lib_path)],
                   check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    ckey = {np.uint32: ctypes.c_uint32, np.uint64: ctypes.c_uint64}[key]

    def run_mask(keys, m_, n_keep, absmask, limit, mask):
        assert keys.dtype == key and m_ == m
        n_groups, k, n_b, blocks = cupy_gpu.launch_shape(keys.shape, m)
        flag = np.zeros(1, dtype=np.int32)
        lib.launch(keys.ctypes.data_as(ctypes.c_void_p), mask.ctypes.data_as(ctypes.c_void_p),
                   ctypes.c_longlong(n_groups), ctypes.c_longlong(k), ctypes.c_longlong(n_b),
                   ctypes.c_int(n_keep), ckey(absmask), ckey(limit), flag.ctypes.data_as(ctypes.c_void_p),
                   ctypes.c_int(cupy_gpu.THREADS), ctypes.c_longlong(blocks))
        return int(flag[0])
    return run_mask


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to compile the CUDA source on the host")
@pytest.mark.parametrize("dtype, m", [(np.float32, 4), (np.float32, 3), (np.float64, 8), (np.float16, 4)])
def test_cuda_source_emulated_on_the_host_matches_the_reference(tmp_path, dtype, m):
    key = key_constants(np.float32 if dtype == np.float16 else dtype)[0]
    run = host_kernel(tmp_path, key, m)
    rng = np.random.default_rng(5)
    shapes = [((5, 4 * m), "linear"), ((3, 2 * m, 3, 3), "conv"), ((3, 2, 3, 2 * m), "nchw_flatten"),
              ((300, 2 * m), "linear")]
    for shape, layout in shapes:
        for w in (rng.integers(-2, 3, size=shape).astype(dtype), rng.choice(special_values(dtype), size=shape)):
            for n in range(1, m + 1):
                got = masks._kernel_mask(w, n, m, layout, False, run)
                assert np.array_equal(got, nm_mask_reference(w, n, m, layout)), (shape, layout, n)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    if m == 4:
        got = masks._kernel_mask(w, 2, 4, "conv", True, run)
        assert np.array_equal(got, nm_mask_reference(w, 2, 4, "conv", straddle=True))
    w = rng.standard_normal((6, 2 * m)).astype(dtype)
    w[5, 2 * m - 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        masks._kernel_mask(w, 1, m, "linear", False, run)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    for key, m in ((np.uint32, 4), (np.uint64, 16), (np.uint16, 2)):
        src = tmp_path / f"k_{m}.cu"
        src.write_text(cupy_gpu.kernel_source(key, m))
        subprocess.run(["nvcc", "--ptx", str(src), "-o", str(src.with_suffix(".ptx"))], check=True,
                       capture_output=True)


# -- the CUDA kernel on a GPU -------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, m", [(1, 4), (2, 4), (3, 4), (4, 8), (2, 8), (8, 16), (2, 3)])
def test_cupy_is_bit_identical_to_the_reference(dtype, n, m):
    import cupy
    rng = np.random.default_rng(6)
    shapes = [((64, 8 * m), "linear"), ((8, 4 * m, 3, 3), "conv"), ((6, 3, 2 * m), "nchw_flatten"),
              ((512, 64 * m), "linear")]
    for shape, layout in shapes:
        for w in (rng.standard_normal(shape).astype(dtype), rng.integers(-2, 3, size=shape).astype(dtype),
                  rng.choice(special_values(dtype), size=shape)):
            got = nm_mask(to_device(w, "gpu"), n, m, layout)
            assert isinstance(got, cupy.ndarray) and got.dtype == bool
            assert np.array_equal(to_host(got), nm_mask_reference(w, n, m, layout))


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_cupy_raises_on_nan_and_handles_straddle():
    w = np.random.default_rng(7).standard_normal((4, 3, 3, 3)).astype(np.float32)
    assert np.array_equal(to_host(nm_mask(to_device(w, "gpu"), 2, 4, "conv", straddle=True)),
                          nm_mask_reference(w, 2, 4, "conv", straddle=True))
    w = np.ones((8, 16), dtype=np.float32)
    w[7, 15] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        nm_mask(to_device(w, "gpu"), 2, 4)
    with pytest.raises(ValueError, match="cannot run on a CuPy array"):
        nm_mask(to_device(w, "gpu"), 2, 4, backend="numba")
