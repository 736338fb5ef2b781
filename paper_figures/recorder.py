"""What a figure run keeps beyond the metrics log, read from the run's final checkpoint and from LBC hooks.

- history: the per-epoch metrics rows, plus "sad_final" / "sad_final_frac" (each epoch's last mask vs the
  final mask) from the checkpoint's SAD tracker (``SADTracker.vs_final``).
- arrays: "param/<name>" every parameter, "mask/<layer>" each sparse layer's final mask, "method/<layer>/<key>"
  the methods' state, and for LBC "lbc/<layer>/alive" (alive combinations per group), "lbc/<layer>/scores"
  (the first ``SCORE_GROUPS`` groups' scores) and, for the first LBC layer, "lbc/<layer>/weight", each
  stacked over the epoch starts plus the end of training (E + 1 snapshots, ``LBC.on_epoch`` wrapped).
"""
import contextlib

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
            "alive": alive.sum(axis=1).astype(np.int32),                           # (G,)
            "scores": to_host(method.scores.value[:SCORE_GROUPS]).astype(np.float32),  # (g, C)
            "weight": to_host(method.weight.value).astype(np.float32)})

    def arrays(self):
        """npz entries "lbc/<layer>/<what>", stacked over epoch starts plus the end of training (E + 1)."""
        out = {}
        for i, method in enumerate(self.methods):
            self.take(method)                                                      # after training
            name = layer_of(method.weight.name)
            for key in ("alive", "scores", "weight") if i == 0 else ("alive", "scores"):
                out[f"lbc/{name}/{key}"] = np.stack([s[key] for s in self.epochs[id(method)]])
        return out


def layer_of(param_name):
    return param_name[: -len(".weight")] if param_name.endswith(".weight") else param_name


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


def section(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def from_checkpoint(file, history):
    """(history with sad_final columns, arrays, sparse layer table) from a run's final checkpoint."""
    from nmref.sad import SADTracker
    from nmref.train import read_checkpoint
    arrays, meta = read_checkpoint(file)
    layers = {row["name"]: {"weight": f"{row['name']}.weight", "layout": row["layout"], "method": row["method"]}
              for row in meta["layers"] if row["sparse"]}
    out = {f"param/{k}": v for k, v in section(arrays, "param/").items()}
    out.update({f"mask/{layer}": arrays[f"mask/{layer}.weight"] for layer in layers})
    out.update({f"method/{k}": v for k, v in section(arrays, "method/").items()})
    history = [dict(row) for row in history]
    sad_state = section(arrays, "sad/")
    if sad_state and bool(sad_state["started"]):
        tracker = SADTracker()
        tracker.load_state_dict(sad_state)
        for row, final in zip(history, tracker.vs_final()):
            row.update({k: v for k, v in final.items() if k != "epoch"})
    return history, out, layers
