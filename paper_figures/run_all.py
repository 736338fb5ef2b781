"""Regenerate every figure: ``nmref figures [--full] [--only NAME] [--out DIR] [--jobs K]``.

Collects the training runs all selected figures need, trains the ones not in the cache (identical runs
once, ``--jobs`` of them in parallel), then draws each figure (PNG + CSV + caption) and rebuilds index.md.
"""
import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import FIGURES, common, runner


@dataclass
class Report:
    mode: str
    figures: list
    files: list
    runs: int
    trained: int
    seconds: float


def parser():
    p = argparse.ArgumentParser(prog="nmref figures", description=(
        "Regenerate the SR-STE and LBC papers' figures and tables at small scale on MNIST-1D (PNG + CSV + "
        "index.md). Quick mode by default (< 10 min on 2 cores); NMREF_FAST=1 gives the tiny test mode."))
    p.add_argument("--full", action="store_true", help="more seeds and epochs on all 40k training samples")
    p.add_argument("--only", action="append", metavar="NAME", choices=FIGURES,
                   help=f"draw only this figure (repeatable): {', '.join(FIGURES)}")
    p.add_argument("--out", type=Path, default=common.OUT_DIR, help="output folder (default paper_figures/out)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="training runs in parallel processes (default: the number of CPU cores)")
    p.add_argument("--cache", type=Path, default=runner.CACHE_DIR,
                   help="cache of finished training runs (default paper_figures/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def run(argv=None):
    """Parse ``argv``, train what is missing, draw; returns a Report."""
    args = parser().parse_args(argv)
    if args.jobs < 1:
        parser().error(f"--jobs {args.jobs} must be >= 1")
    start, cpu_start = time.perf_counter(), cpu_seconds()
    mode = common.pick_mode(args.full)
    names = [n for n in FIGURES if not args.only or n in args.only]
    modules = {n: importlib.import_module(f"paper_figures.{n}") for n in names}
    wanted = {n: m.runs(mode) for n, m in modules.items()}
    results, trained = runner.ensure(wanted, args.cache, args.jobs, progress=not args.no_progress)
    get = lambda spec: results[runner.run_key(spec)]                           # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    files = []
    for name in _bar(names, "drawing figures", args.no_progress):
        files += modules[name].make(mode, get, args.out)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
    files.append(common.write_index(args.out, FIGURES, header(mode, results, trained, seconds, args, cpu)))
    return Report(mode.name, names, files, len(results), trained, seconds)


def _bar(items, desc, disabled):
    from tqdm.auto import tqdm
    return tqdm(items, desc=desc, unit="figure", disable=disabled)


def cpu_seconds():
    """CPU time of this process and its finished children (the training workers), user + system."""
    import resource
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def header(mode, results, trained, seconds, args, cpu):
    import nmref
    training_cpu = sum(r.cpu_seconds for r in results.values())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"# nmref paper figures (mode `{mode.name}`)\n\n"
            f"Small-scale regenerations of figures and tables of SR-STE (Zhou et al., ICLR 2021) and LBC "
            f"(Zhang et al., NeurIPS 2022) on MNIST-1D with a small 1D CNN, made by `nmref figures"
            f"{' --full' if mode.name == 'full' else ''}` (nmref {nmref.__version__}). The last invocation "
            f"used {len(results)} distinct training runs ({trained} trained now, the rest from the cache; "
            f"{training_cpu:.0f} CPU-seconds of training in all when they were made) and took {seconds:.0f} s "
            f"wall, {cpu:.0f} CPU-seconds, with `--jobs {args.jobs}` on {os.cpu_count()} cores (1-minute load "
            f"average {load:.1f} at the end: other work on the machine lengthens the wall time). Every number in a caption is read from the run results; the CSV beside each "
            f"figure holds every number plotted.{scale_note(mode)}")


def scale_note(mode):
    """Quick and tiny modes say plainly that they are too small to show the papers' effects."""
    if mode.name == "full":
        return ""
    seeds = sorted({len(mode.sweep_seeds), len(mode.seeds)})
    return (f"\n\n**Mode `{mode.name}` is too small to show the papers' effects.** With {mode.train_samples} "
            f"training samples, {mode.epochs} epochs and {'-'.join(map(str, seeds))} seeds, SR-STE's term is far "
            f"weaker in total than in the paper's ImageNet recipe (Figure 2's caption gives the factor) and the "
            f"accuracy differences are tenths of a point, comparable to the spread over seeds. Use this mode to check that "
            f"the pipeline runs; the small-scale reproductions are `nmref figures --full` "
            f"(paper_figures/out_full/index.md).")


def main(argv=None):
    report = run(sys.argv[1:] if argv is None else argv)
    print(f"{len(report.figures)} figure(s) in {report.seconds:.1f} s ({report.trained} of {report.runs} "
          f"training runs trained now, the rest from the cache); index: "
          f"{[str(f) for f in report.files if str(f).endswith('index.md')][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
