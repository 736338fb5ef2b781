"""Do LBC's scores rank combinations by their effect on the loss? (Zhang et al. 2022's claim; docs/algorithms.md
section 5.) A measurement, not a CI test.

nmref.train's MLP (40-256-256-10, both hidden layers LBC 2:4 or 4:8, strict removal, t_f = half the run) is
trained on MNIST-1D up to just before the last removal (the end of epoch t_f - 1, when most groups have two
alive combinations), then restored from its checkpoint.
For sampled groups with at least two alive combinations, the loss on a fixed training subset is measured
with that group's mask set to its best-scored alive combination alone, then to its worst-scored one, every
other group unchanged. Reported: the fraction of groups where the best-scored combination gives the lower
loss, with a 95% Wilson interval. Control: the same comparison between the lowest- and highest-index alive
combinations, which should sit near 0.5. Also the fraction of groups whose best-scored combination keeps
the largest sum of |W| among the alive ones (does LBC just learn magnitude?).

    python benchmarks/lbc_claim.py                      # 3 seeds, 2:4 and 4:8, saved under benchmarks/results/
    python benchmarks/lbc_claim.py --quick              # 1 seed, fewer groups
"""
import argparse
import datetime
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from nmref.data import load
from nmref.groups import to_groups
from nmref.losses import softmax_cross_entropy
from nmref.train import TrainConfig, load_run, make_optimizer, model_for, train

RESULTS = Path(__file__).parent / "results"


def train_until_last_removal(n, m, seed, epochs, folder):
    """nmref.train's recipe (SGD momentum 0.9, weight decay 5e-5, 1e-4 on the scores, warm-up + cosine,
    label smoothing 0.1) for the first ceil(t_f) epochs of an ``epochs`` run; the model restored from its
    checkpoint, i.e. after epoch ceil(t_f) - 1, before the last removal."""
    config = TrainConfig(dataset="mnist1d", model="mlp", method="lbc", pattern=f"{n}:{m}", epochs=epochs,
                         label_smoothing=0.1, seed=seed, out=str(folder), progress=False, overwrite=True,
                         stop_after=math.ceil(epochs / 2)).resolved()
    result = train(config)
    data = load(config.dataset)
    model = model_for(config, data.x_train.shape[1:])
    load_run(result["checkpoint"], model, make_optimizer(model, config), None, config)
    return model, data


def loss_of(model, x, y):
    return float(softmax_cross_entropy(model.forward(x, train=False), y)[0])


def wilson(successes, trials, z=1.96):
    if trials == 0:
        return float("nan"), float("nan")
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return centre - half, centre + half


def measure(layer, model, x, y, groups_per_layer, rng):
    """Per sampled group with >= 2 alive: loss with best-scored alone, worst-scored alone; control pair."""
    method = layer.method
    scores = method.scores.value
    alive = method.current_alive()                                                 # (G, C)
    candidates = np.flatnonzero(alive.sum(1) >= 2)
    chosen = rng.choice(candidates, size=min(groups_per_layer, len(candidates)), replace=False)
    table = method.table.astype(bool)                                               # (C, M)
    w_abs = np.abs(to_groups(layer.weight.value, method.m, method.layout))         # (G, M)
    rows = []
    for g in chosen:
        idx = np.flatnonzero(alive[g])                                              # alive combinations
        best, worst = idx[np.argmax(scores[g, idx])], idx[np.argmin(scores[g, idx])]
        saved = scores[g].copy()
        losses = {}
        for name, comb in (("best", best), ("worst", worst), ("low_index", idx[0]), ("high_index", idx[-1])):
            if name in ("low_index", "high_index") and comb in (best, worst):
                losses[name] = losses["best" if comb == best else "worst"]
                continue
            scores[g] = 0
            scores[g, comb] = saved[comb]                                           # only this one alive
            losses[name] = loss_of(model, x, y)
            scores[g] = saved
        magnitude = idx[np.argmax((table[idx] * w_abs[g]).sum(1))]
        rows.append((losses["best"], losses["worst"], losses["low_index"], losses["high_index"],
                     bool(best == magnitude), len(idx)))
    return rows


def run(n, m, seed, epochs, groups_per_layer, eval_samples):
    t_f = epochs / 2
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        model, data = train_until_last_removal(n, m, seed, epochs, Path(folder) / "run")
    train_s = time.perf_counter() - start
    sparse = list(model.sparse_layers().values())
    x, y = data.x_train[:eval_samples], data.y_train[:eval_samples]
    base_loss = loss_of(model, x, y)
    rng = np.random.default_rng(seed + 2)
    rows = [r for layer in sparse for r in measure(layer, model, x, y, groups_per_layer, rng)]
    best, worst, low, high, magnitude, n_alive = (np.array(c) for c in zip(*rows))
    wins, ties = int((best < worst).sum()), int((best == worst).sum())
    control = int((low < high).sum())
    return {"pattern": f"{n}:{m}", "seed": seed, "epochs": epochs, "t_f": t_f, "measured_after_epoch":
            math.ceil(t_f) - 1, "k": sparse[0].method.k, "C": sparse[0].method.c, "groups": len(rows),
            "mean_alive": float(n_alive.mean()), "base_loss": base_loss, "train_seconds": train_s,
            "best_lower": wins, "ties": ties, "fraction_best_lower": wins / len(rows),
            "wilson95": wilson(wins, len(rows)), "mean_loss_worst_minus_best": float((worst - best).mean()),
            "control_fraction_low_index_lower": control / len(rows),
            "fraction_best_is_max_magnitude": float(magnitude.mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--groups", type=int, default=300, help="sampled groups per layer")
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--patterns", default="2:4,4:8")
    p.add_argument("--no-save", action="store_true", help="print the per-seed lines only")
    args = p.parse_args(argv)
    seeds, groups = (1, 60) if args.quick else (args.seeds, args.groups)
    results = []
    for pattern in args.patterns.split(","):
        n, m = (int(v) for v in pattern.split(":"))
        for seed in range(seeds):
            results.append(run(n, m, seed, args.epochs, groups, args.eval_samples))
            r = results[-1]
            print(f"{r['pattern']} seed {seed}: best-scored lower loss in {r['best_lower']}/{r['groups']} groups "
                  f"({r['fraction_best_lower']:.3f}, 95% CI {r['wilson95'][0]:.3f}-{r['wilson95'][1]:.3f}); "
                  f"control {r['control_fraction_low_index_lower']:.3f}; best = max |W| in "
                  f"{r['fraction_best_is_max_magnitude']:.3f}", flush=True)
    if args.no_save:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"lbc_claim_{datetime.date.today()}{'_quick' if args.quick else ''}"
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    write_report(results, RESULTS / f"{name}.md", args.eval_samples, "QUICK run" if args.quick else
                 f"{groups} sampled groups per layer")


def write_report(results, path, eval_samples, note):
    """Markdown table per seed, then pooled over seeds per pattern."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.node()} {platform.machine()} python {platform.python_version()}"
    epochs = results[0]["epochs"]
    header = ["pattern", "seed", "groups", "mean alive", "best-scored lower", "95% CI", "mean L_worst - L_best",
              "control (low index lower)", "best = max |W|", "base loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append(f"| {r['pattern']} | {r['seed']} | {r['groups']} | {r['mean_alive']:.2f} | "
                     f"{r['fraction_best_lower']:.3f} | {r['wilson95'][0]:.3f}-{r['wilson95'][1]:.3f} | "
                     f"{r['mean_loss_worst_minus_best']:.2e} | {r['control_fraction_low_index_lower']:.3f} | "
                     f"{r['fraction_best_is_max_magnitude']:.3f} | {r['base_loss']:.4f} |")
    pooled = ["| pattern | seeds | groups | best-scored lower | 95% CI | control (low index lower) |",
              "|---|---|---|---|---|---|"]
    for pattern in dict.fromkeys(r["pattern"] for r in results):
        rs = [r for r in results if r["pattern"] == pattern]
        trials, wins = sum(r["groups"] for r in rs), sum(r["best_lower"] for r in rs)
        control = sum(r["control_fraction_low_index_lower"] * r["groups"] for r in rs) / trials
        low, high = wilson(wins, trials)
        pooled.append(f"| {pattern} | {len(rs)} | {trials} | {wins / trials:.3f} | {low:.3f}-{high:.3f} | "
                      f"{control:.3f} |")
    text = (f"# LBC claim: best-scored vs worst-scored alive combination\n\n{machine}; {stamp}; "
            f"MNIST-1D MLP 40-256-256-10 (nmref.train, LBC strict on both hidden layers), {epochs} epochs planned, "
            f"t_f = {epochs / 2}, measured after epoch {math.ceil(epochs / 2) - 1}; loss on {eval_samples} "
            f"training samples; {note}\n\n" + "\n".join(lines) + "\n\nPooled over seeds:\n\n"
            + "\n".join(pooled) + "\n")
    print(text)
    path.write_text(text)
    print(f"saved {path} (and the .json beside it)")


if __name__ == "__main__":
    main()
