"""CUDA N:M mask kernel for CuPy arrays, one thread per group (imported lazily by nmref.masks).

Same keys and rule as numba_cpu: |w| compared as unsigned integers (float bits, sign cleared), position j
kept iff fewer than n positions rank above it (|w_i| > |w_j|, or equal with i > j). M and the key type are
compile-time constants, so a group's keys live in registers. Threads run over the (A, K, B) view with b
fastest, so a conv weight (Cout, Cin, kh*kw) is read coalesced without a transpose.
CuPy is imported only when a kernel is built: this module's source text is readable without a GPU.
"""
import functools

import numpy as np

CTYPES = {np.dtype(np.uint16): "unsigned short", np.dtype(np.uint32): "unsigned int",
          np.dtype(np.uint64): "unsigned long long"}
THREADS = 256

SOURCE = r"""
extern "C" __global__ void nm_mask_kernel(const KEY* keys, bool* mask, long long n_groups, long long k,
                                          long long n_b, int n_keep, KEY absmask, KEY limit, int* nonfinite)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_groups) return;
    long long b = t % n_b;
    long long rest = t / n_b;
    long long blocks = k / M;
    long long base = ((rest / blocks) * k + (rest % blocks) * M) * n_b + b;
    KEY v[M];
    int bad = 0;
#pragma unroll
    for (int j = 0; j < M; ++j) {
        v[j] = keys[base + j * n_b] & absmask;
        bad |= v[j] >= limit;
    }
#pragma unroll
    for (int j = 0; j < M; ++j) {
        int above = 0;
#pragma unroll
        for (int i = 0; i < M; ++i)
            above += (i < j) ? (v[i] > v[j]) : (i > j && v[i] >= v[j]);
        mask[base + j * n_b] = above < n_keep;
    }
    if (bad) atomicOr(nonfinite, 1);
}
"""


def kernel_source(key_dtype, m):
    """The CUDA source for one key type and group size (also compiled on the host by the tests)."""
    return f"#define M {int(m)}\n#define KEY {CTYPES[np.dtype(key_dtype)]}\n{SOURCE}"


@functools.lru_cache(maxsize=None)
def _kernel(key_dtype, m):
    import cupy
    return cupy.RawKernel(kernel_source(key_dtype, m), "nm_mask_kernel")


def launch_shape(keys_shape, m):
    """(n_groups, K, B, blocks) for keys (A, K, B): one thread per group, THREADS per block."""
    n_a, k, n_b = keys_shape
    n_groups = n_a * (k // m) * n_b
    return n_groups, k, n_b, (n_groups + THREADS - 1) // THREADS


def run_mask(keys, m, n_keep, absmask, limit, mask):
    """Mask of CuPy keys (A, K, B) into mask (A, K, B), groups of m along K; returns the inf/NaN count."""
    import cupy
    n_groups, k, n_b, blocks = launch_shape(keys.shape, m)
    if n_groups == 0:
        return 0
    nonfinite = cupy.zeros(1, dtype=cupy.int32)
    args = (keys, mask, np.int64(n_groups), np.int64(k), np.int64(n_b), np.int32(n_keep), absmask, limit,
            nonfinite)
    _kernel(keys.dtype, int(m))((blocks,), (THREADS,), args)
    return int(nonfinite.get()[0])
