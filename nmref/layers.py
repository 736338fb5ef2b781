"""Layers with hand-written backward passes: Linear, Conv1d/Conv2d (im2col), BatchNorm, ReLU, pooling,
Flatten, Sequential and a ResNet basic block.

Every layer: ``forward(x, train=True) -> y`` keeps what the backward needs; ``backward(dy) -> dx`` sets
(never adds to) each Param's ``.grad``; ``params()`` / ``named_params()``. Weight layers and Sequential
take ``backward(dy, input_grad=False)`` to skip dx where nobody needs it (the network's input).
A weight layer holds a dense weight W and a sparsity method: the forward uses W~ = method.masked(W), the
backward computes g = dL/dW~ with W~ and hands it to ``method.weight_grad(g, W)`` (DESIGN.md, data flow).

Convolutions work internally in channels-last memory (N, H, W, C): im2col is one strided copy, the
convolution one matmul, and the output is an NCHW view of channels-last memory, which the elementwise
layers after it keep (NumPy ufuncs follow the input's memory order).
"""
import math
import numbers

import numpy as np

from .backend import array_module, check_array, device_of, to_device
from .groups import check_layout
from .params import Param
from .sparsity import Dense


# ---------------------------------------------------------------- argument checks
def _pair(value, name, layer):
    is_int = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool)    # noqa: E731
    pair = (value, value) if is_int(value) else tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if len(pair) != 2 or not all(is_int(v) for v in pair):
        raise TypeError(f"{layer} {name} must be an int or a pair of ints, got {value!r}")
    return tuple(int(v) for v in pair)


def _check_geometry(layer, kernel, stride, padding):
    if min(kernel) < 1:
        raise ValueError(f"{layer} kernel_size={kernel} must be positive")
    if min(stride) < 1:
        raise ValueError(f"{layer} stride={stride} must be positive")
    if min(padding) < 0:
        raise ValueError(f"{layer} padding={padding} must be >= 0")


def _check_input(layer, x, ndim, layout, channels=None, dtype=None):
    check_array(x, "x")
    if x.ndim != ndim:
        raise ValueError(f"{layer} expects a {ndim}-D input {layout}, got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer} expected input with {channels} channels (x.shape[1]), got {x.shape[1]}")
    if dtype is not None and x.dtype != dtype:
        fix = f"cast the input (x.astype({dtype.name!r}))"
        if x.dtype in (np.float32, np.float64):
            fix += f" or build the layer with dtype={x.dtype.name!r}"
        raise TypeError(f"{layer} got input of dtype {x.dtype} but its weights are {dtype}; {fix}")


def _check_count(layer, name, value):
    """A feature / channel count: an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{layer} {name} must be an int >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{layer} {name}={value} must be >= 1")
    return int(value)


def _output_size(layer, size, kernel, stride, padding):
    padded = tuple(s + 2 * p for s, p in zip(size, padding))
    if any(k > s for k, s in zip(kernel, padded)):
        raise ValueError(f"{layer} kernel {kernel} is larger than the padded input {padded}; "
                         "use a smaller kernel or more padding")
    return tuple((s - k) // st + 1 for s, k, st in zip(padded, kernel, stride))


def _generator(rng):
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. nmref.rng(seed)) or an int seed, "
                        f"got {type(rng).__name__}")
    return rng


def _dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype={dtype} is not supported; use float32 (default) or float64")
    return dtype


# ---------------------------------------------------------------- functional cores
def _windows(x, kernel, stride):
    """Sliding windows of a channels-last (N, H, W, C) array as a view (N, Ho, Wo, kh, kw, C), NumPy or CuPy."""
    xp = array_module(x)
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = kernel, stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    s_n, s_h, s_w, s_c = x.strides
    return xp.lib.stride_tricks.as_strided(
        x, (n, ho, wo, kh, kw, c), (s_n, s_h * sh, s_w * sw, s_h, s_w, s_c))     # (N, Ho, Wo, kh, kw, C)


def _pad_channels_last(x, padding):
    """NCHW -> channels-last (N, Hp, Wp, C) with zero padding (a view when there is no padding)."""
    xp = array_module(x)
    x_nhwc = x.transpose(0, 2, 3, 1)                                              # (N, H, W, C)
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x_nhwc
    n, h, w, c = x_nhwc.shape
    padded = xp.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)              # (N, Hp, Wp, C)
    padded[:, ph:ph + h, pw:pw + w, :] = x_nhwc
    return padded


def conv2d_forward(x, w, b, stride=(1, 1), padding=(0, 0)):
    """y[n, o] = sum_{c, i, j} w[o, c, i, j] x_pad[n, c, s*h + i, s*w + j] + b[o], as one im2col matmul."""
    n, c, h, wd = x.shape
    cout, _, kh, kw = w.shape
    x_pad = _pad_channels_last(x, padding)                                        # (N, Hp, Wp, C)
    cols = _windows(x_pad, (kh, kw), stride)                                      # (N, Ho, Wo, kh, kw, C)
    ho, wo = cols.shape[1:3]
    cols = cols.reshape(n * ho * wo, kh * kw * c)                                 # (N*Ho*Wo, K)
    w_rows = w.transpose(0, 2, 3, 1).reshape(cout, kh * kw * c)                   # (Cout, K)
    y = cols @ w_rows.T                                                           # (N*Ho*Wo, Cout)
    if b is not None:
        y += b
    y = y.reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)                          # (N, Cout, Ho, Wo)
    return y, (x.shape, cols, w_rows, w.shape, stride, padding)


def _long_reduction_matmul(a, b):
    """a.T @ b for tall a (M, P), b (M, Q), M >> P, Q. Multi-threaded OpenBLAS is up to 10x slower on a
    loaded machine when the product has fewer rows than columns, so the taller orientation is computed."""
    if a.shape[1] >= b.shape[1]:
        return a.T @ b                                                            # (P, Q)
    return (b.T @ a).T                                                            # (P, Q)


def conv2d_backward(dy, cache, input_grad=True):
    """dx = col2im(dy @ w), dw = dy^T @ cols, db = sum of dy; col2im adds kh*kw shifted slices.
    ``input_grad=False`` skips dx (returned as None): the first layer of a network never needs it."""
    xp = array_module(dy)
    (n, c, h, wd), cols, w_rows, w_shape, (sh, sw), (ph, pw) = cache
    cout, _, kh, kw = w_shape
    ho, wo = dy.shape[2:]
    dy_rows = dy.transpose(0, 2, 3, 1).reshape(n * ho * wo, cout)                 # (N*Ho*Wo, Cout)
    dw = _long_reduction_matmul(cols, dy_rows)                                    # (K, Cout)
    dw = xp.ascontiguousarray(dw.reshape(kh, kw, c, cout).transpose(3, 2, 0, 1))  # (Cout, C, kh, kw)
    db = dy_rows.sum(axis=0)                                                      # (Cout,)
    if not input_grad:
        return None, dw, db
    dcols = (dy_rows @ w_rows).reshape(n, ho, wo, kh, kw, c)                      # (N, Ho, Wo, kh, kw, C)
    dx_pad = xp.zeros((n, h + 2 * ph, wd + 2 * pw, c), dtype=dy.dtype)            # (N, Hp, Wp, C)
    for i in range(kh):
        for j in range(kw):
            dx_pad[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :] += dcols[:, :, :, i, j, :]
    dx = dx_pad[:, ph:ph + h, pw:pw + wd, :].transpose(0, 3, 1, 2)               # (N, C, H, W)
    return dx, dw, db


def _window_slices(kernel, stride, out_size):
    """Index tuples of the kh*kw strided slices x[..., i::sh, j::sw] that make up the windows."""
    (kh, kw), (sh, sw), (ho, wo) = kernel, stride, out_size
    return [(Ellipsis, slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))
            for i in range(kh) for j in range(kw)]


def maxpool2d_forward(x, kernel, stride, layer="MaxPool2d"):
    """y = max over each window, as kh*kw elementwise maxima of strided slices."""
    xp = array_module(x)
    out_size = _output_size(layer, x.shape[2:], kernel, stride, (0, 0))
    slices = _window_slices(kernel, stride, out_size)
    y = xp.copy(x[slices[0]])                                                     # (N, C, Ho, Wo)
    for index in slices[1:]:
        xp.maximum(y, x[index], out=y)
    return y, (x, y, slices, kernel, stride)


def maxpool2d_backward(dy, cache):
    """dx gets dy at the first position (row-major in the window) equal to the maximum, as PyTorch."""
    xp = array_module(dy)
    x, y, slices, kernel, stride = cache
    ho, wo = y.shape[2:]
    overlapping = kernel[0] > stride[0] or kernel[1] > stride[1]
    covered = kernel == stride and x.shape[2:] == (ho * kernel[0], wo * kernel[1])
    dx = xp.empty_like(x) if covered else xp.zeros_like(x)                        # (N, C, H, W), x's memory order
    taken = None
    for k, index in enumerate(slices):
        hit = x[index] == y                                                       # (N, C, Ho, Wo)
        if taken is None:
            winner, taken = hit, xp.copy(hit)
        else:
            winner = hit & ~taken
            if k + 1 < len(slices):
                taken |= hit
        if overlapping:
            dx[index] += dy * winner
        else:
            xp.multiply(dy, winner, out=dx[index])
    return dx


# ---------------------------------------------------------------- layer base classes
class Layer:
    """A layer without parameters: forward / backward, and empty params and buffers."""

    _out_shape = None

    def _forwarded(self, y):
        """Remember the shape of the forward's output, which backward checks dy against; returns y."""
        self._out_shape = tuple(y.shape)
        return y

    def _check_dy(self, dy):
        """backward needs what the last forward kept, and dy = dL/dy of that forward's output."""
        name = type(self).__name__
        check_array(dy, "dy")
        if self._out_shape is None:
            raise RuntimeError(f"{name}.backward called before forward: run forward(x) first (backward uses what "
                               "the forward kept)")
        if tuple(dy.shape) != self._out_shape:
            raise ValueError(f"{name}.backward: dy has shape {tuple(dy.shape)}, but the last forward's output had "
                             f"{self._out_shape}; pass dL/dy of that output")

    def named_params(self):
        return {}

    def params(self):
        return list(self.named_params().values())

    def buffers(self):
        return {}

    def load_buffers(self, buffers):
        _check_buffer_keys(self, buffers)

    def named_children(self):
        return {}

    def to_device(self, device):
        for param in self.params():
            param.value = to_device(param.value, device)
            param.grad = to_device(param.grad, device)
            param.state = {k: to_device(v, device) for k, v in param.state.items()}
        return self

    def __repr__(self):
        return f"{type(self).__name__}()"


def _check_buffer_keys(layer, buffers):
    own, given = set(layer.buffers()), set(buffers)
    if own != given:
        raise KeyError(f"{type(layer).__name__}.load_buffers: missing {sorted(own - given)}, "
                       f"unexpected {sorted(given - own)}")


class WeightLayer(Layer):
    """A layer with a weight W (and optional bias) whose forward uses W~ = method.masked(W)."""

    def _init_weight(self, shape, bias, method, layout, rng, dtype):
        rng, dtype = _generator(rng), _dtype(dtype)
        fan_in = math.prod(shape[1:])
        bound = 1.0 / math.sqrt(fan_in)      # kaiming_uniform(a=sqrt(5)) and PyTorch's bias init share it
        self.weight = Param(rng.uniform(-bound, bound, shape).astype(dtype), "weight")
        self.bias = Param(rng.uniform(-bound, bound, shape[0]).astype(dtype), "bias") if bias else None
        check_layout(layout, len(shape))
        self.layout = layout
        if method is None:
            method = Dense
        if not callable(method):
            raise TypeError(f"method must be a factory (a zero-arg callable returning a fresh method, e.g. "
                            f"lambda: SRSTE(2, 4)), got a {type(method).__name__} instance; every weight "
                            "needs its own method instance")
        self.method = method().bind(self.weight, layout)

    @property
    def dtype(self):
        return self.weight.value.dtype

    def _set_grads(self, g, db):
        """Hands g = dL/dW~ to the method; its result is the gradient of the dense W."""
        self.weight.grad = self.method.weight_grad(g, self.weight.value)
        if self.bias is not None:
            self.bias.grad = db

    def named_params(self):
        named = {"weight": self.weight}
        if self.bias is not None:
            named["bias"] = self.bias
        for i, p in enumerate(self.method.params()):
            local = p.name.rsplit(".", 1)[-1] if p.name else f"method{i}"
            named[f"weight.{local}"] = p
        return named

    def to_device(self, device):
        super().to_device(device)
        if hasattr(self.method, "to_device"):
            self.method.to_device(device)
        return self


# ---------------------------------------------------------------- weight layers
class Linear(WeightLayer):
    """y = x W~^T + b; weight (out, in), x (B, in)."""

    def __init__(self, in_features, out_features, bias=True, method=None, layout="linear", *, rng,
                 dtype=np.float32):
        self.in_features = _check_count("Linear", "in_features", in_features)
        self.out_features = _check_count("Linear", "out_features", out_features)
        self._init_weight((self.out_features, self.in_features), bias, method, layout, rng, dtype)

    def forward(self, x, train=True):
        _check_input("Linear", x, 2, "(B, in_features)", self.in_features, self.dtype)
        w_t = self.method.masked(self.weight.value)                               # (out, in)
        y = x @ w_t.T                                                             # (B, out)
        if self.bias is not None:
            y += self.bias.value
        self._cache = (x, w_t)
        return self._forwarded(y)

    def backward(self, dy, input_grad=True):
        self._check_dy(dy)
        x, w_t = self._cache
        self._set_grads(dy.T @ x, dy.sum(axis=0))                                 # (out, in), (out,)
        return dy @ w_t if input_grad else None                                   # (B, in)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={self.bias is not None}, method={self.method!r})"


class Conv2d(WeightLayer):
    """y = conv(x, W~) + b, cross-correlation as PyTorch; weight (Cout, Cin, kh, kw), x (N, C, H, W)."""

    name = "Conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, method=None,
                 layout="conv", *, rng, dtype=np.float32):
        self.in_channels = _check_count(self.name, "in_channels", in_channels)
        self.out_channels = _check_count(self.name, "out_channels", out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", self.name)
        self.stride = _pair(stride, "stride", self.name)
        self.padding = _pair(padding, "padding", self.name)
        _check_geometry(self.name, self.kernel_size, self.stride, self.padding)
        self._init_weight((self.out_channels, self.in_channels, *self.kernel_size), bias, method, layout, rng, dtype)

    def forward(self, x, train=True):
        _check_input(self.name, x, 4, "(N, C, H, W)", self.in_channels, self.dtype)
        _output_size(self.name, x.shape[2:], self.kernel_size, self.stride, self.padding)
        w_t = self.method.masked(self.weight.value)                               # (Cout, Cin, kh, kw)
        b = None if self.bias is None else self.bias.value
        y, self._cache = conv2d_forward(x, w_t, b, self.stride, self.padding)
        return self._forwarded(y)                                                 # (N, Cout, Ho, Wo)

    def backward(self, dy, input_grad=True):
        self._check_dy(dy)
        dx, g, db = conv2d_backward(dy, self._cache, input_grad)
        self._set_grads(g, db)
        return dx                                                                 # (N, Cin, H, W)

    def __repr__(self):
        return (f"{self.name}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, method={self.method!r})")


class Conv1d(WeightLayer):
    """y = conv(x, W~) + b over one axis; weight (Cout, Cin, k), x (N, C, L); Conv2d with a height of 1."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, method=None,
                 layout="conv", *, rng, dtype=np.float32):
        for name, v in (("kernel_size", kernel_size), ("stride", stride), ("padding", padding)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"Conv1d {name} must be an int, got {v!r}")
        _check_geometry("Conv1d", (kernel_size,), (stride,), (padding,))
        self.in_channels = _check_count("Conv1d", "in_channels", in_channels)
        self.out_channels = _check_count("Conv1d", "out_channels", out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self._init_weight((self.out_channels, self.in_channels, self.kernel_size), bias, method, layout, rng, dtype)

    def forward(self, x, train=True):
        _check_input("Conv1d", x, 3, "(N, C, L)", self.in_channels, self.dtype)
        _output_size("Conv1d", x.shape[2:], (self.kernel_size,), (self.stride,), (self.padding,))
        w_t = self.method.masked(self.weight.value)                               # (Cout, Cin, k)
        b = None if self.bias is None else self.bias.value
        y, self._cache = conv2d_forward(x[:, :, None, :], w_t[:, :, None, :], b, (1, self.stride),
                                        (0, self.padding))
        return self._forwarded(y[:, :, 0, :])                                     # (N, Cout, Lo)

    def backward(self, dy, input_grad=True):
        self._check_dy(dy)
        dx, g, db = conv2d_backward(dy[:, :, None, :], self._cache, input_grad)
        self._set_grads(g[:, :, 0, :], db)
        return None if dx is None else dx[:, :, 0, :]                             # (N, Cin, L)

    def __repr__(self):
        return (f"Conv1d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, method={self.method!r})")


# ---------------------------------------------------------------- normalisation and activations
_EINSUM_AXES = {2: "nc", 3: "ncl", 4: "nchw"}        # per-channel sums over every axis but C: "nchw->c"


class BatchNorm(Layer):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta per channel (axis 1) of (N, C), (N, C, L) or (N, C, H, W).

    Training uses the batch statistics (biased variance) and updates the running ones as PyTorch:
    r = (1 - momentum) r + momentum * batch, with the unbiased variance; eval uses the running ones."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        for name, value in (("eps", eps), ("momentum", momentum)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"BatchNorm {name}={value!r} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"BatchNorm {name}={value} must be finite")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm momentum={momentum} must be in [0, 1]")
        if eps <= 0:
            raise ValueError(f"BatchNorm eps={eps} must be positive")
        dtype = _dtype(dtype)
        num_features = _check_count("BatchNorm", "num_features", num_features)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Param(np.ones(num_features, dtype=dtype), "weight")
        self.bias = Param(np.zeros(num_features, dtype=dtype), "bias")
        self.running_mean = np.zeros(num_features, dtype=dtype)
        self.running_var = np.ones(num_features, dtype=dtype)

    def forward(self, x, train=True):
        check_array(x, "x")
        if x.ndim not in (2, 3, 4):
            raise ValueError(f"BatchNorm expects a 2-D (N, C), 3-D (N, C, L) or 4-D (N, C, H, W) input, "
                             f"got shape {tuple(x.shape)}")
        _check_input("BatchNorm", x, x.ndim, "", self.num_features, self.weight.value.dtype)
        xp = array_module(x)
        axes = _EINSUM_AXES[x.ndim]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        count = x.size // x.shape[1]
        if train:
            if count < 2:
                raise ValueError(f"BatchNorm needs more than one value per channel in training, got input "
                                 f"shape {tuple(x.shape)}; use a larger batch or forward(x, train=False)")
            mean = xp.einsum(f"{axes}->c", x) / count                             # (C,)
            centred = x - mean.reshape(shape)
            var = xp.einsum(f"{axes},{axes}->c", centred, centred) / count        # (C,) biased
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mean
            self.running_var = (1 - m) * self.running_var + m * var * (count / (count - 1))
        else:
            mean, var = self.running_mean, self.running_var
            centred = x - mean.reshape(shape)
        inv_std = 1.0 / xp.sqrt(var + self.eps)                                   # (C,)
        scale = self.weight.value * inv_std                                       # (C,)
        y = centred * scale.reshape(shape)
        y += self.bias.value.reshape(shape)
        self._cache = (centred, inv_std, scale, axes, shape, count, train)
        return self._forwarded(y)

    def backward(self, dy):
        """x_hat = (x - mean) / sigma. Train: dx = gamma/sigma (dy - mean(dy) - x_hat mean(dy x_hat));
        eval: dx = gamma/sigma dy. dgamma = sum(dy x_hat), dbeta = sum(dy)."""
        self._check_dy(dy)
        xp = array_module(dy)
        centred, inv_std, scale, axes, shape, count, train = self._cache
        sum_dy = xp.einsum(f"{axes}->c", dy)                                      # (C,)
        sum_dy_centred = xp.einsum(f"{axes},{axes}->c", dy, centred)              # (C,)
        self.weight.grad, self.bias.grad = sum_dy_centred * inv_std, sum_dy
        dx = dy * scale.reshape(shape)
        if train:
            dx -= centred * (scale * inv_std * inv_std * sum_dy_centred / count).reshape(shape)
            dx -= (scale * sum_dy / count).reshape(shape)
        return dx

    def named_params(self):
        return {"weight": self.weight, "bias": self.bias}

    def buffers(self):
        return {"running_mean": self.running_mean, "running_var": self.running_var}

    def load_buffers(self, buffers):
        _check_buffer_keys(self, buffers)
        for key, value in buffers.items():
            own = getattr(self, key)
            check_array(value, key)
            if tuple(value.shape) != own.shape:
                raise ValueError(f"BatchNorm buffer {key} has shape {tuple(value.shape)}, expected {own.shape}")
            xp = array_module(value)
            if not bool(xp.isfinite(value).all()) or (key == "running_var" and bool((value < 0).any())):
                negative = " or negative variances" if key == "running_var" else ""
                raise ValueError(f"BatchNorm buffer {key} holds NaN, inf{negative}; the checkpoint it came from is "
                                 "damaged or from a diverged run")
            setattr(self, key, array_module(own).asarray(to_device(value, device_of(own)), dtype=own.dtype))

    def to_device(self, device):
        super().to_device(device)
        self.running_mean = to_device(self.running_mean, device)
        self.running_var = to_device(self.running_var, device)
        return self

    def __repr__(self):
        return f"BatchNorm({self.num_features})"


class ReLU(Layer):
    """y = max(x, 0); dx = dy where x > 0."""

    def forward(self, x, train=True):
        y = array_module(x).maximum(x, 0)
        self._positive = y > 0
        return self._forwarded(y)

    def backward(self, dy):
        self._check_dy(dy)
        return dy * self._positive


class MaxPool2d(Layer):
    """Max over kernel windows of (N, C, H, W), no padding, floor mode (PyTorch's defaults); stride = kernel."""

    def __init__(self, kernel_size, stride=None):
        self.kernel_size = _pair(kernel_size, "kernel_size", "MaxPool2d")
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", "MaxPool2d")
        _check_geometry("MaxPool2d", self.kernel_size, self.stride, (0, 0))

    def forward(self, x, train=True):
        _check_input("MaxPool2d", x, 4, "(N, C, H, W)")
        y, self._cache = maxpool2d_forward(x, self.kernel_size, self.stride)
        return self._forwarded(y)

    def backward(self, dy):
        self._check_dy(dy)
        return maxpool2d_backward(dy, self._cache)

    def __repr__(self):
        return f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride})"


class MaxPool1d(Layer):
    """Max over windows of (N, C, L); stride defaults to the kernel size."""

    def __init__(self, kernel_size, stride=None):
        stride = kernel_size if stride is None else stride
        for name, v in (("kernel_size", kernel_size), ("stride", stride)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"MaxPool1d {name} must be an int, got {v!r}")
        _check_geometry("MaxPool1d", (kernel_size,), (stride,), (0,))
        self.kernel_size, self.stride = int(kernel_size), int(stride)

    def forward(self, x, train=True):
        _check_input("MaxPool1d", x, 3, "(N, C, L)")
        y, self._cache = maxpool2d_forward(x[:, :, None, :], (1, self.kernel_size), (1, self.stride),
                                            "MaxPool1d")
        return self._forwarded(y[:, :, 0, :])

    def backward(self, dy):
        self._check_dy(dy)
        return maxpool2d_backward(dy[:, :, None, :], self._cache)[:, :, 0, :]

    def __repr__(self):
        return f"MaxPool1d(kernel_size={self.kernel_size}, stride={self.stride})"


class GlobalAvgPool(Layer):
    """(N, C, *spatial) -> (N, C): the mean over every spatial axis."""

    def forward(self, x, train=True):
        check_array(x, "x")
        if x.ndim < 3:
            raise ValueError(f"GlobalAvgPool expects (N, C, *spatial) with at least one spatial axis, "
                             f"got shape {tuple(x.shape)}")
        self._x_like = x
        return self._forwarded(x.mean(axis=tuple(range(2, x.ndim))))              # (N, C)

    def backward(self, dy):
        self._check_dy(dy)
        x = self._x_like
        dx = array_module(dy).empty_like(x)                                       # (N, C, *spatial)
        dx[...] = (dy / (x.size // (x.shape[0] * x.shape[1]))).reshape(dy.shape + (1,) * (x.ndim - 2))
        return dx


class Flatten(Layer):
    """(N, ...) -> (N, prod(...)) in C order (PyTorch's flatten of NCHW)."""

    def forward(self, x, train=True):
        check_array(x, "x")
        if x.ndim < 1:
            raise ValueError(f"Flatten expects (N, ...) with a batch axis, got shape {tuple(x.shape)}")
        self._shape = x.shape
        return self._forwarded(x.reshape(x.shape[0], -1))

    def backward(self, dy):
        self._check_dy(dy)
        return dy.reshape(self._shape)


# ---------------------------------------------------------------- containers
class Container(Layer):
    """A layer made of named child layers: parameters, buffers and device moves recurse into them."""

    def named_params(self):
        return {f"{name}.{key}": p for name, child in self.named_children().items()
                for key, p in child.named_params().items()}

    def buffers(self):
        return {f"{name}.{key}": b for name, child in self.named_children().items()
                for key, b in child.buffers().items()}

    def load_buffers(self, buffers):
        _check_buffer_keys(self, buffers)
        for name, child in self.named_children().items():
            prefix = name + "."
            child.load_buffers({k[len(prefix):]: v for k, v in buffers.items() if k.startswith(prefix)})

    def named_layers(self):
        """Every descendant layer by dotted name ("3", "3.conv1", ...)."""
        named = {}
        for name, child in self.named_children().items():
            named[name] = child
            if isinstance(child, Container):
                named.update({f"{name}.{k}": v for k, v in child.named_layers().items()})
        return named

    def layers_with_weights(self):
        return {name: layer for name, layer in self.named_layers().items() if isinstance(layer, WeightLayer)}

    def sparse_layers(self):
        """Weight layers whose method is not Dense, by dotted name."""
        return {name: layer for name, layer in self.layers_with_weights().items()
                if not isinstance(layer.method, Dense)}

    def to_device(self, device):
        for child in self.named_children().values():
            child.to_device(device)
        return self

    def _name_params(self):
        for name, p in self.named_params().items():
            p.name = name


class Sequential(Container):
    """Layers applied in order; ``train`` reaches every layer; names are the list positions."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if isinstance(layer, type):
                raise TypeError(f"Sequential argument {i} is the class {layer.__name__}, not a layer; "
                                f"pass an instance: {layer.__name__}(...)")
            if not hasattr(layer, "forward") or not hasattr(layer, "backward"):
                raise TypeError(f"Sequential argument {i} is a {type(layer).__name__}, not a layer")
        self.layers = list(layers)
        self._name_params()

    def named_children(self):
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def forward(self, x, train=True):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, input_grad=True):
        """dL/dx; ``input_grad=False`` returns None and lets a first weight layer skip computing it."""
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            if i == 0 and not input_grad and isinstance(layer, WeightLayer):
                return layer.backward(dy, input_grad=False)
            dy = layer.backward(dy)
        return dy if input_grad else None

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential({inner}\n)"


class ResidualBlock(Container):
    """ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convs without bias;
    the shortcut is the identity, or a 1x1 conv + BN when the stride or the channel count changes."""

    def __init__(self, in_channels, out_channels, stride=1, method=None, layout="conv", *, rng,
                 dtype=np.float32):
        rng = _generator(rng)
        in_channels = _check_count("ResidualBlock", "in_channels", in_channels)
        out_channels = _check_count("ResidualBlock", "out_channels", out_channels)
        conv = dict(bias=False, method=method, layout=layout, rng=rng, dtype=dtype)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, **conv)
        self.bn1 = BatchNorm(out_channels, dtype=dtype)
        self.relu1 = ReLU()
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, **conv)
        self.bn2 = BatchNorm(out_channels, dtype=dtype)
        self.relu_out = ReLU()
        self.has_projection = stride != 1 or in_channels != out_channels
        if self.has_projection:
            self.shortcut_conv = Conv2d(in_channels, out_channels, 1, stride, 0, **conv)
            self.shortcut_bn = BatchNorm(out_channels, dtype=dtype)
        self._name_params()

    def named_children(self):
        names = ["conv1", "bn1", "relu1", "conv2", "bn2", "relu_out"]
        if self.has_projection:
            names += ["shortcut_conv", "shortcut_bn"]
        return {name: getattr(self, name) for name in names}

    def forward(self, x, train=True):
        main = self.relu1.forward(self.bn1.forward(self.conv1.forward(x, train), train), train)
        main = self.bn2.forward(self.conv2.forward(main, train), train)
        shortcut = x
        if self.has_projection:
            shortcut = self.shortcut_bn.forward(self.shortcut_conv.forward(x, train), train)
        return self.relu_out.forward(main + shortcut, train)

    def backward(self, dy):
        d_sum = self.relu_out.backward(dy)
        d_main = self.conv2.backward(self.bn2.backward(d_sum))
        dx = self.conv1.backward(self.bn1.backward(self.relu1.backward(d_main)))
        if self.has_projection:
            return dx + self.shortcut_conv.backward(self.shortcut_bn.backward(d_sum))
        return dx + d_sum

    def __repr__(self):
        return (f"ResidualBlock({self.conv1.in_channels}, {self.conv1.out_channels}, stride={self.conv1.stride[0]}, "
                f"method={self.conv1.method!r})")
