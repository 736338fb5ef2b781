"""Small models: an MLP, 1D and 2D CNNs and CIFAR-style ResNets, with a sparsity method on chosen layers.

``build_model(name, sparsity=make_method("srste", "2:4"))`` builds the model dense from the seed, then gives
every weight layer a fresh method instance from the factory, except (as the SR-STE recipe and NVIDIA ASP do)
the last Linear (``sparse_last=True`` makes it sparse too) and any layer whose grouped axis is not divisible
by M, e.g. a first conv with Cin = 1 or 3 (``strict_sparse=True`` raises instead). ``model.describe()``
lists every weight layer with its shape, layout and method. The same seed gives the same initial weights
whatever the method, so runs of different methods start from the same network.

  mlp      Flatten, Linear(in, 256), ReLU, Linear(256, 256), ReLU, Linear(256, classes)
  cnn1d    for MNIST-1D (1, 40): Conv1d(1, 32, 5) and two Conv1d(k=3, stride 2) to 64 channels, each with
           BatchNorm + ReLU, then Flatten and Linear(64 * 10, classes): about 25k parameters
  cnn2d    for (C, 32, 32) or (C, 28, 28): three Conv2d 3x3 (32, 64, 128 channels) + BN + ReLU, max-pools
           between them, global average pool, Linear(128, classes)
  resnet8 / resnet20   CIFAR ResNets (He et al. 2016): 3x3 stem to 16 channels, 3 stages of 1 or 3 basic
           blocks (16, 32, 64 channels), global average pool, Linear(64, classes)
"""
import math

import numpy as np

from . import backend

from .groups import LAYOUTS, divisors, grouped_axis_length
from .layers import (BatchNorm, Conv1d, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d, ReLU,
                     ResidualBlock, Sequential)
from .sparsity import Dense

MODELS = ("mlp", "cnn1d", "cnn2d", "resnet8", "resnet20")
DEFAULT_INPUT = {"mlp": (1, 40), "cnn1d": (1, 40), "cnn2d": (3, 32, 32), "resnet8": (3, 32, 32),
                 "resnet20": (3, 32, 32)}
CONV_LAYOUTS = tuple(layout for layout in LAYOUTS if layout != "linear")


class Model(Sequential):
    """A Sequential that remembers its name and why each weight layer is sparse or dense."""

    def __init__(self, name, layers, input_shape, num_classes):
        super().__init__(*layers)
        self.name, self.input_shape, self.num_classes = name, tuple(input_shape), num_classes
        self.notes = {}

    def weight_layers(self):
        """Every layer with a weight (Linear, Conv1d, Conv2d, inside blocks too), by dotted name."""
        return self.layers_with_weights()

    def layer_table(self):
        """One dict per weight layer: name, kind, shape, layout, method, sparse, parameters, note."""
        rows = []
        for name, layer in self.weight_layers().items():
            rows.append({"name": name, "kind": type(layer).__name__, "shape": tuple(layer.weight.value.shape),
                         "layout": layer.layout, "method": repr(layer.method),
                         "sparse": not isinstance(layer.method, Dense),
                         "params": int(layer.weight.value.size), "note": self.notes.get(name, "")})
        return rows

    def describe(self):
        """Text table of the weight layers: which are sparse, with which method and layout, and why not."""
        rows = self.layer_table()
        header = ("layer", "kind", "weight shape", "layout", "method", "note")
        lines = [header] + [(r["name"], r["kind"], "x".join(map(str, r["shape"])), r["layout"], r["method"],
                             r["note"]) for r in rows]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        text = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in lines]
        sparse = sum(r["params"] for r in rows if r["sparse"])
        total_params = sum(p.value.size for p in self.params() if p.group == "weights")
        text.append(f"{self.name}: {total_params} trainable weights, {sparse} of them in "
                    f"{sum(r['sparse'] for r in rows)} sparse layers")
        return "\n".join(line.rstrip() for line in text)


def build_model(name, sparsity=None, sparse_last=False, layout="conv", rng=0, dtype=np.float32,
                input_shape=None, num_classes=10, strict_sparse=False):
    """Model ``name`` (MODELS) for inputs (C, *spatial) = ``input_shape``; ``sparsity`` a method factory
    (``make_method(...)``; None = dense); ``layout`` the conv grouping ("conv" = NHWC, or "nchw_flatten")."""
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not one of {MODELS}")
    if layout not in CONV_LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {CONV_LAYOUTS} (Linear layers always group along "
                         "their input features)")
    input_shape = tuple(DEFAULT_INPUT[name] if input_shape is None else input_shape)
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} must be an int >= 2")
    rng = backend.rng(rng)                                             # an int seed or a Generator
    builder = {"mlp": _mlp, "cnn1d": _cnn1d, "cnn2d": _cnn2d, "resnet8": _resnet, "resnet20": _resnet}[name]
    layers = builder(name, input_shape, num_classes, layout, rng, np.dtype(dtype))
    model = Model(name, layers, input_shape, num_classes)
    sparsify(model, sparsity, sparse_last, strict_sparse)
    return model


def sparsify(model, sparsity, sparse_last=False, strict_sparse=False):
    """Give each eligible weight layer of ``model`` a fresh method from the factory ``sparsity`` (module
    docstring); record the reason for each dense layer in ``model.notes``."""
    weight_layers = model.weight_layers()
    last = list(weight_layers)[-1]
    probe = None if sparsity is None else sparsity()
    for name, layer in weight_layers.items():
        if probe is None or isinstance(probe, Dense):
            continue
        shape = tuple(layer.weight.value.shape)
        if name == last and not sparse_last:
            model.notes[name] = "dense: last layer (sparse_last=False, the SR-STE recipe)"
            continue
        reason = _unfit_reason(shape, layer.layout, probe)
        if reason:
            if strict_sparse:
                raise ValueError(f"layer {name} ({type(layer).__name__} weight {shape}) cannot be made "
                                 f"{probe.n}:{probe.m}: {reason}; pass strict_sparse=False to keep it dense")
            model.notes[name] = f"dense: {reason}"
            continue
        layer.method = sparsity().bind(layer.weight, layer.layout)
    if probe is not None and not isinstance(probe, Dense) and not model.sparse_layers():
        raise ValueError(_nothing_sparse(model, probe, last, sparse_last))
    for full_name, p in model.named_params().items():
        p.name = full_name
    return model


def _nothing_sparse(model, probe, last, sparse_last):
    """Why no layer of ``model`` took ``probe``'s pattern, and which m would fit (a run would train dense)."""
    pattern = f"{probe.n}:{probe.m}"
    candidates = {n: l for n, l in model.weight_layers().items() if n != last or sparse_last}
    if not candidates:
        return (f"no layer can take the pattern {pattern}: the only weight layer, {last}, is the last one; "
                "pass sparse_last=True (--sparse-last)")
    axes = {grouped_axis_length(l.weight.value.shape, l.layout) for l in candidates.values()}
    fits = tuple(sorted({m for k in axes for m in divisors(k) if m >= probe.n}))
    advice = f"choose m in {fits}" if fits else f"no m >= n={probe.n} fits these layers: use another model"
    return (f"no layer can take the pattern {pattern}: no weight layer's grouped axis is divisible by m={probe.m} "
            f"(the run would train a dense model); {advice} and see which layers take it with "
            "nmref train --describe (model.describe())")


def _unfit_reason(shape, layout, probe):
    """Why ``probe``'s N:M groups do not fit a weight of ``shape`` in ``layout`` ("" when they do)."""
    m = probe.m
    if getattr(probe, "straddle", False):
        size = math.prod(shape)
        return "" if size % m == 0 else f"weight size {size} is not divisible by m={m}"
    k = grouped_axis_length(shape, layout)
    axis = "in_features" if layout == "linear" else ("Cin" if layout == "conv" else "Cin*kernel")
    return "" if k % m == 0 else f"{axis}={k} is not divisible by m={m}"


def _conv_block(conv, channels, dtype):
    return [conv, BatchNorm(channels, dtype=dtype), ReLU()]


def _mlp(name, input_shape, num_classes, layout, rng, dtype):
    features = math.prod(input_shape)
    return [Flatten(), Linear(features, 256, rng=rng, dtype=dtype), ReLU(),
            Linear(256, 256, rng=rng, dtype=dtype), ReLU(), Linear(256, num_classes, rng=rng, dtype=dtype)]


def _cnn1d(name, input_shape, num_classes, layout, rng, dtype):
    if len(input_shape) != 2:
        raise ValueError(f"cnn1d takes inputs (C, L), got input_shape={input_shape}")
    channels, length = input_shape
    conv = dict(bias=False, layout=layout, rng=rng, dtype=dtype)
    layers = (_conv_block(Conv1d(channels, 32, 5, 1, 2, **conv), 32, dtype)
              + _conv_block(Conv1d(32, 64, 3, 2, 1, **conv), 64, dtype)
              + _conv_block(Conv1d(64, 64, 3, 2, 1, **conv), 64, dtype))
    out_length = (((length - 1) // 2 + 1) - 1) // 2 + 1
    return layers + [Flatten(), Linear(64 * out_length, num_classes, rng=rng, dtype=dtype)]


def _cnn2d(name, input_shape, num_classes, layout, rng, dtype):
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise ValueError(f"cnn2d takes images (C, H, W) with H, W >= 4, got input_shape={input_shape}")
    conv = dict(bias=False, layout=layout, rng=rng, dtype=dtype)
    return (_conv_block(Conv2d(input_shape[0], 32, 3, 1, 1, **conv), 32, dtype) + [MaxPool2d(2)]
            + _conv_block(Conv2d(32, 64, 3, 1, 1, **conv), 64, dtype) + [MaxPool2d(2)]
            + _conv_block(Conv2d(64, 128, 3, 1, 1, **conv), 128, dtype)
            + [GlobalAvgPool(), Linear(128, num_classes, rng=rng, dtype=dtype)])


def _resnet(name, input_shape, num_classes, layout, rng, dtype):
    if len(input_shape) != 3:
        raise ValueError(f"{name} takes images (C, H, W), got input_shape={input_shape}")
    blocks_per_stage = {"resnet8": 1, "resnet20": 3}[name]
    conv = dict(layout=layout, rng=rng, dtype=dtype)
    layers = _conv_block(Conv2d(input_shape[0], 16, 3, 1, 1, bias=False, **conv), 16, dtype)
    channels = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(ResidualBlock(channels, width, stride, **conv))
            channels = width
    return layers + [GlobalAvgPool(), Linear(64, num_classes, rng=rng, dtype=dtype)]

