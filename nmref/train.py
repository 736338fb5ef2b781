"""One training run: the loop, evaluation, the metrics log and checkpoints that resume bit for bit.

Per step: every method's before_step(), forward, softmax cross-entropy, backward, SGD step with the lr of
this iteration (linear warm-up over ``warmup_frac`` of the run, then cosine to 0; or step / constant),
SAD tracking of the sparse layers' forward masks. Per epoch: methods' on_epoch(epoch, epochs) first;
evaluation on the test set, a metrics row (``METRIC_COLUMNS``, SAD and LBC columns) appended to
metrics.jsonl and metrics.csv, and ``checkpoint.npz`` written atomically (a crash mid-save keeps the last
good one). Epochs are counted from 0; ``step`` counts optimizer steps done.

Checkpoint (.npz, ``CHECKPOINT_VERSION``): "param/<name>" every Param (LBC scores too), "mask/<name>" the
bool mask of each sparse layer's weight (the one its next forward uses), "buffer/<name>" BatchNorm
running stats, "optim/<key>" SGD state, "method/<layer>/<key>" methods' state, "sad/<key>" the SAD
tracker, and "meta": JSON with the format version, epoch, step, config, the shuffle generator's state,
the layer table and the metrics history.
"""
import csv
import dataclasses
import io
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from . import __version__
from .backend import DEVICES, array_module, gpu_available, to_device, to_host
from .data import DATASETS, batches, fast_mode, first_samples, load, num_batches, save_npz_atomic
from .groups import LAYOUTS
from .losses import softmax_cross_entropy
from .masks import parse_pattern
from .models import MODELS, build_model
from .optim import SGD, param_groups, step_decay, warmup_cosine
from .sad import SADTracker
from .sparsity import METHODS, make_method

CHECKPOINT_VERSION = 1
SCHEDULES = ("cosine", "step", "constant")
STEP_MILESTONES = (0.5, 0.75)
DEFAULT_MODEL = {"mnist1d": "cnn1d", "mnist": "cnn2d", "cifar10": "cnn2d"}
DEFAULT_EPOCHS, FAST_EPOCHS = 10, 2
METRIC_COLUMNS = ("epoch", "step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "density",
                  "model_density")
TIMING_COLUMNS = ("train_time", "epoch_time")
# Settings that may change on --resume without changing the run's numbers (device: same math, not bits).
RESUME_FREE = ("resume", "overwrite", "progress", "out", "device", "checkpoint_every", "stop_after",
               "data_path", "eval_batch_size")


@dataclasses.dataclass
class TrainConfig:
    """Everything that defines a run; None fields get their defaults from ``resolved()``."""
    dataset: str = "mnist1d"            # one of DATASETS
    data_path: str = None               # files of "mnist" / "cifar10" (data.load)
    train_samples: int = 0              # use the first this many training samples (0: all)
    test_samples: int = 0               # use the first this many test samples (0: all)
    model: str = None                   # one of MODELS; None: cnn1d for mnist1d, cnn2d otherwise
    method: str = "dense"               # dense | ste | srste | fixed | lbc
    pattern: str = "2:4"                # n:m, n kept of every m
    lam: float = 2e-4                   # SR-STE lambda_W
    layout: str = "conv"                # conv grouping: "conv" (NHWC, along Cin) or "nchw_flatten"
    sparse_last: bool = False           # make the last Linear sparse too
    strict_sparse: bool = False         # raise when a layer cannot take the pattern instead of keeping it dense
    epochs: int = None                  # None: 10 (2 under NMREF_FAST=1)
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-5          # on every "weights" Param (SR-STE recipe)
    score_weight_decay: float = 1e-4    # on LBC's "scores" Params
    warmup_frac: float = 5 / 120        # linear warm-up over this fraction of the steps
    schedule: str = "cosine"            # cosine | step (x0.1 at 50% and 75%) | constant, after the warm-up
    label_smoothing: float = 0.0
    seed: int = 0
    out: str = None                     # run directory; None: runs/<dataset>_<model>_<method>[_n-m]_seed<seed>
    device: str = "cpu"                 # cpu | gpu
    resume: bool = False                # continue out/checkpoint.npz
    overwrite: bool = False             # start afresh even if out/ holds a checkpoint
    fix_at: int = 0                     # Fixed: epoch at which the mask is taken
    init_from: str = None               # start from the weights of this checkpoint (e.g. dense, for Fixed)
    t_i: int = 0                        # LBC: first removal epoch
    t_f: float = None                   # LBC: epoch with one combination left; None: half the run
    power: float = 3                    # LBC: exponent of the removal schedule
    removal: str = "strict"             # LBC: strict | faithful
    progress: bool = True               # tqdm progress bar and one line per epoch
    checkpoint_every: int = 1           # epochs between checkpoints (the last epoch always saves)
    stop_after: int = None              # stop after this many epochs in this call (resume later)
    eval_batch_size: int = 1000
    dtype: str = "float32"              # float32 | float64 (weights, activations, gradients)

    def resolved(self, need_data=True):
        """A copy with model, epochs and out filled in, validated (need_data=False: no data files and no GPU
        needed, as for ``nmref train --describe``)."""
        config = dataclasses.replace(self)
        if config.model is None:
            config.model = DEFAULT_MODEL.get(config.dataset, "cnn1d")
        if config.epochs is None:
            config.epochs = FAST_EPOCHS if fast_mode() else DEFAULT_EPOCHS
        config.out = os.fspath(config.default_out() if config.out is None else config.out)
        validate(config, need_data)
        return config

    def default_out(self):
        """runs/<dataset>_<model>_<method>[_n-m]_seed<seed>"""
        model = self.model or DEFAULT_MODEL.get(self.dataset, "cnn1d")
        pattern = "" if self.method == "dense" else "_" + str(self.pattern).replace(":", "-")
        return os.path.join("runs", f"{self.dataset}_{model}_{self.method}{pattern}_seed{self.seed}")


class ConfigError(ValueError):
    """A setting of the run is wrong (or does not match the checkpoint being resumed); says which and why."""


class TrainingDiverged(ConfigError):
    """The logits or the weights became NaN / inf during training: the learning rate is too high for the run."""

    def __init__(self, epoch, step, what, lr):
        self.epoch, self.step = epoch, step
        super().__init__(f"training diverged at epoch {epoch}, step {step} ({what} became NaN or inf); "
                         f"lower --lr (lr={lr:g})")


def _fail(field, value, need):
    raise ConfigError(f"{field}={value!r}: {need}")


def validate(config, need_data=True):
    """Raise ConfigError naming the first bad setting and what it should be (need_data=False: the settings
    alone, without looking for data files or a GPU)."""
    c = config
    choices = (("dataset", DATASETS), ("model", MODELS), ("method", METHODS), ("schedule", SCHEDULES),
               ("device", DEVICES), ("removal", ("strict", "faithful")), ("dtype", ("float32", "float64")),
               ("layout", tuple(x for x in LAYOUTS if x != "linear")))
    for field, allowed in choices:
        if getattr(c, field) not in allowed:
            _fail(field, getattr(c, field), f"choose one of {allowed}")
    if need_data and c.device == "gpu" and not gpu_available():
        _fail("device", c.device, "no CUDA GPU is visible to CuPy here (nmref.gpu_available() is False); "
                                  "install the GPU extra, pip install -e '.[gpu]', on a machine with a CUDA GPU, "
                                  "or train on the CPU (--device cpu)")
    if c.method != "dense":
        try:
            parse_pattern(c.pattern)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    for field in ("epochs", "batch_size", "checkpoint_every", "eval_batch_size"):
        value = getattr(c, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            _fail(field, value, "must be an integer >= 1")
    for field in ("train_samples", "test_samples"):
        value = getattr(c, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            _fail(field, value, "must be an integer >= 0 (0: all samples)")
    if c.stop_after is not None and (not isinstance(c.stop_after, int) or c.stop_after < 1):
        _fail("stop_after", c.stop_after, "must be an integer >= 1 (or None to run to the end)")
    if isinstance(c.seed, bool) or not isinstance(c.seed, int) or c.seed < 0:
        _fail("seed", c.seed, "must be an integer >= 0")
    for field in ("lr", "weight_decay", "score_weight_decay", "momentum", "warmup_frac", "label_smoothing"):
        value = getattr(c, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            _fail(field, value, "must be a finite number")
    for field in ("lr", "weight_decay", "score_weight_decay"):
        if getattr(c, field) < 0:
            _fail(field, getattr(c, field), "must be a number >= 0")
    if not 0 <= c.momentum < 1:
        _fail("momentum", c.momentum, "must be in [0, 1)")
    if c.nesterov and c.momentum == 0:
        _fail("nesterov", c.nesterov, "needs momentum > 0")
    if not 0 <= c.warmup_frac < 1:
        _fail("warmup_frac", c.warmup_frac, "must be in [0, 1) (a fraction of the run's steps)")
    if not 0 <= c.label_smoothing < 1:
        _fail("label_smoothing", c.label_smoothing, "must be in [0, 1)")
    if need_data and c.dataset != "mnist1d" and c.data_path is None:
        _fail("data_path", None, f"dataset {c.dataset!r} is read from files: give --data-path "
                                 "(MNIST: folder of the IDX .gz files or mnist.npz; CIFAR-10: cifar-10-batches-py)")
    if c.data_path is not None and not os.path.exists(c.data_path):
        _fail("data_path", c.data_path, "no such file or folder")
    if c.init_from is not None and not os.path.isfile(c.init_from):
        _fail("init_from", c.init_from, "no such file; give a checkpoint.npz written by nmref train")
    if c.resume and c.overwrite:
        _fail("overwrite", True, "cannot be combined with resume")
    _check_out(c.out)
    try:
        method_factory(c)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method {c.method!r}: {exc}") from None
    _check_schedule_fits(c)


def _check_out(out):
    """The run directory must be a folder or creatable as one: no file on its path."""
    if out is None:
        return
    path = Path(out).absolute()
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                what = ("is not a folder" if parent == path else
                        f"lies under {os.fspath(parent)}, which is not a folder")
                _fail("out", os.fspath(out), f"{what}; give a run directory (--out DIR)")
            return


def _check_schedule_fits(c):
    """The mask must be N:M by the end of the run: epochs are 0 .. epochs - 1 and methods act at the start of
    an epoch, so LBC needs t_i < t_f <= epochs - 1 (t_f=None: epochs / 2) and Fixed fix_at <= epochs - 1."""
    last = c.epochs - 1
    if c.method == "fixed" and c.fix_at > last:
        _fail("fix_at", c.fix_at, f"must be < epochs={c.epochs}: the mask is taken at the start of epoch fix_at "
                                  "and the run would end dense; lower fix_at or raise epochs")
    if c.method != "lbc":
        return
    t_f = c.epochs / 2 if c.t_f is None else c.t_f
    default = f" (t_f=None: epochs / 2 = {t_f:g})" if c.t_f is None else ""
    if not c.t_i < t_f:
        _fail("t_i", c.t_i, f"must be < t_f{default}: removal runs from epoch t_i to t_f; lower t_i, or raise "
                            "t_f and epochs")
    if t_f > last:
        _fail("t_f", c.t_f, f"must be <= epochs - 1 = {last}{default}: one combination per group (an N:M mask) "
                            "is left only from epoch t_f on, so the run would end before it; lower t_f or raise "
                            "epochs")


def method_factory(config):
    """The sparsity-method factory of a config (None for dense)."""
    options = {"srste": {"lam": config.lam}, "fixed": {"fix_at": config.fix_at},
               "lbc": {"t_i": config.t_i, "t_f": config.t_f, "power": config.power, "removal": config.removal,
                       "score_weight_decay": config.score_weight_decay}}.get(config.method, {})
    if config.method == "dense":
        return None
    return make_method(config.method, config.pattern, **options)


def model_for(config, input_shape, num_classes=10):
    """The config's model with its sparsity method, initial weights from config.seed."""
    try:
        return build_model(config.model, method_factory(config), sparse_last=config.sparse_last,
                           layout=config.layout, rng=np.random.default_rng(config.seed), dtype=config.dtype,
                           input_shape=input_shape, num_classes=num_classes, strict_sparse=config.strict_sparse)
    except ValueError as exc:
        raise ConfigError(f"model {config.model!r} on {config.dataset}: {exc}") from None


def lr_factor(step, total_steps, warmup_steps, schedule):
    """Factor of the base lr at ``step``: linear warm-up, then cosine to 0, step decay or constant."""
    if schedule == "cosine":
        return warmup_cosine(step, total_steps, warmup_steps)
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "step":
        return step_decay(step, [round(f * total_steps) for f in STEP_MILESTONES])
    return 1.0


def make_optimizer(model, config):
    """SGD with one group per Param.group: "weights" (weight_decay), "scores" (score_weight_decay)."""
    overrides = {"weights": {"weight_decay": config.weight_decay},
                 "scores": {"weight_decay": config.score_weight_decay}}
    params = model.params()
    present = {p.group for p in params}
    groups = param_groups(params, {k: v for k, v in overrides.items() if k in present})
    return SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
               weight_decay=config.weight_decay)


# ---- masks and metrics ----------------------------------------------------------------------------------
def current_masks(sparse_layers):
    """The mask each sparse layer's next forward would use, without disturbing the method's state."""
    masks = {}
    for name, layer in sparse_layers.items():
        method = layer.method
        saved = method.mask, getattr(method, "_alive_forward", None)
        method.masked(layer.weight.value)
        masks[name] = method.mask
        method.mask = saved[0]
        if saved[1] is not None:
            method._alive_forward = saved[1]
    return masks


def density_columns(model):
    """Forward density of the sparse layers' weights and of all weight layers (last forward masks)."""
    layers = model.weight_layers()
    kept = {name: layer.method.density() * layer.weight.value.size for name, layer in layers.items()}
    sizes = {name: layer.weight.value.size for name, layer in layers.items()}
    sparse = model.sparse_layers()
    sparse_size = sum(sizes[n] for n in sparse)
    return {"density": sum(kept[n] for n in sparse) / sparse_size if sparse else 1.0,
            "model_density": sum(kept.values()) / sum(sizes.values())}


def lbc_columns(model):
    """alive_per_group (mean over all LBC groups, and per layer) and is_nm, when the method is LBC."""
    from .lbc import LBC
    layers = {n: l for n, l in model.sparse_layers().items() if isinstance(l.method, LBC)}
    if not layers:
        return {}
    groups = {n: l.method.scores.value.shape[0] for n, l in layers.items()}
    alive = {n: l.method.alive_per_group() for n, l in layers.items()}
    columns = {"alive_per_group": sum(alive[n] * groups[n] for n in layers) / sum(groups.values()),
               "is_nm": all(l.method.is_nm() for l in layers.values())}
    columns.update({f"alive_per_group/{n}": alive[n] for n in layers})
    return columns


def evaluate(model, x, y, batch_size):
    """(mean cross-entropy, accuracy) on (x, y) in eval mode (BatchNorm running statistics)."""
    loss_sum, correct = 0.0, 0
    for xb, yb in batches(x, y, batch_size, shuffle=False):
        logits = model.forward(xb, train=False)                                 # (B, K)
        loss, _ = softmax_cross_entropy(logits, yb)
        loss_sum += float(loss) * len(yb)
        correct += int((logits.argmax(axis=1) == yb).sum())
    return loss_sum / len(y), correct / len(y)


# ---- metrics files -------------------------------------------------------------------------------------
def write_metrics(out, history):
    """metrics.jsonl (one JSON object per epoch) and metrics.csv, both rewritten atomically."""
    lines = "".join(json.dumps(row) + "\n" for row in history)
    _write_text_atomic(out / "metrics.jsonl", lines)
    columns = list(dict.fromkeys(k for row in history for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _write_text_atomic(out / "metrics.csv", buffer.getvalue())


def _write_text_atomic(file, text):
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, file)


def read_metrics(out):
    """The rows of ``out``/metrics.jsonl."""
    with open(Path(out) / "metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---- checkpoints ---------------------------------------------------------------------------------------
def save_checkpoint(file, model, optimizer, tracker, run, config):
    """Write the run's full state to ``file`` atomically (module docstring lists the keys)."""
    arrays = {f"param/{name}": to_host(p.value) for name, p in model.named_params().items()}
    sparse = model.sparse_layers()
    arrays.update({f"mask/{name}.weight": to_host(mask).astype(bool)
                   for name, mask in current_masks(sparse).items()})
    arrays.update({f"buffer/{name}": to_host(b) for name, b in model.buffers().items()})
    arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    for name, layer in model.weight_layers().items():
        arrays.update({f"method/{name}/{k}": np.asarray(to_host(v)) for k, v in layer.method.state_dict().items()})
    if tracker is not None:
        arrays.update({f"sad/{k}": np.asarray(v) for k, v in tracker.state_dict().items()})
    meta = {"format_version": CHECKPOINT_VERSION, "nmref_version": __version__, "epoch": run["epoch"],
            "step": run["step"], "config": dataclasses.asdict(config), "shuffle_rng": run["rng"].bit_generator.state,
            "layers": model.layer_table(), "history": run["history"]}
    arrays["meta"] = np.array(json.dumps(meta, default=_json_default))
    save_npz_atomic(file, **arrays)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to the checkpoint's JSON meta")


def read_checkpoint(file):
    """(arrays by key, meta dict) of an nmref training checkpoint; clear errors for other files."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such checkpoint")
    try:
        with np.load(file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise ConfigError(f"{file}: not a readable .npz checkpoint ({exc})") from exc
    if "meta" not in arrays:
        raise ConfigError(f"{file}: no 'meta' entry; not a checkpoint written by nmref train")
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{file}: checkpoint format version {meta.get('format_version')}, this nmref reads "
                         f"version {CHECKPOINT_VERSION}")
    return arrays, meta


def _section(arrays, prefix):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def load_params(model, params, source, groups=None):
    """Copy ``params`` (name -> host array) into the model's Params of ``groups`` (None: all); names and
    shapes must match."""
    own = {n: p for n, p in model.named_params().items() if groups is None or p.group in groups}
    missing = sorted(set(own) - set(params))
    if missing:
        raise ConfigError(f"{source} has no param/{missing[0]} ({len(missing)} missing); it was written for "
                         "another model: use the same --model and --dataset")
    for name, p in own.items():
        if tuple(params[name].shape) != tuple(p.value.shape):
            raise ConfigError(f"{source}: param/{name} has shape {tuple(params[name].shape)}, the model needs "
                             f"{tuple(p.value.shape)}")
        p.value[...] = params[name]


def load_init(model, file):
    """Weights and BatchNorm statistics from a checkpoint (``--init-from``): method params are not read."""
    arrays, _ = read_checkpoint(file)
    load_params(model, _section(arrays, "param/"), file, groups=("weights",))
    model.load_buffers(_section(arrays, "buffer/"))


def load_run(file, model, optimizer, tracker, config):
    """Restore everything ``save_checkpoint`` wrote; returns the run dict (epoch, step, rng, history)."""
    arrays, meta = read_checkpoint(file)
    saved = meta["config"]
    changed = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in dataclasses.asdict(config).items()
               if k not in RESUME_FREE and _comparable(saved.get(k)) != _comparable(v)]
    if changed:
        raise ConfigError(f"{file} was written with other settings ({'; '.join(changed)}); resume with the "
                         "checkpoint's settings or start a new run with another --out")
    load_params(model, _section(arrays, "param/"), file)
    model.load_buffers(_section(arrays, "buffer/"))
    optimizer.load_state_dict(_section(arrays, "optim/"))
    for name, layer in model.weight_layers().items():
        state = _section(arrays, f"method/{name}/")
        if state:
            layer.method.load_state_dict(state)
    if tracker is not None:
        tracker.load_state_dict(_section(arrays, "sad/"))
    shuffle = np.random.default_rng()
    shuffle.bit_generator.state = meta["shuffle_rng"]
    return {"epoch": meta["epoch"], "step": meta["step"], "rng": shuffle, "history": meta["history"]}


def _comparable(value):
    return list(value) if isinstance(value, tuple) else value


# ---- the loop ------------------------------------------------------------------------------------------
def train(config=None, **overrides):
    """Run training for ``config`` (a TrainConfig; keyword overrides allowed); returns a dict with the final
    metrics row, the per-epoch history, the run directory and the checkpoint path."""
    config = dataclasses.replace(config or TrainConfig(), **overrides).resolved()
    out = Path(config.out)
    checkpoint = out / "checkpoint.npz"
    if config.resume and not checkpoint.is_file():
        raise FileNotFoundError(f"resume=True but {checkpoint} does not exist; run without --resume first")
    if checkpoint.is_file() and not (config.resume or config.overwrite):
        raise FileExistsError(f"{out} already holds a run (checkpoint.npz); pass --resume to continue it, "
                              "--overwrite to start afresh, or another --out")
    try:
        data = first_samples(load(config.dataset, config.data_path), config.train_samples, config.test_samples)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    num_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    model = model_for(config, data.x_train.shape[1:], num_classes)
    if config.init_from and not config.resume:
        load_init(model, config.init_from)
    optimizer = make_optimizer(model, config)
    sparse = model.sparse_layers()
    tracker = SADTracker() if sparse else None
    run = {"epoch": 0, "step": 0, "rng": np.random.default_rng([config.seed, 1]), "history": []}
    if config.resume:
        run = load_run(checkpoint, model, optimizer, tracker, config)
    out.mkdir(parents=True, exist_ok=True)
    if not config.resume:
        for stale in ("checkpoint.npz", "metrics.jsonl", "metrics.csv"):      # --overwrite: the old run goes
            if (out / stale).exists():
                os.remove(out / stale)
    if run["history"]:
        write_metrics(out, run["history"])
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    (out / "model.txt").write_text(model.describe() + "\n")
    model.to_device(config.device)
    arrays = [to_device(a.astype(config.dtype) if a.dtype.kind == "f" else a, config.device) for a in data]
    loop = Loop(config, model, optimizer, tracker, run, arrays, checkpoint)
    return loop.run()


class Loop:
    """The epochs of one ``train`` call: state in ``run`` (epoch, step, shuffle rng, history)."""

    def __init__(self, config, model, optimizer, tracker, run, arrays, checkpoint):
        self.config, self.model, self.optimizer, self.tracker, self.run_state = config, model, optimizer, tracker, run
        self.x_train, self.y_train, self.x_test, self.y_test = arrays
        self.checkpoint = checkpoint
        self.sparse = model.sparse_layers()
        self.methods = [layer.method for layer in model.weight_layers().values()]
        self.params = model.params()
        self.steps_per_epoch = num_batches(len(self.y_train), config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        self.warmup_steps = round(config.warmup_frac * self.total_steps)

    def run(self):
        config, run = self.config, self.run_state
        last = config.epochs if config.stop_after is None else min(config.epochs, run["epoch"] + config.stop_after)
        bar = _progress(config, self.total_steps, run["step"])
        try:
            while run["epoch"] < last:
                row = self.epoch(run["epoch"], bar)
                run["history"].append(row)
                run["epoch"] += 1
                write_metrics(Path(config.out), run["history"])
                if run["epoch"] % config.checkpoint_every == 0 or run["epoch"] == last:
                    save_checkpoint(self.checkpoint, self.model, self.optimizer, self.tracker, run, config)
                if bar is not None:
                    bar.write(_summary(row, config.epochs))
        finally:
            if bar is not None:
                bar.close()
        history = run["history"]
        return {"out": config.out, "checkpoint": os.fspath(self.checkpoint), "final": history[-1] if history else None,
                "history": history, "config": dataclasses.asdict(config), "finished": run["epoch"] == config.epochs,
                "n_train": len(self.y_train), "n_test": len(self.y_test)}

    def epoch(self, epoch, bar):
        config, run, model, optimizer = self.config, self.run_state, self.model, self.optimizer
        started = time.perf_counter()
        for method in self.methods:
            method.on_epoch(epoch, config.epochs)
        if self.tracker is not None and self.tracker.shapes is None:
            self.tracker.start(current_masks(self.sparse))
        loss_sum, correct, seen = 0.0, 0, 0
        for i, (xb, yb) in enumerate(batches(self.x_train, self.y_train, config.batch_size, rng=run["rng"])):
            loss, logits = self.step(epoch, xb, yb)
            if self.tracker is not None:
                self.tracker.step({name: layer.method.mask for name, layer in self.sparse.items()})
            run["step"] += 1
            loss_sum = loss_sum + loss * len(yb)
            correct = correct + (logits.argmax(axis=1) == yb).sum()
            seen += len(yb)
            if bar is not None:
                bar.update(1)
                if i % 20 == 0 or i == self.steps_per_epoch - 1:
                    bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{float(loss):.4f}",
                                    acc=f"{int(correct) / seen:.3f}", lr=f"{optimizer.groups[0]['lr']:.4g}")
        train_time = time.perf_counter() - started
        test_loss, test_acc = evaluate(model, self.x_test, self.y_test, config.eval_batch_size)
        row = {"epoch": epoch, "step": run["step"], "lr": float(optimizer.groups[0]["lr"]),
               "train_loss": float(loss_sum) / seen, "train_acc": int(correct) / seen,
               "test_loss": test_loss, "test_acc": test_acc, **density_columns(model)}
        if self.tracker is not None:
            row.update({k: _plain(v) for k, v in self.tracker.end_epoch().items()})
        row.update(lbc_columns(model))
        row["train_time"] = train_time
        row["epoch_time"] = time.perf_counter() - started
        return row

    def step(self, epoch, xb, yb):
        """One optimizer step on a batch -> (loss, logits). NaN / inf in the logits or in the weights after the
        step raise TrainingDiverged (checked here, so NumPy's overflow warnings are not printed)."""
        config, run, model, optimizer = self.config, self.run_state, self.model, self.optimizer
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            optimizer.set_lr_scale(lr_factor(run["step"], self.total_steps, self.warmup_steps, config.schedule))
            for method in self.methods:
                method.before_step()
            logits = model.forward(xb, train=True)                                  # (B, K)
            if not _all_finite([logits]):
                raise TrainingDiverged(epoch + 1, run["step"] + 1, "the logits", config.lr)
            loss, dlogits = softmax_cross_entropy(logits, yb, config.label_smoothing)
            model.backward(dlogits, input_grad=False)                               # no dL/dx for the data
            optimizer.step()
            if not _all_finite([p.value for p in self.params]):
                raise TrainingDiverged(epoch + 1, run["step"] + 1, "the weights", config.lr)
        return loss, logits


def _all_finite(arrays):
    """True when no array holds NaN or inf (one device sync for all of them)."""
    xp = array_module(*arrays)
    return bool(xp.stack([xp.isfinite(a).all() for a in arrays]).all())


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _progress(config, total, initial):
    if not config.progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                desc=f"{config.model} {config.method}" + ("" if config.method == "dense" else f" {config.pattern}"))


def _summary(row, epochs):
    text = (f"epoch {row['epoch'] + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}"
            f" | test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f} | density {row['density']:.3f}")
    if "sad_epoch" in row:
        text += f" | SAD epoch {row['sad_epoch']}"
    if "alive_per_group" in row:
        text += f" | alive/group {row['alive_per_group']:.2f}"
    return text + f" | {row['epoch_time']:.1f}s"


def timing_free(row):
    """A metrics row without its wall-clock columns (for comparing runs)."""
    return {k: v for k, v in row.items() if k not in TIMING_COLUMNS}

