"""Array-module selection, host/device transfer and seeded generators.

Every public function works out ``xp`` from its inputs; there is no global switch. CuPy is imported only
when a CuPy array is already in play or a device transfer is asked for, so ``import nmref`` never needs it.
"""
import sys
from collections.abc import Mapping

import numpy as np

DEVICES = ("cpu", "gpu")


def array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (the CuPy idiom, without importing CuPy)."""
    if "cupy" in sys.modules:
        cupy = sys.modules["cupy"]
        if any(isinstance(a, cupy.ndarray) for a in arrays):
            return cupy
    return np


def is_gpu_array(x):
    return array_module(x) is not np


def check_array(x, name="w"):
    """Raise TypeError unless ``x`` is a NumPy or CuPy array (lists and torch tensors are not)."""
    if not isinstance(x, np.ndarray) and not is_gpu_array(x):
        kind = type(x).__name__ if type(x).__module__ == "builtins" else f"{type(x).__module__}.{type(x).__name__}"
        raise TypeError(f"{name} is a {kind}; pass a NumPy or CuPy array (np.asarray({name}); for a torch "
                        "tensor: t.numpy())")


def check_state(state, owner, keys=()):
    """``state`` must be a mapping holding ``keys``, as ``owner.state_dict()`` returned it."""
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner}.load_state_dict takes the dict {owner}.state_dict() returned, got a "
                        f"{type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise KeyError(f"{owner}.load_state_dict: missing {missing}; pass what {owner}.state_dict() returned (a "
                       "checkpoint of another method or nmref version?)")


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError("device='gpu' needs CuPy: pip install -e '.[gpu]' on a machine with a CUDA GPU") from exc
    return cupy


def gpu_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def to_device(x, device="cpu"):
    """Move an array to ``device`` ("cpu" -> NumPy, "gpu" -> CuPy); a no-op when it is already there."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not one of {DEVICES}")
    if device == "cpu":
        return to_host(x)
    return _cupy().asarray(x)


def to_host(x):
    """A NumPy array with the same values (copies from the GPU when needed)."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def device_of(x):
    return "gpu" if is_gpu_array(x) else "cpu"


def rng(seed):
    """The host generator every random draw starts from: same seed, same numbers on CPU and GPU runs."""
    if not isinstance(seed, np.random.Generator) and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"seed={seed!r} must be an int >= 0 (or a numpy Generator)")
    return np.random.default_rng(seed)
