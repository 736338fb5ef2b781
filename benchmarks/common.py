"""Shared benchmark helpers: alternating timings, the machine description, markdown tables saved under
benchmarks/results/NAME_<date>.md."""
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def today():
    return datetime.date.today().isoformat()


def machine():
    """One line: CPU model, cores usable by this process, Python / NumPy / BLAS (and torch when imported)."""
    import sys

    import numpy as np
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [cpu, f"{cores} cores usable", f"Python {platform.python_version()}", f"NumPy {np.__version__}"]
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    if blas:
        parts.append(f"BLAS {blas.get('name', '?')} {blas.get('version', '')}".strip())
    if "torch" in sys.modules:
        parts.append(f"torch {sys.modules['torch'].__version__}")
    try:
        parts.append(f"load average {os.getloadavg()[0]:.1f}")
    except OSError:
        pass
    return ", ".join(parts)


def alternate(runs, repeats=10, warmup=2):
    """Time each zero-arg callable in ``runs`` (a dict) ``repeats`` times, interleaved so that load changes
    hit every contender alike; returns {name: median seconds}."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def table(headers, rows):
    """A markdown table; floats are written with 3 significant digits."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save(name, title, body, notes=""):
    """Write benchmarks/results/NAME_<date>.md with the title, machine, date, table and notes; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}_{today()}.md"
    text = f"# {title}\n\nMachine: {machine()}\nDate: {today()}\n\n{body}\n"
    if notes:
        text += f"\n{notes}\n"
    path.write_text(text)
    return path
