"""Losses returning (loss, gradient with respect to their input), and accuracy."""
import math
import numbers

from .backend import array_module, check_array


def _check_logits_labels(logits, labels):
    check_array(logits, "logits")
    check_array(labels, "labels")
    xp = array_module(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (batch, classes), got shape {tuple(logits.shape)}")
    if logits.dtype.kind != "f":
        raise TypeError(f"logits must be floating point, got dtype {logits.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be 1-D with one class index per row of logits ({logits.shape[0]}), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if logits.shape[0] == 0:
        raise ValueError("logits is empty (batch size 0)")
    if not bool(xp.isfinite(logits).all()):
        raise ValueError("logits contains NaN or inf; the training diverged (lower the learning rate) or the "
                         "input holds NaN")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= logits.shape[1]:
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}) for {logits.shape[1]} classes, "
                         f"got values in [{low}, {high}]")


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean over the batch of -sum_k q_k log softmax(z)_k, q = (1 - eps) onehot(y) + eps / K
    (torch.nn.functional.cross_entropy); returns (loss, dL/dz = (softmax(z) - q) / B).

    logits (B, K) float, labels (B,) int. The loss is a 0-d array of the logits' dtype (float(loss) for a number)."""
    if (isinstance(label_smoothing, bool) or not isinstance(label_smoothing, numbers.Real)
            or not math.isfinite(label_smoothing)):
        raise TypeError(f"label_smoothing={label_smoothing!r} must be a number in [0, 1]")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1]")
    _check_logits_labels(logits, labels)
    xp = array_module(logits)
    batch, classes = logits.shape
    rows = xp.arange(batch)
    shifted = logits - logits.max(axis=1, keepdims=True)                          # (B, K)
    exp = xp.exp(shifted)                                                         # (B, K)
    sum_exp = exp.sum(axis=1, keepdims=True)                                      # (B, 1)
    log_probs = shifted - xp.log(sum_exp)                                         # (B, K)
    nll = -log_probs[rows, labels]                                                # (B,)
    loss = (1.0 - label_smoothing) * nll.mean()
    if label_smoothing:
        loss = loss + label_smoothing * (-log_probs.mean(axis=1)).mean()
    dlogits = exp / sum_exp                                                       # (B, K) softmax
    if label_smoothing:
        dlogits -= label_smoothing / classes
    dlogits[rows, labels] -= 1.0 - label_smoothing
    dlogits /= batch
    return loss, dlogits


def accuracy(logits, labels):
    """Fraction of rows whose arg-max logit is the label (a Python float)."""
    _check_logits_labels(logits, labels)
    return float((logits.argmax(axis=1) == labels).mean())


def mse_loss(y, target):
    """mean((y - t)^2) over every element; returns (loss, dL/dy = 2 (y - t) / y.size)."""
    check_array(y, "y")
    check_array(target, "target")
    if y.shape != target.shape:
        raise ValueError(f"mse_loss: y has shape {tuple(y.shape)} but target has {tuple(target.shape)}; "
                         "they must match (no broadcasting)")
    if y.dtype != target.dtype:
        raise TypeError(f"mse_loss: y is {y.dtype} but target is {target.dtype}; cast target to {y.dtype}")
    if y.size == 0:
        raise ValueError(f"mse_loss: y is empty (shape {tuple(y.shape)}); the mean of no elements is undefined")
    diff = y - target
    return (diff * diff).mean(), diff * (2.0 / diff.size)
