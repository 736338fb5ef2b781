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
def _rows_composite(keys, m, n_keep, absmask, limit, mask):
    """As ``_rows`` for 32-bit keys and large m: composite keys (key << bits(m)) | i are distinct and order
    like the rule (ties: higher index ranks above), so one compare per pair and the loop over i vectorizes."""
    shift = np.uint64(1)
    while (1 << shift) < m:
        shift += np.uint64(1)
    composite = np.empty(m, np.uint64)
    nonfinite = 0
    for g in range(keys.shape[0] // m):
        base = g * m
        for i in range(m):
            k = keys[base + i] & absmask
            nonfinite += k >= limit
            composite[i] = (np.uint64(k) << shift) | np.uint64(i)
        for j in range(m):
            cj = composite[j]
            above = 0
            for i in range(m):
                above += composite[i] > cj
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
def _rows_composite_parallel(keys, m, n_keep, absmask, limit, mask):
    n_groups = keys.shape[0] // m
    n_chunks = (n_groups + CHUNK - 1) // CHUNK
    nonfinite = 0
    for c in nb.prange(n_chunks):
        lo = c * CHUNK * m
        hi = min(n_groups, (c + 1) * CHUNK) * m
        nonfinite += _rows_composite(keys[lo:hi], m, n_keep, absmask, limit, mask[lo:hi])
    return nonfinite


@nb.njit(cache=True, parallel=True)
def _strided_parallel(keys, m, n_keep, absmask, limit, mask):
    n_a, k, n_b = keys.shape
    per_task = max(1, CHUNK // max(1, (k // m) * n_b))                 # output channels per task
    n_tasks = (n_a + per_task - 1) // per_task
    nonfinite = 0
    for t in nb.prange(n_tasks):
        lo = t * per_task
        hi = min(n_a, lo + per_task)
        nonfinite += _strided(keys[lo:hi], m, n_keep, absmask, limit, mask[lo:hi])
    return nonfinite


@nb.njit(cache=True)
def _rows_fixed_m(keys, m, n_keep, absmask, limit, mask):
    return _rows(keys, nb.literally(m), n_keep, absmask, limit, mask)


@nb.njit(cache=True)
def _rows_composite_fixed_m(keys, m, n_keep, absmask, limit, mask):
    return _rows_composite(keys, nb.literally(m), n_keep, absmask, limit, mask)


@nb.njit(cache=True)
def _strided_fixed_m(keys, m, n_keep, absmask, limit, mask):
    return _strided(keys, nb.literally(m), n_keep, absmask, limit, mask)


@nb.njit(cache=True)
def _rows_parallel_fixed_m(keys, m, n_keep, absmask, limit, mask):
    return _rows_parallel(keys, nb.literally(m), n_keep, absmask, limit, mask)


@nb.njit(cache=True)
def _rows_composite_parallel_fixed_m(keys, m, n_keep, absmask, limit, mask):
    return _rows_composite_parallel(keys, nb.literally(m), n_keep, absmask, limit, mask)


@nb.njit(cache=True)
def _strided_parallel_fixed_m(keys, m, n_keep, absmask, limit, mask):
    return _strided_parallel(keys, nb.literally(m), n_keep, absmask, limit, mask)


_KERNELS = {  # (kind, parallel, fixed m) -> kernel
    ("rows", False, False): _rows, ("rows", True, False): _rows_parallel,
    ("rows", False, True): _rows_fixed_m, ("rows", True, True): _rows_parallel_fixed_m,
    ("composite", False, False): _rows_composite, ("composite", True, False): _rows_composite_parallel,
    ("composite", False, True): _rows_composite_fixed_m, ("composite", True, True): _rows_composite_parallel_fixed_m,
    ("strided", False, False): _strided, ("strided", True, False): _strided_parallel,
    ("strided", False, True): _strided_fixed_m, ("strided", True, True): _strided_parallel_fixed_m,
}


_FIXED_M = {kernel for (_, _, fixed), kernel in _KERNELS.items() if fixed}


def pick_kernel(shape, m, key_dtype=np.uint32):
    """The kernel for keys of ``shape`` (A, K, B): rows when B == 1 (composite keys for 32-bit keys and
    m > 8), strided otherwise; threads for large weights."""
    n_a, k, n_b = shape
    if n_b > 1:
        kind = "strided"
    else:
        kind = "composite" if np.dtype(key_dtype).itemsize <= 4 and m > 8 else "rows"
    parallel = n_a * k * n_b // m >= 2 * CHUNK and (kind != "strided" or n_a > 1)
    return _KERNELS[kind, parallel, m in SPECIALIZED_M]


_ENTRY_POINTS = {}


def _call(kernel, keys, m, n_keep, absmask, limit, mask):
    """Call ``kernel``; a fixed-m kernel through its compiled entry point for Literal[int](m), since calling
    a numba.literally dispatcher from Python re-resolves the literal on every call (milliseconds)."""
    if kernel not in _FIXED_M:
        return kernel(keys, m, n_keep, absmask, limit, mask)
    flags = keys.flags, mask.flags                  # C-contiguous by construction; typeof is slow, so key
    key = (kernel, m, keys.dtype, keys.ndim, flags[0].writeable, flags[0].aligned, flags[1].aligned)
    entry = _ENTRY_POINTS.get(key)
    if entry is None:
        sig = (nb.typeof(keys), nb.types.literal(m), nb.types.int64, nb.typeof(absmask), nb.typeof(limit),
               nb.typeof(mask))
        entry = _ENTRY_POINTS[key] = kernel.compile(sig)
    return entry(keys, m, n_keep, absmask, limit, mask)


def run_mask(keys, m, n_keep, absmask, limit, mask):
    """Mask of keys (A, K, B) into mask (A, K, B), groups of m along K; returns the inf/NaN count."""
    kernel = pick_kernel(keys.shape, m, keys.dtype)
    if keys.shape[2] == 1:
        keys, mask = keys.reshape(-1), mask.reshape(-1)
    return int(_call(kernel, keys, int(m), int(n_keep), absmask, limit, mask))
