"""Losses against torch.nn.functional (values and gradients) and their input checks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nmref.losses import accuracy, mse_loss, softmax_cross_entropy

TOL = {np.float64: 1e-12, np.float32: 1e-6}


def rel_err(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.35, 1.0])
def test_cross_entropy_matches_torch(label_smoothing, dtype, rng):
    for batch, classes in [(1, 2), (7, 10), (32, 3)]:
        logits = (rng.standard_normal((batch, classes)) * 5 + 40).astype(dtype)   # large offset: needs the shift
        labels = rng.integers(0, classes, batch)
        loss, dlogits = softmax_cross_entropy(logits, labels, label_smoothing)
        zt = torch.from_numpy(logits).requires_grad_()
        loss_t = F.cross_entropy(zt, torch.from_numpy(labels), label_smoothing=label_smoothing)
        loss_t.backward()
        assert loss.dtype == dtype and dlogits.dtype == dtype and dlogits.shape == logits.shape
        assert rel_err(loss, loss_t.item()) < TOL[dtype]
        assert rel_err(dlogits, zt.grad.numpy()) < TOL[dtype]


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 800.0, 800.0]])
    loss, dlogits = softmax_cross_entropy(logits, np.array([0, 1]))
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    np.testing.assert_allclose(float(loss), np.log(2) / 2, rtol=1e-14)


def test_cross_entropy_gradient_matches_finite_differences(rng):
    logits, labels = rng.standard_normal((4, 5)), rng.integers(0, 5, 4)
    _, analytic = softmax_cross_entropy(logits, labels, 0.2)
    numeric = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[i] = 1e-6
        numeric[i] = (float(softmax_cross_entropy(logits + step, labels, 0.2)[0])
                      - float(softmax_cross_entropy(logits - step, labels, 0.2)[0])) / 2e-6
    assert rel_err(analytic, numeric) < 1e-6


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_cross_entropy_rejects_non_finite_logits(bad, rng):
    logits = rng.standard_normal((3, 4))
    logits[1, 2] = bad
    with pytest.raises(ValueError, match="logits contains NaN or inf"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]))


def test_cross_entropy_rejects_bad_labels_and_shapes(rng):
    logits = rng.standard_normal((3, 4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*\[0, 4\]"):
        softmax_cross_entropy(logits, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\).*\[-1, 2\]"):
        softmax_cross_entropy(logits, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match="one class index per row"):
        softmax_cross_entropy(logits, np.array([0, 1]))
    with pytest.raises(TypeError, match="labels must be integer"):
        softmax_cross_entropy(logits, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="logits must be 2-D"):
        softmax_cross_entropy(logits[0], np.array([0]))
    with pytest.raises(TypeError, match="logits must be floating point"):
        softmax_cross_entropy(np.ones((3, 4), dtype=np.int64), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="label_smoothing=1.5 must be in"):
        softmax_cross_entropy(logits, np.array([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="batch size 0"):
        softmax_cross_entropy(np.zeros((0, 4)), np.zeros(0, dtype=np.int64))


def test_accuracy_counts_argmax_hits(rng):
    logits = rng.standard_normal((50, 7))
    labels = rng.integers(0, 7, 50)
    expected = (torch.from_numpy(logits).argmax(1) == torch.from_numpy(labels)).double().mean().item()
    assert accuracy(logits, labels) == expected
    assert accuracy(logits, logits.argmax(1)) == 1.0
    with pytest.raises(ValueError, match="labels must lie in"):
        accuracy(logits, labels + 7)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_mse_matches_torch(dtype, rng):
    y, target = rng.standard_normal((2, 3, 4)).astype(dtype), rng.standard_normal((2, 3, 4)).astype(dtype)
    loss, dy = mse_loss(y, target)
    yt = torch.from_numpy(y).requires_grad_()
    loss_t = F.mse_loss(yt, torch.from_numpy(target))
    loss_t.backward()
    assert rel_err(loss, loss_t.item()) < TOL[dtype]
    assert rel_err(dy, yt.grad.numpy()) < TOL[dtype]


def test_mse_rejects_mismatched_inputs(rng):
    with pytest.raises(ValueError, match="y has shape .* but target has"):
        mse_loss(np.zeros((2, 3)), np.zeros((3,)))
    with pytest.raises(TypeError, match="cast target to float32"):
        mse_loss(np.zeros(3, np.float32), np.zeros(3))


def test_lists_and_bad_options_raise_naming_the_argument():
    logits, labels = np.zeros((2, 3), np.float32), np.array([0, 1])
    with pytest.raises(TypeError, match="logits is a list"):
        softmax_cross_entropy(logits.tolist(), labels)
    with pytest.raises(TypeError, match="labels is a list"):
        accuracy(logits, [0, 1])
    with pytest.raises(TypeError, match="label_smoothing='0.1' must be a number"):
        softmax_cross_entropy(logits, labels, "0.1")
    with pytest.raises(TypeError, match="y is a list"):
        mse_loss([1.0], np.ones(1))
    with pytest.raises(ValueError, match="y is empty"):
        mse_loss(np.ones(0), np.ones(0))
