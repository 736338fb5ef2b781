"""Datasets as arrays, and a seeded batch iterator.

``load(name, path=None, fast=None)`` returns ``Dataset(x_train, y_train, x_test, y_test)``: x float32
channels-first, y int64, x normalised per channel with the training set's mean and std.
  "mnist1d"  MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package's generator (never its
             download) and cached as .npz under $NMREF_CACHE or ~/.cache/nmref. x (N, 40) is given as
             (N, 1, 40): one channel of length 40, the input of a Conv1d. Default 50000 samples = 40000
             train + 10000 test; NMREF_FAST=1 gives 2000 + 500. ``path``: an .npz with x, y, x_test, y_test
             (the cache format) instead of generating.
  "mnist"    MNIST from ``path``: a folder with the four IDX files (train-images-idx3-ubyte.gz, ...; .gz or
             not) or an ``mnist.npz`` with x_train, y_train, x_test, y_test. x (N, 1, 28, 28).
  "cifar10"  CIFAR-10 from ``path``: the ``cifar-10-batches-py`` folder (data_batch_1..5, test_batch) or
             its parent. x (N, 3, 32, 32).
"""
import gzip
import hashlib
import json
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .backend import array_module, check_array


def _check_int(name, value, low):
    """An int argument >= low (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name}={value} must be >= {low}")

DATASETS = ("mnist1d", "mnist", "cifar10")
MNIST1D_SAMPLES = 50000
MNIST1D_FAST_SAMPLES = 2500
MNIST_FILES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
               "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}
IDX_MAGIC = {"images": 2051, "labels": 2049}
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


class Dataset(NamedTuple):
    x_train: np.ndarray      # (N, C, *spatial) float32
    y_train: np.ndarray      # (N,) int64
    x_test: np.ndarray       # (N_test, C, *spatial) float32
    y_test: np.ndarray       # (N_test,) int64


class DataError(ValueError):
    """A dataset file is missing or not in the expected format; the message names the file."""


def fast_mode():
    """True when NMREF_FAST=1 (tests, CI notebooks, the tiny figure run)."""
    return os.environ.get("NMREF_FAST", "0") not in ("", "0")


def cache_dir():
    """$NMREF_CACHE, else ~/.cache/nmref (created on first use)."""
    root = os.environ.get("NMREF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nmref")
    return Path(root)


def load(name, path=None, fast=None, normalize=True):
    """``Dataset(x_train, y_train, x_test, y_test)`` for ``name`` in DATASETS (module docstring)."""
    if name not in DATASETS:
        raise ValueError(f"dataset={name!r} is not one of {DATASETS}")
    fast = fast_mode() if fast is None else fast
    if name == "mnist1d":
        data = load_mnist1d(fast=fast) if path is None else load_npz(path, keys=("x", "y", "x_test", "y_test"))
        if data.x_train.ndim == 2:
            data = Dataset(data.x_train[:, None, :], data.y_train, data.x_test[:, None, :], data.y_test)
    elif path is None:
        raise ValueError(f"dataset={name!r} needs a path to its files (--data-path); only 'mnist1d' is "
                         "generated locally")
    elif name == "mnist":
        data = load_mnist(path)
    else:
        data = load_cifar10(path)
    return normalized(data) if normalize else data


def first_samples(data, n_train=0, n_test=0):
    """The first ``n_train`` training and ``n_test`` test samples (0: all). MNIST-1D is generated shuffled,
    so these are random subsets; normalisation statistics stay those of the full training set."""
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a Dataset (from nmref.data.load), got {type(data).__name__}")
    for name, n, have in (("train_samples", n_train, len(data.y_train)), ("test_samples", n_test, len(data.y_test))):
        _check_int(name, n, 0)
        if n > have:
            raise ValueError(f"{name}={n} is more than the {have} samples the dataset has; use 0 for all")
    train, test = slice(n_train or None), slice(n_test or None)
    return Dataset(data.x_train[train], data.y_train[train], data.x_test[test], data.y_test[test])


def normalized(data):
    """x -> (x - mean) / std per channel, mean and std of the training set (Eq.: x_c = (x_c - mu_c) / s_c)."""
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a Dataset (from nmref.data.load), got {type(data).__name__}")
    axes = (0, *range(2, data.x_train.ndim))
    mean = data.x_train.mean(axis=axes, keepdims=True, dtype=np.float64)        # (1, C, 1...)
    std = data.x_train.std(axis=axes, keepdims=True, dtype=np.float64) + 1e-8   # (1, C, 1...)
    scale = lambda x: ((x - mean) / std).astype(np.float32)                     # noqa: E731
    return Dataset(scale(data.x_train), data.y_train, scale(data.x_test), data.y_test)


# ---- MNIST-1D: generated locally, cached -------------------------------------------------------------
def mnist1d_args(num_samples=None, seed=42, fast=None):
    """The ``mnist1d`` generator's default arguments with our sample count and seed."""
    from mnist1d.data import get_dataset_args
    fast = fast_mode() if fast is None else fast
    args = get_dataset_args(as_dict=True)
    args.pop("url")
    if num_samples is None:
        num_samples = MNIST1D_FAST_SAMPLES if fast else MNIST1D_SAMPLES
    _check_int("num_samples", num_samples, 10)                    # the generator makes num_samples // 10 per class
    args["num_samples"] = num_samples
    args["seed"] = seed
    return args


def load_mnist1d(num_samples=None, seed=42, fast=None):
    """MNIST-1D x (N, 40), made by ``mnist1d.data.make_dataset`` once, then read from the .npz cache."""
    args = mnist1d_args(num_samples, seed, fast)
    key = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    file = cache_dir() / f"mnist1d_n{args['num_samples']}_seed{seed}_{key}.npz"
    if file.exists():
        try:
            return load_npz(file, keys=("x", "y", "x_test", "y_test"))
        except DataError:
            pass                                        # a damaged cache entry is regenerated
    arrays = generate_mnist1d(args)
    save_npz_atomic(file, **arrays)
    return Dataset(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"])


def generate_mnist1d(args):
    """Run the package's generator; it seeds NumPy's and Python's global RNGs, which we restore after."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        made = make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": made["x"].astype(np.float32), "y": made["y"].astype(np.int64),
            "x_test": made["x_test"].astype(np.float32), "y_test": made["y_test"].astype(np.int64)}


def save_npz_atomic(file, **arrays):
    """np.savez to a temporary file in the same folder, then os.replace: readers never see half a file."""
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, file)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_npz(file, keys):
    """``Dataset`` from an .npz holding ``keys`` in the order x_train, y_train, x_test, y_test."""
    file = Path(file)
    if not file.is_file():
        what = "is a folder, not a file" if file.is_dir() else "no such file"
        raise DataError(f"{file}: {what}; expected an .npz with arrays {', '.join(keys)}")
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(f"{file}: missing arrays {missing}; expected keys {list(keys)}, found {npz.files}")
            arrays = [npz[k] for k in keys]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{file}: not a readable .npz ({exc}); expected arrays {', '.join(keys)}") from exc
    x_train, y_train, x_test, y_test = arrays
    for (x, y), (x_key, y_key) in zip(((x_train, y_train), (x_test, y_test)), (keys[:2], keys[2:])):
        if len(x) != len(y):
            raise DataError(f"{file}: {x_key} has {len(x)} inputs but {y_key} has {len(y)} labels")
        if x.dtype.kind not in "biuf" or not np.isfinite(x).all():
            raise DataError(f"{file}: {x_key} must hold finite real numbers (dtype {x.dtype}"
                            f"{'' if x.dtype.kind not in 'biuf' else ', NaN or inf found'}); clean the inputs")
        if y.ndim != 1 or y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not (y == np.round(y)).all()) \
                or (y.size and y.min() < 0):
            raise DataError(f"{file}: {y_key} must be a 1-D array of class indices 0, 1, 2, ... (got dtype "
                            f"{y.dtype}, shape {y.shape}); one-hot labels: y.argmax(axis=1)")
    return Dataset(x_train.astype(np.float32), y_train.astype(np.int64),
                   x_test.astype(np.float32), y_test.astype(np.int64))


# ---- MNIST: IDX files or mnist.npz -------------------------------------------------------------------
def load_mnist(path):
    """MNIST x (N, 1, 28, 28) in [0, 1] from the four IDX files or an mnist.npz (module docstring)."""
    path = Path(path)
    if path.is_dir() and not any(_idx_file(path, f) for f in MNIST_FILES.values()) and (path / "mnist.npz").is_file():
        path = path / "mnist.npz"
    if path.is_file():
        data = load_npz(path, keys=("x_train", "y_train", "x_test", "y_test"))
        for split, x in (("x_train", data.x_train), ("x_test", data.x_test)):
            if x.shape[1:] != (28, 28):
                raise DataError(f"{path}: {split} has shape {x.shape}; expected (N, 28, 28) images")
        scale = 255.0 if data.x_train.max() > 1.0 else 1.0
        return Dataset(data.x_train[:, None] / np.float32(scale), data.y_train,
                       data.x_test[:, None] / np.float32(scale), data.y_test)
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; expected a folder with the four MNIST IDX files "
                        f"({', '.join(f + '.gz' for f in MNIST_FILES.values())}) or an mnist.npz")
    arrays = {}
    for key, stem in MNIST_FILES.items():
        file = _idx_file(path, stem)
        if file is None:
            raise DataError(f"{path / (stem + '.gz')}: no such file; MNIST needs the four IDX files "
                            f"{', '.join(f + '.gz' for f in MNIST_FILES.values())} (gzipped or not) in {path}")
        arrays[key] = read_idx(file, "images" if key.startswith("x") else "labels")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y):
            raise DataError(f"{path}: {split} has {len(x)} images but {len(y)} labels")
    as_x = lambda a: (a[:, None] / np.float32(255)).astype(np.float32)          # noqa: E731
    return Dataset(as_x(arrays["x_train"]), arrays["y_train"].astype(np.int64),
                   as_x(arrays["x_test"]), arrays["y_test"].astype(np.int64))


def _idx_file(folder, stem):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(file, kind):
    """An IDX file (LeCun's MNIST format, big-endian header): images (N, rows, cols) or labels (N,) uint8."""
    file = Path(file)
    opener = gzip.open if file.suffix == ".gz" else open
    try:
        with opener(file, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{file}: cannot read ({exc}); expected a gzipped IDX file") from exc
    ndim = 3 if kind == "images" else 1
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{file}: {len(raw)} bytes is shorter than the IDX header ({header} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic != IDX_MAGIC[kind]:
        raise DataError(f"{file}: magic number {magic}, expected {IDX_MAGIC[kind]} for IDX {kind} "
                        f"(uint8, {ndim}-D)")
    dims = [int.from_bytes(raw[4 * (i + 1): 4 * (i + 2)], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(f"{file}: header says shape {tuple(dims)} = {expected} bytes of data, found "
                        f"{len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


# ---- CIFAR-10: python pickle batches -----------------------------------------------------------------
class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays, lists, dicts and strings only: a CIFAR batch cannot run arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batch(file):
    """One CIFAR-10 batch: x (n, 3, 32, 32) uint8, y (n,) int64."""
    file = Path(file)
    if not file.is_file():
        raise DataError(f"{file}: no such file; CIFAR-10 needs cifar-10-batches-py/ with "
                        f"{', '.join(CIFAR_TRAIN)} and {CIFAR_TEST} (the python version of the dataset)")
    try:
        with open(file, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as exc:
        raise DataError(f"{file}: not a CIFAR-10 python pickle batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{file}: expected a dict with keys b'data' and b'labels', got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{file}: missing keys; expected b'data' and b'labels', found {sorted(batch)}")
    x, y = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or x.dtype != np.uint8:
        raise DataError(f"{file}: data has shape {x.shape} dtype {x.dtype}; expected (n, 3072) uint8")
    if y.shape != (len(x),):
        raise DataError(f"{file}: {len(y)} labels for {len(x)} images")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def load_cifar10(path):
    """CIFAR-10 x (N, 3, 32, 32) in [0, 1] from the cifar-10-batches-py folder (or its parent)."""
    path = Path(path)
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    if not path.is_dir():
        raise DataError(f"{path}: no such folder; expected cifar-10-batches-py/ with "
                        f"{', '.join(CIFAR_TRAIN)} and {CIFAR_TEST}")
    train = [read_cifar_batch(path / name) for name in CIFAR_TRAIN]
    x_test, y_test = read_cifar_batch(path / CIFAR_TEST)
    x_train = np.concatenate([x for x, _ in train])                             # (50000, 3, 32, 32)
    y_train = np.concatenate([y for _, y in train])                             # (50000,)
    as_x = lambda a: (a / np.float32(255)).astype(np.float32)                   # noqa: E731
    return Dataset(as_x(x_train), y_train, as_x(x_test), y_test)


# ---- batches ------------------------------------------------------------------------------------------
def batches(x, y, batch_size, shuffle=True, rng=None, drop_last=False):
    """(x_batch, y_batch) pairs; a shuffle draws one permutation from ``rng`` (a np.random.Generator)."""
    _check_int("batch_size", batch_size, 1)
    check_array(x, "x")
    check_array(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if shuffle and rng is None:
        raise ValueError("shuffle=True needs rng (a np.random.Generator, e.g. nmref.rng(seed)) so runs repeat")
    if shuffle and not hasattr(rng, "permutation"):
        raise TypeError(f"rng must be a np.random.Generator (e.g. nmref.rng(seed)), got {type(rng).__name__}")
    n = len(x)
    stop = n - n % batch_size if drop_last else n
    if not shuffle:
        for start in range(0, stop, batch_size):
            yield x[start: start + batch_size], y[start: start + batch_size]
        return
    xp = array_module(x)
    order = rng.permutation(n)                                                  # (N,)
    for start in range(0, stop, batch_size):
        idx = xp.asarray(order[start: start + batch_size])                      # (B,)
        yield x[idx], y[idx]


def num_batches(n, batch_size, drop_last=False):
    _check_int("n", n, 0)
    _check_int("batch_size", batch_size, 1)
    return n // batch_size if drop_last else -(-n // batch_size)
