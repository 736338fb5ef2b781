"""Accuracy table at `nmref train`'s defaults: dense, STE, SR-STE and LBC at 2:4, 4:8, 1:4, 2:8 on MNIST-1D
(40k training samples, cnn1d, 10 epochs, batch 128), mean ± std over seeds, with LBC's forward density
averaged over training and the time of each run. A measurement, not a test: `python
benchmarks/accuracy_patterns.py [--seeds 3] [--jobs 2] [--cache DIR] [--no-save]`. Runs go through paper_figures'
run cache (tiny data under NMREF_FAST=1, kept apart in the cache by its key)."""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save  # noqa: E402
from paper_figures import runner  # noqa: E402
from paper_figures.fig4_accuracy import density  # noqa: E402

PATTERNS = ("2:4", "4:8", "1:4", "2:8")
METHODS = ("ste", "srste", "lbc")


def specs(seeds):
    runs = [{"method": "dense", "seed": s} for s in range(seeds)]
    runs += [{"method": m, "pattern": p, "seed": s} for m in METHODS for p in PATTERNS for s in range(seeds)]
    return runs


def cell(values, scale=100.0):
    values = [scale * v for v in values]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {std:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cache", default=runner.CACHE_DIR, help="run cache folder (default: paper_figures/cache)")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    start = time.perf_counter()
    wanted = {"accuracy_patterns": specs(args.seeds)}
    results, trained = runner.ensure(wanted, Path(args.cache), args.jobs, progress=True)
    by = {}
    for spec in wanted["accuracy_patterns"]:
        r = results[runner.run_key(spec)]
        by.setdefault((spec["method"], spec.get("pattern")), []).append(r)
    acc = lambda runs: [r.final("test_acc") for r in runs]                                  # noqa: E731
    secs = lambda runs: statistics.fmean(r.seconds for r in runs)                           # noqa: E731
    dense = by[("dense", None)]
    made = sum(r.seconds for r in results.values())
    lines = [f"{len(results)} runs ({trained} trained in this invocation, the rest from paper_figures' run cache), "
             f"{made:.0f} s of training wall time in all when they were made (workers of one thread, "
             f"{args.jobs} in parallel); this invocation took {time.perf_counter() - start:.0f} s.", "",
             f"cnn1d, {dense[0].n_train} training / {dense[0].n_test} test samples, {dense[0].config['epochs']} "
             f"epochs, batch {dense[0].config['batch_size']}, SGD lr 0.1 momentum 0.9 wd 5e-5, warm-up 5/120 then "
             f"cosine; SR-STE lam 2e-4; LBC strict, t_f = half the run, p = 3; seeds 0..{args.seeds - 1}. "
             "Final test accuracy (%), mean ± sample std over seeds.", "",
             f"Dense baseline: {cell(acc(dense))} % ({secs(dense):.0f} s per run).", "",
             "| pattern | STE | SR-STE | LBC | LBC mean forward density | s per run (STE / SR-STE / LBC) |",
             "|---|---|---|---|---|---|"]
    for pattern in PATTERNS:
        ste, srste, lbc = (by[(m, pattern)] for m in METHODS)
        lbc_density = statistics.fmean(density(r) for r in lbc)
        lines.append(f"| {pattern} | {cell(acc(ste))} | {cell(acc(srste))} | {cell(acc(lbc))} | {lbc_density:.2f} | "
                     f"{secs(ste):.0f} / {secs(srste):.0f} / {secs(lbc):.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_save:
        print(save("accuracy_patterns", "Accuracy by pattern and method, `nmref train` defaults on MNIST-1D", text))


if __name__ == "__main__":
    main()
