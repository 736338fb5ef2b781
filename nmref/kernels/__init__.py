"""Fast kernels, imported lazily: ``import nmref`` never imports Numba or CuPy or compiles anything.

``load(name)`` imports one kernel module on first use; ``bit_keys`` is the shared trick of the mask
kernels: |w| compared exactly as unsigned integers (the float bits with the sign bit cleared).
"""
import functools
import importlib

import numpy as np

BACKENDS = ("numba", "cupy")
_MODULE_NAMES = {"numba": "numba_cpu", "cupy": "cupy_gpu"}
_KEY_DTYPES = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_modules = {}


def load(name):
    """The kernel module for ``name`` ("numba" or "cupy"); ImportError when its library is missing."""
    if name not in BACKENDS:
        raise ValueError(f"kernel backend {name!r} is not one of {BACKENDS}")
    if name not in _modules:
        _modules[name] = importlib.import_module(f".{_MODULE_NAMES[name]}", __name__)
    return _modules[name]


def available(name):
    """True when ``load(name)`` succeeds."""
    try:
        load(name)
        return True
    except ImportError:
        return False


@functools.lru_cache(maxsize=None)
def key_constants(dtype):
    """(unsigned key dtype, absmask, limit) for a float dtype: key = bits & absmask, key >= limit: inf/NaN."""
    dtype = np.dtype(dtype)
    key = _KEY_DTYPES[dtype.itemsize]
    absmask = key(np.iinfo(key).max >> 1)
    limit = np.array(np.inf, dtype=dtype).view(key)[()]
    return key, absmask, limit
