"""LBC training-step time relative to SR-STE on the same model, and LBC's score update alone at 8:16.

Part 1: one training step (before_step, forward, softmax cross-entropy, backward, SGD momentum step) of an
MLP (40-256-256-10) and a 1D CNN on MNIST-1D-shaped batches, float32 on the CPU, SR-STE vs LBC for
2:4, 4:8 and 2:8; SR-STE and LBC steps are timed in alternating blocks, medians reported. LBC is timed at
the start of training (k = 0) and in the middle of removal (epoch t_f / 2, k > 0). Target: LBC / SR-STE
under 1.5x. LBC's forward density is reported beside it (it trains mostly dense until late).

Part 2: the score update alone for 8:16 on a 256x256 weight (G = 4096 groups, C = 12870 combinations,
float32): mask_from_scores, score_grad, the ranked removal (the first step of an epoch, when k grows) and
the strict removal with k unchanged (every other step), next to SR-STE's 8:16 magnitude mask of the same
weight, with the peak memory of one update (tracemalloc, a separate pass); the (G, C) score gradient the
update returns is itself as large as the scores.

LBC's per-step work scales with G * C (for 4:8, C / M = 8.75 scores per weight, each also carried by the
optimizer), so on a small MLP, where the matmuls are cheap, LBC's step costs several times SR-STE's; on a
model with more compute per weight (the 1D CNN) the ratio is near 1. On a shared machine run with
OMP_NUM_THREADS=1: BLAS threads fighting other jobs for 2 cores make every number meaningless.

    python benchmarks/bench_lbc.py             # full table, saved under benchmarks/results/
    python benchmarks/bench_lbc.py --quick     # small repeat counts while developing
"""
import argparse
import datetime
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from nmref.layers import Conv1d, Flatten, Linear, ReLU, Sequential
from nmref.lbc import LBC, combinations, mask_from_scores, remove_lowest, removal_schedule, score_grad
from nmref.losses import softmax_cross_entropy
from nmref.masks import nm_mask
from nmref.optim import SGD, param_groups
from nmref.sparsity import SRSTE

PATTERNS = ((2, 4), (4, 8), (2, 8))
EPOCHS = 120
RESULTS = Path(__file__).parent / "results"


def mlp(method, rng):
    return Sequential(Linear(40, 256, method=method, rng=rng), ReLU(),
                      Linear(256, 256, method=method, rng=rng), ReLU(),
                      Linear(256, 10, rng=rng))


def cnn1d(method, rng):
    return Sequential(Conv1d(1, 32, 5, padding=2, rng=rng), ReLU(),
                      Conv1d(32, 64, 3, padding=1, method=method, rng=rng), ReLU(),
                      Conv1d(64, 64, 3, padding=1, method=method, rng=rng), ReLU(),
                      Flatten(), Linear(64 * 40, 10, rng=rng))


MODELS = {"mlp": (mlp, (40,)), "cnn1d": (cnn1d, (1, 40))}


class Trainer:
    """One model, its optimizer and a fixed batch; ``step()`` runs one full training step."""

    def __init__(self, model_name, factory, epoch, batch, seed=0):
        build, shape = MODELS[model_name]
        rng = np.random.default_rng(seed)
        self.model = build(factory, rng)
        self.sparse = list(self.model.sparse_layers().values())
        for layer in self.sparse:
            layer.method.on_epoch(epoch, EPOCHS)
        groups = param_groups(self.model.params(), {"scores": {"weight_decay": 1e-4}}
                              if any(p.group == "scores" for p in self.model.params()) else None)
        self.optimizer = SGD(groups, lr=0.01, momentum=0.9, weight_decay=5e-5)
        self.x = rng.standard_normal((batch, *shape)).astype(np.float32)
        self.y = rng.integers(0, 10, batch)

    def step(self):
        for layer in self.sparse:
            layer.method.before_step()
        logits = self.model.forward(self.x)
        _, dlogits = softmax_cross_entropy(logits, self.y)
        self.model.backward(dlogits)
        self.optimizer.step()

    def density(self):
        kept = sum(layer.method.density() * layer.weight.value.size for layer in self.sparse)
        return kept / sum(layer.weight.value.size for layer in self.sparse)


def median_step_times(trainers, blocks, steps):
    """Median seconds per step of each trainer, timed in alternating blocks after one warm-up block."""
    times = {name: [] for name in trainers}
    for block in range(blocks + 1):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(steps):
                trainer.step()
            if block:
                times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def training_rows(blocks, steps, batch):
    rows = []
    for model_name in MODELS:
        for n, m in PATTERNS:
            mid = EPOCHS // 4                                  # t_f = EPOCHS / 2: half way through removal
            trainers = {"srste": Trainer(model_name, lambda: SRSTE(n, m), 0, batch),
                        "lbc_start": Trainer(model_name, lambda: LBC(n, m), 0, batch),
                        "lbc_mid": Trainer(model_name, lambda: LBC(n, m), mid, batch)}
            t = median_step_times(trainers, blocks, steps)
            k_mid = trainers["lbc_mid"].sparse[0].method.k
            rows.append((model_name, f"{n}:{m}", t["srste"] * 1e3, t["lbc_start"] * 1e3, t["lbc_mid"] * 1e3,
                         t["lbc_start"] / t["srste"], t["lbc_mid"] / t["srste"], k_mid,
                         trainers["lbc_mid"].density()))
            print("  " + " | ".join(fmt(v) for v in rows[-1]), flush=True)
    return rows


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def score_update_row(repeats):
    """8:16 on 256x256: each part of LBC's score update, SR-STE's mask of the same weight, and the peak memory
    of a whole update (mask + score gradient + ranked removal) over the (G, C) scores it works on."""
    n, m = 8, 16
    rng = np.random.default_rng(0)
    table = combinations(n, m)
    c = len(table)
    weight = rng.standard_normal((256, 256)).astype(np.float32)
    g_count = weight.size // m
    k = removal_schedule(EPOCHS // 4, c, 0, EPOCHS / 2)
    alpha = rng.uniform(0.5, 1.5, (g_count, c)).astype(np.float32)
    alive = np.ones((g_count, c), bool)
    g, w = rng.standard_normal((2, g_count, m)).astype(np.float32)
    out = np.empty_like(alpha)
    settled_alpha, settled_alive = alpha.copy(), alive.copy()
    remove_lowest(settled_alpha, settled_alive, k)
    t_mask = timed(lambda: mask_from_scores(settled_alpha, settled_alive, table), repeats)
    t_grad = timed(lambda: score_grad(g, w, settled_alive, table, out=out), repeats)
    t_rank = timed(lambda: remove_lowest(alpha.copy(), alive.copy(), k), repeats)
    t_copy = timed(lambda: (alpha.copy(), alive.copy()), repeats)
    t_steady = timed(lambda: np.logical_and(settled_alive, settled_alpha != 0, out=settled_alive), repeats)
    t_srste = timed(lambda: nm_mask(weight, n, m), repeats)
    a, al = alpha.copy(), alive.copy()
    tracemalloc.start()
    mask_from_scores(a, al, table)
    score_grad(g, w, al, table)
    remove_lowest(a, al, k)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    step = t_mask + t_grad + t_steady
    return ("8:16 256x256", g_count, c, k, t_mask, t_grad, t_rank - t_copy, t_steady, step, t_srste,
            step / t_srste, alpha.nbytes / 2**20, peak / 2**20)


def fmt(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats (development); not for reporting")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", default=None, help="markdown file (default benchmarks/results/bench_lbc_<date>.md)")
    args = p.parse_args(argv)
    blocks, steps, repeats = (2, 3, 2) if args.quick else (7, 10, 7)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    machine = (f"{platform.node()} {platform.machine()} {platform.processor() or ''} python "
               f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at "
               f"start, OMP_NUM_THREADS={threads}")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"bench_lbc on {machine}, {stamp}, numpy {np.__version__}, quick={args.quick}")
    header1 = ["model", "pattern", "SR-STE ms/step", "LBC k=0 ms/step", "LBC mid ms/step", "LBC k=0 / SR-STE",
               "LBC mid / SR-STE", "k mid", "LBC mid density"]
    print(" | ".join(header1))
    rows1 = training_rows(blocks, steps, args.batch)
    row2 = score_update_row(repeats)
    header2 = ["case", "G", "C", "k", "mask ms", "score grad ms", "ranked removal ms (once per epoch)",
               "strict removal, k unchanged ms", "LBC update per step ms", "SR-STE mask ms", "ratio",
               "scores MB (G, C) f32", "peak MB of one update (tracemalloc)"]
    text = (f"# bench_lbc\n\n{machine}; {stamp}; numpy {np.__version__}; batch {args.batch}; "
            f"{'QUICK (development) run' if args.quick else f'{blocks} blocks x {steps} steps, median'}\n\n"
            "## Training step, LBC vs SR-STE (float32, CPU; target LBC / SR-STE < 1.5)\n\n"
            f"{table(header1, rows1)}\n\n## Score update alone, 8:16 on a 256x256 weight\n\n"
            f"{table(header2, [row2])}\n")
    print(text)
    out = Path(args.out) if args.out else RESULTS / f"bench_lbc_{datetime.date.today()}{'_quick' if args.quick else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"saved {out}")


if __name__ == "__main__":
    main()
