"""What a figure run keeps beyond the metrics log: final weights and masks, and per-epoch LBC snapshots.

LBC snapshots are taken at the start of every epoch (``LBC.on_epoch``, wrapped while a run is recorded)
and once after training: each LBC layer's alive combinations per group, its scores for the first
``SCORE_GROUPS`` groups, and the dense weight of the first LBC layer.
"""
import contextlib
import json
from pathlib import Path

import numpy as np

from nmref.backend import to_host

SCORE_GROUPS = 32


class Snapshots:
    def __init__(self):
        self.methods = []                                   # LBC instances in creation order
        self.epochs = {}                                    # id(method) -> list of snapshot dicts

    def take(self, method):
        if id(method) not in self.epochs:
            self.methods.append(method)
            self.epochs[id(method)] = []
        alive = to_host(method.current_alive())                                    # (G, C) bool
        self.epochs[id(method)].append({
            "alive": alive.sum(axis=1).astype(np.uint8 if method.c < 256 else np.int32),   # (G,)
            "scores": to_host(method.scores.value[:SCORE_GROUPS]).astype(np.float32),      # (g, C)
            "weight": to_host(method.weight.value).astype(np.float32)})

    def arrays(self, result):
        """npz entries "lbc/<layer>/<what>" stacked over epoch starts plus the end of training (E + 1)."""
        names = {id(layer.method): name for name, layer in model_of(result).sparse_layers().items()}
        out = {}
        for i, method in enumerate(self.methods):
            self.take(method)                                                      # after training
            name = names.get(id(method), f"lbc{i}")
            keys = ("alive", "scores", "weight") if i == 0 else ("alive", "scores")
            for key in keys:
                out[f"lbc/{name}/{key}"] = np.stack([s[key] for s in self.epochs[id(method)]])
        return out


@contextlib.contextmanager
def recording():
    """Wrap LBC.on_epoch so every LBC layer of the runs trained inside is snapshot at each epoch start."""
    from nmref.lbc import LBC
    snapshots = Snapshots()
    original = LBC.on_epoch

    def on_epoch(self, epoch, epochs):
        original(self, epoch, epochs)
        snapshots.take(self)

    LBC.on_epoch = on_epoch
    try:
        yield snapshots
    finally:
        LBC.on_epoch = original


def model_of(result):
    return result.model


def history_of(result, run_dir):
    """Per-epoch metric rows: the result's history, else the run's metrics.jsonl."""
    rows = getattr(result, "history", None)
    if rows is None:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    return [{k: _plain(v) for k, v in row.items()} for row in rows]


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def final_arrays(result):
    """"param/<name>" for every parameter and "mask/<layer>" for every sparse layer, on the host."""
    model = model_of(result)
    out = {f"param/{name}": to_host(p.value) for name, p in model.named_params().items()}
    for name, layer in model.sparse_layers().items():
        if layer.method.mask is not None:
            out[f"mask/{name}"] = to_host(layer.method.mask)
    return out


def layer_info(result):
    """{layer: {"weight": param name, "layout": ..., "method": repr}} for the sparse layers, in order."""
    model = model_of(result)
    params = {id(p): name for name, p in model.named_params().items()}
    return {name: {"weight": params[id(layer.weight)], "layout": layer.layout, "method": repr(layer.method)}
            for name, layer in model.sparse_layers().items()}
