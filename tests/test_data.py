"""Data: MNIST-1D generation and cache, MNIST / CIFAR-10 loaders on tiny files in the real formats, batches."""
import gzip
import os
import pickle
import random

import numpy as np
import pytest

from nmref import data


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NMREF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- MNIST-1D ----------------------------------------------------------------------------------------
def test_mnist1d_shapes_dtypes_and_normalisation(cache):
    ds = data.load("mnist1d", fast=True)
    assert ds.x_train.shape == (2000, 1, 40) and ds.x_test.shape == (500, 1, 40)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert abs(float(ds.x_train.mean())) < 1e-5 and abs(float(ds.x_train.std()) - 1) < 1e-4


def test_mnist1d_cached_once_and_reloaded_identically(cache, monkeypatch):
    first = data.load("mnist1d", fast=True)
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and not list(cache.glob("*.tmp"))

    def no_generation(args):
        raise AssertionError("the second load must read the cache")
    monkeypatch.setattr(data, "generate_mnist1d", no_generation)
    second = data.load("mnist1d", fast=True)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_mnist1d_cache_key_follows_generation_args(cache):
    data.load_mnist1d(num_samples=300, seed=1)
    data.load_mnist1d(num_samples=300, seed=2)
    a, b = data.load_mnist1d(num_samples=300, seed=1), data.load_mnist1d(num_samples=300, seed=2)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not np.array_equal(a.x_train, b.x_train)


def test_mnist1d_generation_leaves_global_rngs_alone(cache):
    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(7)
    random.seed(7)
    data.load_mnist1d(num_samples=200, seed=3)
    assert np.random.rand() == expected_np and random.random() == expected_py


def test_damaged_cache_is_regenerated(cache):
    good = data.load_mnist1d(num_samples=200, seed=5)
    (file,) = cache.glob("*.npz")
    file.write_bytes(b"not an npz")
    again = data.load_mnist1d(num_samples=200, seed=5)
    np.testing.assert_array_equal(good.x_train, again.x_train)


def test_mnist1d_from_a_given_npz(cache, tmp_path):
    made = data.load_mnist1d(num_samples=200, seed=9)
    np.savez(tmp_path / "mine.npz", x=made.x_train, y=made.y_train, x_test=made.x_test, y_test=made.y_test)
    ds = data.load("mnist1d", path=tmp_path / "mine.npz", normalize=False)
    assert ds.x_train.shape == (160, 1, 40)
    np.testing.assert_array_equal(ds.x_test[:, 0], made.x_test)
    np.savez(tmp_path / "bad.npz", x=made.x_train, y=made.y_train)
    with pytest.raises(data.DataError, match=r"bad.npz: missing arrays \['x_test', 'y_test'\]"):
        data.load("mnist1d", path=tmp_path / "bad.npz")
    with pytest.raises(data.DataError, match=r": is a folder, not a file; expected an .npz with arrays x, y"):
        data.load("mnist1d", path=tmp_path)


@pytest.mark.parametrize("change, match", [
    (lambda a: a.update(y=a["y"][:-1]), "x has 160 inputs but y has 159 labels"),
    (lambda a: a["x_test"].__setitem__((3, 5), np.nan), "x_test must hold finite real numbers.*NaN or inf"),
    (lambda a: a.update(x=a["x"].astype(str)), "x must hold finite real numbers"),
    (lambda a: a.update(y=a["y"] + 0.5), "y must be a 1-D array of class indices"),
    (lambda a: a.update(y_test=-a["y_test"] - 1), "y_test must be a 1-D array of class indices"),
    (lambda a: a.update(y=np.eye(10)[a["y"]]), r"y must be .*shape \(160, 10\).*y.argmax\(axis=1\)"),
])
def test_a_given_npz_with_bad_contents_is_refused(cache, tmp_path, change, match):
    """Labels that astype(int64) would truncate or wrap, NaN inputs: refused at load, not as a later
    'diverged' or label error."""
    made = data.load_mnist1d(num_samples=200, seed=9)
    arrays = {"x": made.x_train.copy(), "y": made.y_train.copy(), "x_test": made.x_test.copy(),
              "y_test": made.y_test.copy()}
    np.savez(tmp_path / "fine.npz", **{k: (v.astype(np.float64) if k[0] == "y" else v) for k, v in arrays.items()})
    assert data.load("mnist1d", path=tmp_path / "fine.npz").y_train.dtype == np.int64    # integral floats are fine
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(data.DataError, match=match):
        data.load("mnist1d", path=tmp_path / "bad.npz")


def test_fast_mode_follows_environment(monkeypatch):
    monkeypatch.setenv("NMREF_FAST", "1")
    assert data.fast_mode() and data.mnist1d_args()["num_samples"] == data.MNIST1D_FAST_SAMPLES
    monkeypatch.setenv("NMREF_FAST", "0")
    assert not data.fast_mode() and data.mnist1d_args()["num_samples"] == data.MNIST1D_SAMPLES


# ---- MNIST -------------------------------------------------------------------------------------------
def write_idx(file, array, magic):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(file, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist1d_sample_count_and_normalized_input_are_checked(cache):
    with pytest.raises(ValueError, match="num_samples=9 must be >= 10"):     # mnist1d: "need at least one array"
        data.load_mnist1d(num_samples=9)
    with pytest.raises(TypeError, match="data must be a Dataset"):
        data.normalized([1, 2])


def test_readers_take_a_plain_string_path(tmp_path):
    write_idx(tmp_path / "labels.gz", np.arange(7), 2049)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "labels.gz"), "labels"), np.arange(7))
    with pytest.raises(data.DataError, match="no such file"):
        data.read_cifar_batch(str(tmp_path / "data_batch_1"))


def make_mnist_idx(folder, n_train=12, n_test=5, seed=0):
    r = np.random.default_rng(seed)
    arrays = {"x_train": r.integers(0, 256, (n_train, 28, 28)), "y_train": r.integers(0, 10, n_train),
              "x_test": r.integers(0, 256, (n_test, 28, 28)), "y_test": r.integers(0, 10, n_test)}
    folder.mkdir(exist_ok=True)
    for key, stem in data.MNIST_FILES.items():
        write_idx(folder / (stem + ".gz"), arrays[key], 2051 if key.startswith("x") else 2049)
    return arrays


def test_mnist_idx_files_load(tmp_path):
    arrays = make_mnist_idx(tmp_path / "mnist")
    ds = data.load("mnist", path=tmp_path / "mnist", normalize=False)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (5, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[:, 0], arrays["x_train"] / 255, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, arrays["y_train"])


def test_mnist_npz_loads_like_idx(tmp_path):
    arrays = make_mnist_idx(tmp_path / "mnist")
    np.savez(tmp_path / "mnist.npz", **{k: v.astype(np.uint8) for k, v in arrays.items()})
    from_idx = data.load("mnist", path=tmp_path / "mnist")
    from_npz = data.load("mnist", path=tmp_path / "mnist.npz")
    for a, b in zip(from_idx, from_npz):
        np.testing.assert_array_equal(a, b)


def test_mnist_normalised_per_channel_with_train_statistics(tmp_path):
    make_mnist_idx(tmp_path / "mnist")
    raw = data.load("mnist", path=tmp_path / "mnist", normalize=False)
    ds = data.load("mnist", path=tmp_path / "mnist")
    mean, std = raw.x_train.mean(dtype=np.float64), raw.x_train.std(dtype=np.float64)
    np.testing.assert_allclose(ds.x_test, (raw.x_test - mean) / std, rtol=1e-5, atol=1e-5)


def test_mnist_wrong_magic_names_file_and_expected_magic(tmp_path):
    make_mnist_idx(tmp_path / "mnist")
    bad = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    write_idx(bad, np.zeros(12), 2051)
    with pytest.raises(data.DataError, match=r"train-labels-idx1-ubyte.gz.*magic number 2051, expected 2049"):
        data.load("mnist", path=tmp_path / "mnist")


def test_mnist_truncated_idx_is_reported(tmp_path):
    make_mnist_idx(tmp_path / "mnist")
    file = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(file.read_bytes())
    file.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte.gz.*shape \(5, 28, 28\)"):
        data.load("mnist", path=tmp_path / "mnist")


def test_mnist_missing_file_is_named(tmp_path):
    make_mnist_idx(tmp_path / "mnist")
    os.remove(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz: no such file"):
        data.load("mnist", path=tmp_path / "mnist")


def test_mnist_label_count_mismatch(tmp_path):
    make_mnist_idx(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(11), 2049)
    with pytest.raises(data.DataError, match="train has 12 images but 11 labels"):
        data.load("mnist", path=tmp_path / "mnist")


def test_mnist_npz_missing_key_and_bad_shape(tmp_path):
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28)), y_train=np.zeros(2))
    with pytest.raises(data.DataError, match=r"mnist.npz: missing arrays \['x_test', 'y_test'\]"):
        data.load("mnist", path=tmp_path / "mnist.npz")
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 784)), y_train=np.zeros(2),
             x_test=np.zeros((1, 784)), y_test=np.zeros(1))
    with pytest.raises(data.DataError, match=r"x_train has shape \(2, 784\); expected \(N, 28, 28\)"):
        data.load("mnist", path=tmp_path / "mnist.npz")


def test_path_required_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="needs a path"):
        data.load("cifar10")
    with pytest.raises(data.DataError, match="no such file or folder"):
        data.load("mnist", path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is not one of"):
        data.load("imagenet")


# ---- CIFAR-10 ----------------------------------------------------------------------------------------
def make_cifar(folder, n=4, seed=0):
    r = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name in (*data.CIFAR_TRAIN, data.CIFAR_TEST):
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in r.integers(0, 10, n)],
                 b"data": r.integers(0, 256, (n, 3072)).astype(np.uint8), b"filenames": [b"x.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        made[name] = batch
    return made


def test_cifar10_batches_load(tmp_path):
    made = make_cifar(tmp_path / "cifar-10-batches-py")
    ds = data.load("cifar10", path=tmp_path, normalize=False)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    first = made["data_batch_1"][b"data"][0].reshape(3, 32, 32) / 255
    np.testing.assert_allclose(ds.x_train[0], first, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, made["test_batch"][b"labels"])
    normed = data.load("cifar10", path=tmp_path / "cifar-10-batches-py")
    np.testing.assert_allclose(normed.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(normed.x_train.std(axis=(0, 2, 3)), 1, atol=1e-4)


def test_cifar10_missing_batch_and_bad_shape(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    os.remove(folder / "data_batch_3")
    with pytest.raises(data.DataError, match="data_batch_3: no such file"):
        data.load("cifar10", path=folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}, f)
    with pytest.raises(data.DataError, match=r"data_batch_3: data has shape \(4, 1024\).*expected \(n, 3072\)"):
        data.load("cifar10", path=folder)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"pixels": np.zeros((4, 3072), np.uint8)}, f)
    with pytest.raises(data.DataError, match="data_batch_3: missing keys"):
        data.load("cifar10", path=folder)


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": os.getcwd, b"labels": []}, f)
    with pytest.raises(data.DataError, match="test_batch: not a CIFAR-10 python pickle batch.*refusing"):
        data.load("cifar10", path=folder)


# ---- batches -----------------------------------------------------------------------------------------
def test_batches_cover_everything_once_and_keep_last_partial():
    x, y = np.arange(10, dtype=np.float32)[:, None], np.arange(10)
    got = list(data.batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0)))
    assert [len(b) for b, _ in got] == [4, 4, 2]
    seen = np.concatenate([yb for _, yb in got])
    assert sorted(seen) == list(range(10)) and not np.array_equal(seen, np.arange(10))
    for xb, yb in got:
        np.testing.assert_array_equal(xb[:, 0], yb)
    assert data.num_batches(10, 4) == 3 and data.num_batches(10, 4, drop_last=True) == 2


def test_batches_drop_last_and_in_order():
    x, y = np.arange(10)[:, None], np.arange(10)
    assert [len(b) for b, _ in data.batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0),
                                             drop_last=True)] == [4, 4]
    ordered = np.concatenate([yb for _, yb in data.batches(x, y, 3, shuffle=False)])
    np.testing.assert_array_equal(ordered, y)


def test_batches_same_seed_same_order():
    x, y = np.zeros((50, 1)), np.arange(50)
    a = [yb for _, yb in data.batches(x, y, 8, rng=np.random.default_rng(3))]
    b = [yb for _, yb in data.batches(x, y, 8, rng=np.random.default_rng(3))]
    c = [yb for _, yb in data.batches(x, y, 8, rng=np.random.default_rng(4))]
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_batches_bad_arguments():
    x, y = np.zeros((5, 1)), np.zeros(5)
    with pytest.raises(ValueError, match="needs rng"):
        next(data.batches(x, y, 2))
    with pytest.raises(ValueError, match="batch_size=0"):
        next(data.batches(x, y, 0, shuffle=False))
    with pytest.raises(ValueError, match="5 samples but y has 4"):
        next(data.batches(x, y[:4], 2, shuffle=False))


def test_sample_counts_and_batch_sizes_must_be_ints_in_range():
    x, y = np.ones((10, 1, 2), np.float32), np.arange(10)
    dataset = data.Dataset(x, y, x[:4], y[:4])
    with pytest.raises(ValueError, match="train_samples=-3 must be >= 0"):
        data.first_samples(dataset, -3)                       # was: all but the last 3 samples
    with pytest.raises(TypeError, match="test_samples must be an int >= 0, got 2.5"):
        data.first_samples(dataset, 0, 2.5)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        data.num_batches(10, 0)                               # was: ZeroDivisionError
    with pytest.raises(ValueError, match="batch_size=-3 must be >= 1"):
        data.num_batches(10, -3)                              # was: -3
    with pytest.raises(TypeError, match="batch_size must be an int >= 1, got 2.5"):
        list(data.batches(x, y, 2.5, shuffle=False))
    with pytest.raises(TypeError, match="rng must be a np.random.Generator"):
        list(data.batches(x, y, 2, rng=0))
    with pytest.raises(TypeError, match="x is a list"):
        list(data.batches(x.tolist(), y, 2, rng=np.random.default_rng(0)))
