"""Sparse Architecture Divergence, SAD(E_a, E_b) = ||E_a XOR E_b||_0 (Zhou et al. 2021; docs/algorithms.md section 4).

``SADTracker`` follows the masks of a training run and reports, per layer and for the whole network:
  sad_step    step-to-step flips summed over the epoch: SAD between the forward masks of consecutive
              optimizer steps (the first step of the run is compared with the masks given to ``start``)
  sad_epoch   this epoch's last forward mask vs the previous epoch's last (epoch 0: vs the initial masks)
  sad_init    this epoch's last forward mask vs the initial masks
  sad_final   (``vs_final``, after training) each epoch's last forward mask vs the final masks
Each comes with a ``_frac`` twin: the count over the number of weights compared (for sad_step: weights x
steps, i.e. the mean fraction of weights flipping per step). Per-layer keys are "<metric>/<layer>".
"""
import numpy as np

from .backend import array_module, check_array, check_state, to_host
from .groups import check_shape


def _check_mask(mask, name):
    if not hasattr(mask, "dtype") or mask.dtype != bool:
        raise TypeError(f"{name} must be a boolean mask (True = kept), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}; build it with nm_mask or `w != 0`")


def flips(mask_a, mask_b):
    """Number of positions where two same-shape boolean masks differ; a device scalar on CuPy (no sync)."""
    _check_mask(mask_a, "mask_a")
    _check_mask(mask_b, "mask_b")
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"masks of different shapes {tuple(mask_a.shape)} and {tuple(mask_b.shape)}: "
                         "SAD compares the same weight at two moments")
    if array_module(mask_a) is not array_module(mask_b):
        raise TypeError("mask_a and mask_b live on different devices; move both with to_host or to_device")
    xp = array_module(mask_a, mask_b)
    count = xp.count_nonzero(mask_a != mask_b)
    return int(count) if xp is np else count


def sad(mask_a, mask_b):
    """SAD = ||E_a XOR E_b||_0 as (count, fraction of the weights compared)."""
    count = int(flips(mask_a, mask_b))
    if mask_a.size == 0:
        raise ValueError("SAD of empty masks is undefined: the masks have no weights")
    return count, count / mask_a.size


def pack(mask):
    """Host bit-packed copy of a boolean mask (8 weights a byte)."""
    _check_mask(mask, "mask")
    return np.packbits(to_host(mask).ravel())


def unpack(packed, shape):
    """Inverse of ``pack``: a host boolean mask of ``shape``."""
    check_array(packed, "packed")
    check_shape(shape)
    size = int(np.prod(shape))
    if packed.dtype != np.uint8 or packed.size != -(-size // 8):
        raise ValueError(f"packed ({packed.dtype}, {packed.size} bytes) does not hold a mask of shape {tuple(shape)} "
                         f"({-(-size // 8)} uint8 bytes); pass pack(mask) and that mask's shape")
    return np.unpackbits(packed, count=size).astype(bool).reshape(shape)


class SADTracker:
    """SAD of a training run. Call ``start(masks)`` before training with the initial masks, ``step(masks)``
    after every optimizer step with the masks that step's forward used, ``end_epoch()`` at each epoch end
    (returns the metrics dict) and ``vs_final()`` after training. ``masks``: dict layer name -> bool array."""

    def __init__(self):
        self.shapes = None

    def start(self, named_masks):
        """Record the initial masks (the masks of the first forward)."""
        self._check(named_masks, first=True)
        self.shapes = {k: tuple(v.shape) for k, v in named_masks.items()}
        self.init = {k: pack(v) for k, v in named_masks.items()}
        self.previous = {k: v.copy() for k, v in named_masks.items()}
        self.epoch_ends = []                                             # per epoch: {name: packed mask}
        self._new_epoch()

    def _new_epoch(self):
        self.step_flips = {k: 0 for k in self.shapes}
        self.steps = 0

    def _check(self, named_masks, first=False):
        if not isinstance(named_masks, dict) or not named_masks:
            raise TypeError("named_masks must be a non-empty dict layer name -> boolean mask")
        for name, mask in named_masks.items():
            _check_mask(mask, f"mask of layer {name!r}")
            if first and mask.size == 0:
                raise ValueError(f"mask of layer {name!r} is empty (shape {tuple(mask.shape)}): SAD of a layer "
                                 "without weights is undefined; leave it out")
        if first:
            return
        self._require_started()
        if set(named_masks) != set(self.shapes):
            raise ValueError(f"layers {sorted(named_masks)} differ from those given to start: "
                             f"{sorted(self.shapes)}")
        for name, mask in named_masks.items():
            if tuple(mask.shape) != self.shapes[name]:
                raise ValueError(f"mask of layer {name!r} has shape {tuple(mask.shape)}, start had "
                                 f"{self.shapes[name]}: SAD compares the same weight at two moments")

    def _require_started(self):
        if self.shapes is None:
            raise RuntimeError("call SADTracker.start(masks) with the initial masks before step / end_epoch")

    def step(self, named_masks):
        """Add the flips between this step's forward masks and the previous step's."""
        self._check(named_masks)
        for name, mask in named_masks.items():
            previous = self.previous[name]
            if array_module(previous) is not array_module(mask):
                previous = array_module(mask).asarray(previous)
            self.step_flips[name] = self.step_flips[name] + flips(previous, mask)
            self.previous[name] = mask.copy()
        self.steps += 1

    def end_epoch(self):
        """Metrics of the epoch: sad_step, sad_epoch, sad_init (+ _frac, + per layer); starts the next epoch."""
        if self.shapes is None:
            raise RuntimeError("call SADTracker.start(masks) with the initial masks before end_epoch")
        ends = {k: pack(v) for k, v in self.previous.items()}
        last = self.epoch_ends[-1] if self.epoch_ends else self.init
        counts = {"sad_step": {k: int(v) for k, v in self.step_flips.items()},
                  "sad_epoch": self._packed_flips(ends, last),
                  "sad_init": self._packed_flips(ends, self.init)}
        metrics = {}
        for metric, per_layer in counts.items():
            factor = max(self.steps, 1) if metric == "sad_step" else 1
            metrics.update(self._summarise(metric, per_layer, factor))
        self.epoch_ends.append(ends)
        self._new_epoch()
        return metrics

    def vs_final(self, final_masks=None):
        """Per ended epoch, SAD of its last forward mask vs ``final_masks`` (default: the last epoch's):
        a list of dicts with "epoch", "sad_final", "sad_final_frac" and per-layer keys."""
        if not self.epoch_ends:
            raise RuntimeError("no epoch has ended yet: call end_epoch() at the end of each epoch")
        if final_masks is None:
            final = self.epoch_ends[-1]
        else:
            self._check(final_masks)
            final = {k: pack(v) for k, v in final_masks.items()}
        return [{"epoch": epoch, **self._summarise("sad_final", self._packed_flips(ends, final), 1)}
                for epoch, ends in enumerate(self.epoch_ends)]

    def epoch_masks(self, epoch):
        """The last forward masks of an ended epoch, unpacked on the host: dict name -> bool array."""
        self._require_started()
        ended = len(self.epoch_ends)
        if isinstance(epoch, bool) or not hasattr(epoch, "__index__") or not 0 <= epoch < ended:
            raise ValueError(f"epoch={epoch!r} must be an ended epoch, an int in [0, {ended}) (end_epoch() ends one)")
        return {k: unpack(v, self.shapes[k]) for k, v in self.epoch_ends[epoch].items()}

    def initial_masks(self):
        self._require_started()
        return {k: unpack(v, self.shapes[k]) for k, v in self.init.items()}

    def _packed_flips(self, packed_a, packed_b):
        return {k: int(np.unpackbits(np.bitwise_xor(packed_a[k], packed_b[k])).sum()) for k in self.shapes}

    def _summarise(self, metric, per_layer, factor):
        sizes = {k: int(np.prod(s)) for k, s in self.shapes.items()}
        total = sum(per_layer.values())
        out = {metric: total, f"{metric}_frac": total / (sum(sizes.values()) * factor)}
        for name, count in per_layer.items():
            out[f"{metric}/{name}"] = count
            out[f"{metric}_frac/{name}"] = count / (sizes[name] * factor)
        return out

    def state_dict(self):
        """Flat dict of host arrays (npz-friendly): resuming continues the same sums and history."""
        if self.shapes is None:
            return {"started": np.array(False)}
        names = list(self.shapes)
        state = {"started": np.array(True), "names": np.array(names), "steps": np.array(self.steps),
                 "n_epochs": np.array(len(self.epoch_ends))}
        for name in names:
            state[f"shape/{name}"] = np.array(self.shapes[name], dtype=np.int64)
            state[f"init/{name}"] = self.init[name]
            state[f"previous/{name}"] = pack(self.previous[name])
            state[f"step_flips/{name}"] = np.array(int(self.step_flips[name]))
            for epoch, ends in enumerate(self.epoch_ends):
                state[f"epoch_end/{epoch}/{name}"] = ends[name]
        return state

    def load_state_dict(self, state):
        check_state(state, "SADTracker", ("started",))
        self.shapes = None
        if not bool(state["started"]):
            return
        check_state(state, "SADTracker", ("names", "n_epochs", "steps"))
        names = [str(n) for n in state["names"]]
        self.shapes = {k: tuple(int(s) for s in state[f"shape/{k}"]) for k in names}
        self.init = {k: np.asarray(state[f"init/{k}"], dtype=np.uint8) for k in names}
        self.previous = {k: unpack(np.asarray(state[f"previous/{k}"], dtype=np.uint8), self.shapes[k])
                         for k in names}
        self.epoch_ends = [{k: np.asarray(state[f"epoch_end/{e}/{k}"], dtype=np.uint8) for k in names}
                           for e in range(int(state["n_epochs"]))]
        self.step_flips = {k: int(state[f"step_flips/{k}"]) for k in names}
        self.steps = int(state["steps"])
