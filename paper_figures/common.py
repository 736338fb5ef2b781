"""What the figures share: the run modes, training-run specs, plotting style, CSV and caption writing."""
import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "out"
COLORS = {"dense": "black", "ste": "tab:blue", "srste": "tab:orange", "lbc": "tab:green", "fixed": "tab:purple"}
LABELS = {"dense": "dense", "ste": "STE", "srste": "SR-STE", "lbc": "LBC", "fixed": "fixed mask"}
PATTERNS = ("2:4", "4:8", "1:4", "2:8")


@dataclass(frozen=True)
class Mode:
    """How much to train: ``tiny`` (NMREF_FAST=1, tests), ``quick`` (default, < 10 min on 2 cores), ``full``."""
    name: str
    epochs: int
    seeds: tuple              # accuracy table, STE vs SR-STE
    sweep_seeds: tuple        # lambda sweep, LBC schedule ablation
    train_samples: int        # training subset (0 = all the training data)
    test_samples: int = 0     # test subset (0 = all)
    batch_size: int = 256


MODES = {
    "tiny": Mode("tiny", epochs=2, seeds=(0, 1), sweep_seeds=(0,), train_samples=256, test_samples=256,
                 batch_size=64),
    "quick": Mode("quick", epochs=12, seeds=(0, 1, 2), sweep_seeds=(0, 1), train_samples=8000),
    "full": Mode("full", epochs=30, seeds=(0, 1, 2, 3, 4), sweep_seeds=(0, 1, 2), train_samples=0),
}


def fast_env():
    return os.environ.get("NMREF_FAST", "0") not in ("", "0")


def pick_mode(full=False):
    """``full`` if asked, ``tiny`` under NMREF_FAST=1, else ``quick``."""
    if full:
        return MODES["full"]
    return MODES["tiny"] if fast_env() else MODES["quick"]


def spec(mode, method, pattern=None, seed=0, **options):
    """Overrides of ``nmref.train.TrainConfig`` for one training run of the MNIST-1D 1D CNN."""
    config = {"dataset": "mnist1d", "model": "cnn1d", "method": method, "epochs": mode.epochs,
              "batch_size": mode.batch_size, "seed": seed}
    config.update({k: v for k, v in (("train_samples", mode.train_samples), ("test_samples", mode.test_samples)) if v})
    if method != "dense":
        config["pattern"] = pattern
    if method == "srste" and "lam" not in options:
        options["lam"] = 2e-4
    if method == "srste" and options["lam"] == 0:
        del config["pattern"]                                       # lambda_W = 0 is STE, bit for bit
        return spec(mode, "ste", pattern, seed)
    config.update(options)
    return config


def label(config):
    """Short human name of a run spec: "SR-STE 2:4 (lam=2e-4)"."""
    text = LABELS.get(config["method"], config["method"])
    if config.get("pattern") and config["method"] != "dense":
        text += f" {config['pattern']}"
    if config["method"] == "srste":
        text += f" (lam={config['lam']:g})"
    return text


# ---- statistics --------------------------------------------------------------------------------------
def mean_std(values):
    """(mean, sample std over seeds; nan for a single value)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if values.size > 1 else math.nan


def noise(std_a, std_b):
    """The noise a difference of two means is judged against: the larger std over seeds (nan, one seed, as 0)."""
    return max(np.nan_to_num(std_a), np.nan_to_num(std_b))


def versus(a, b, name_a, name_b, scale=100, unit=" points"):
    """"a - b = +x points (within / beyond the std over seeds)": the larger of the two stds is the noise."""
    (mean_a, std_a), (mean_b, std_b) = mean_std(a), mean_std(b)
    diff = mean_a - mean_b
    noise_ab = noise(std_a, std_b)
    text = f"{name_a} - {name_b} = {scale * diff:+.2f}{unit}"
    if len(a) < 2 or abs(diff) <= noise_ab:
        return text + " (within the std over seeds)"
    return text + " (beyond the std over seeds)"


def pm(mean, std, digits=2, scale=1.0):
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


# ---- output files ------------------------------------------------------------------------------------
def write_csv(path, rows, columns):
    """CSV with exactly ``columns`` (every row must have them all)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="raise")
        writer.writeheader()
        for row in rows:
            missing = set(columns) - set(row)
            if missing:
                raise KeyError(f"row for {path.name} lacks columns {sorted(missing)}")
            writer.writerow({k: _fmt(row[k]) for k in columns})
    return path


def _fmt(value):
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    return value


def setup_matplotlib():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "font.size": 9, "axes.titlesize": 10,
                         "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8})
    return plt


def save_png(fig, path):
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return Path(path)


def runs_note(mode, runs):
    """One sentence saying what was trained: data, model, epochs, batch, recipe, seeds, mode."""
    c = runs[0].config
    seeds = sorted({r.config["seed"] for r in runs})
    names = sorted({label(r.config) for r in runs})
    sizes = sorted({(r.n_train, r.n_test) for r in runs})
    data = "; ".join(f"{a} training / {b} test samples" for a, b in sizes)
    return (f"Mode `{mode.name}`: {len(runs)} training runs of the `{c['model']}` model on {c['dataset']} "
            f"({data}{', NMREF_FAST tiny data' if mode.name == 'tiny' else ''}), {c['epochs']} epochs, batch "
            f"{c['batch_size']}, SGD lr {c['lr']:g} momentum {c['momentum']:g} weight decay {c['weight_decay']:g}, "
            f"{c['warmup_frac']:.3g} of the steps linear warm-up then {c['schedule']}; seeds {seeds}; runs: "
            f"{', '.join(names)}.")


def write_fragment(out_dir, name, title, images, csvs, caption):
    """``<name>.md``: the figure's section of index.md (index.md is rebuilt from all fragments)."""
    lines = [f"## {title}", ""]
    lines += [f"![{title}]({Path(p).name})" for p in images]
    lines += ["", caption.strip(), "", "Data: " + ", ".join(f"[{Path(p).name}]({Path(p).name})" for p in csvs), ""]
    path = Path(out_dir) / f"{name}.md"
    path.write_text("\n".join(lines))
    return path


def write_index(out_dir, names, header):
    """index.md: the header, then the fragments of ``names`` present in ``out_dir``, in order."""
    out_dir = Path(out_dir)
    parts = [header.strip(), ""]
    for name in names:
        fragment = out_dir / f"{name}.md"
        if fragment.exists():
            parts += [fragment.read_text().strip(), ""]
    path = out_dir / "index.md"
    path.write_text("\n".join(parts))
    return path


# ---- curves over seeds -------------------------------------------------------------------------------
def stack(runs, column):
    """(S, E) array of one metric over the epochs of several seeds' runs."""
    return np.stack([run.column(column) for run in runs])


def last_half(values):
    """Mean over the last half of the epochs (axis -1), the window the SAD claim is judged on."""
    values = np.asarray(values, dtype=float)
    return values[..., values.shape[-1] // 2:].mean(axis=-1)


def band(ax, x, curves, color, label, log=False):
    """Mean line with a min-max band over seeds."""
    mean = curves.mean(axis=0)
    ax.plot(x, mean, color=color, label=label, lw=1.6)
    if len(curves) > 1:
        ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.2, lw=0)
    if log:
        ax.set_yscale("log")


# ---- how strong SR-STE's decay is over a run ------------------------------------------------------------
# The SR-STE paper's ImageNet recipe (docs/algorithms.md section 3); 1,281,167 ImageNet-1k training images.
PAPER_RECIPE = {"n_train": 1281167, "batch_size": 256, "epochs": 120, "warmup_frac": 5 / 120, "lr": 0.1,
                "momentum": 0.9, "schedule": "cosine"}


def lr_sum(n_train, batch_size, epochs, warmup_frac, lr, schedule, **_):
    """Sum of the learning rate over every step of a run, with nmref.train's schedule."""
    return lr * _factor_sum(n_train, batch_size, epochs, warmup_frac, schedule)


@functools.lru_cache(maxsize=None)
def _factor_sum(n_train, batch_size, epochs, warmup_frac, schedule):
    from nmref.train import lr_factor
    total = epochs * math.ceil(n_train / batch_size)
    warmup = round(warmup_frac * total)
    return sum(lr_factor(step, total, warmup, schedule) for step in range(total))


def decay_exponent(lam, recipe):
    """lam * sum_t lr_t / (1 - momentum): SR-STE's term alone shrinks a weight that stays pruned by
    exp(-this) over the run (momentum's steady-state gain 1 / (1 - mu) included)."""
    return lam * lr_sum(**recipe) / (1 - recipe["momentum"])


def run_recipe(run):
    return {**run.config, "n_train": run.n_train}


def decay_note(run, lam):
    """One sentence comparing SR-STE's cumulative decay in ``run`` with the paper's ImageNet recipe."""
    ours, paper = decay_exponent(lam, run_recipe(run)), decay_exponent(lam, PAPER_RECIPE)
    return (f"How strong is lambda_W = {lam:g} here? Its term alone would shrink a weight that stays pruned by "
            f"exp(-lambda_W sum_t lr_t / (1 - momentum)) = exp(-{ours:.3g}) = {math.exp(-ours):.3f} over this run "
            f"({run.config['epochs']} epochs of {math.ceil(run.n_train / run.config['batch_size'])} steps), against "
            f"exp(-{paper:.3g}) over the paper's ImageNet recipe ({PAPER_RECIPE['epochs']} epochs of "
            f"{math.ceil(PAPER_RECIPE['n_train'] / PAPER_RECIPE['batch_size'])} steps): at this scale the SR-STE "
            f"term is about {paper / ours:.0f}x weaker in total.")
