"""Numba N:M mask kernels on the bit patterns of |w| (imported lazily by nmref.masks).

Keys: for finite IEEE floats, |a| < |b| exactly when (bits(a) & absmask) < (bits(b) & absmask) as unsigned
integers, so one integer kernel serves float32/64 (float16 is widened to float32, which is exact), with
+-0 equal and subnormals ordered. A key >= the bits of +inf is inf or NaN: the kernels count those in the
same pass instead of running a separate isfinite pass.

Rule (the reference's stable ascending sort, first m - n pruned): position j is kept iff fewer than n
positions rank above it, where i ranks above j if |w_i| > |w_j|, or |w_i| == |w_j| and i > j.
For the common group sizes m is a compile-time constant (a closure per m): the rank loops unroll and the
loop over groups vectorizes. Large weights run in parallel over chunks of groups.
"""
import numba as nb
import numpy as np

SPECIALIZED_M = (2, 4, 8, 16)
CHUNK = 1 << 14                      # groups per parallel task; smaller weights run on one thread


@nb.njit(cache=True)
def _rows(keys, m, n_keep, absmask, limit, mask):
    """keys (G*M,) contiguous groups, mask (G*M,) out; returns the count of inf/NaN weights."""
    nonfinite = 0
    for g in range(keys.shape[0] // m):
        base = g * m
        for j in range(m):
            kj = keys[base + j] & absmask
            nonfinite += kj >= limit
            above = 0
            for i in range(j):
                above += (keys[base + i] & absmask) > kj
            for i in range(j + 1, m):
                above += (keys[base + i] & absmask) >= kj
            mask[base + j] = above < n_keep
    return nonfinite


@nb.njit(cache=True)
def _strided(keys, m, n_keep, absmask, limit, mask):
    """keys (A, K, B) with groups of m along K (conv (Cout, Cin, kh*kw)), mask (A, K, B) out."""
    n_a, k, n_b = keys.shape
    nonfinite = 0
    for a in range(n_a):
        for blk in range(k // m):
            base = blk * m
            for j in range(m):
                for b in range(n_b):
                    kj = keys[a, base + j, b] & absmask
                    nonfinite += kj >= limit
                    above = 0
                    for i in range(j):
                        above += (keys[a, base + i, b] & absmask) > kj
                    for i in range(j + 1, m):
                        above += (keys[a, base + i, b] & absmask) >= kj
                    mask[a, base + j, b] = above < n_keep
    return nonfinite


@nb.njit(cache=True, parallel=True)
def _rows_parallel(keys, m, n_keep, absmask, limit, mask):
    n_groups = keys.shape[0] // m
    n_chunks = (n_groups + CHUNK - 1) // CHUNK
    nonfinite = 0
    for c in nb.prange(n_chunks):
        lo = c * CHUNK * m
        hi = min(n_groups, (c + 1) * CHUNK) * m
        nonfinite += _rows(keys[lo:hi], m, n_keep, absmask, limit, mask[lo:hi])
    return nonfinite


@nb.njit(cache=True, parallel=True)
def _strided_parallel(keys, m, n_keep, absmask, limit, mask):
    nonfinite = 0
    for a in nb.prange(keys.shape[0]):
        nonfinite += _strided(keys[a:a + 1], m, n_keep, absmask, limit, mask[a:a + 1])
    return nonfinite


def _constant_m(kernel, m):
    """``kernel`` with m a compile-time constant of a closure (numba caches one per m; loops unroll)."""
    @nb.njit(cache=True)
    def fixed(keys, n_keep, absmask, limit, mask):
        return kernel(keys, m, n_keep, absmask, limit, mask)
    return fixed


class _FixedM:
    """Call ``kernel`` through a closure compiled for this m. (numba.literally re-ran type inference on
    every call: about 7 ms a call, more than the mask itself for any weight below a few million.)"""

    def __init__(self, kernel):
        self.kernel, self.by_m = kernel, {}

    def __call__(self, keys, m, n_keep, absmask, limit, mask):
        if m not in self.by_m:
            self.by_m[m] = _constant_m(self.kernel, m)
        return self.by_m[m](keys, n_keep, absmask, limit, mask)


_rows_fixed_m = _FixedM(_rows)
_strided_fixed_m = _FixedM(_strided)
_rows_parallel_fixed_m = _FixedM(_rows_parallel)
_strided_parallel_fixed_m = _FixedM(_strided_parallel)


_KERNELS = {  # (strided, parallel, fixed m) -> kernel
    (False, False, False): _rows, (False, True, False): _rows_parallel,
    (True, False, False): _strided, (True, True, False): _strided_parallel,
    (False, False, True): _rows_fixed_m, (False, True, True): _rows_parallel_fixed_m,
    (True, False, True): _strided_fixed_m, (True, True, True): _strided_parallel_fixed_m,
}


def pick_kernel(shape, m):
    """The kernel for keys of ``shape`` (A, K, B): rows when B == 1, threads for large weights."""
    n_a, k, n_b = shape
    strided = n_b > 1
    parallel = n_a * k * n_b // m >= 2 * CHUNK and (not strided or n_a > 1)
    return _KERNELS[strided, parallel, m in SPECIALIZED_M]


def run_mask(keys, m, n_keep, absmask, limit, mask):
    """Mask of keys (A, K, B) into mask (A, K, B), groups of m along K; returns the inf/NaN count."""
    kernel = pick_kernel(keys.shape, m)
    if keys.shape[2] == 1:
        keys, mask = keys.reshape(-1), mask.reshape(-1)
    return int(kernel(keys, int(m), int(n_keep), absmask, limit, mask))
