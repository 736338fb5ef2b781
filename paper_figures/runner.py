"""Training runs for the figures: a cache keyed by each run's full configuration, and parallel workers.

A run's key is the SHA-256 of its complete ``TrainConfig`` (defaults filled in, output paths left out), the
nmref version, the data mode (NMREF_FAST) and ``RECORD_VERSION``; its entry ``cache/<key>/`` holds
``run.json`` (config, per-epoch history, wall time) and ``arrays.npz`` (final weights, masks, method state,
per-epoch LBC snapshots). Entries are written to a temporary folder and renamed, so a killed run leaves none.
"""
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

CACHE_DIR = Path(__file__).resolve().parent / "cache"
RECORD_VERSION = 2                     # bump when what a run records changes
NOT_IN_KEY = ("out", "progress", "resume", "overwrite", "checkpoint_every", "stop_after", "eval_batch_size")
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def full_config(spec):
    """The complete configuration of a run as a dict (TrainConfig defaults resolved, output-only fields
    left out)."""
    from nmref.train import TrainConfig
    config = dataclasses.asdict(TrainConfig(**spec).resolved())
    return {k: v for k, v in config.items() if k not in NOT_IN_KEY}


def run_key(overrides):
    import nmref
    material = {"config": full_config(overrides), "nmref": nmref.__version__, "record": RECORD_VERSION,
                "fast": os.environ.get("NMREF_FAST", "0") not in ("", "0")}
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:20]


class RunResult:
    """A finished run from the cache: ``config``, ``history`` (list of per-epoch dicts), ``arrays``."""

    def __init__(self, folder):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "run.json").read_text())
        self.config, self.history, self.seconds = meta["config"], meta["history"], meta["seconds"]
        self.cpu_seconds = meta["cpu_seconds"]
        self.layers = meta["layers"]                   # sparse layer -> {"weight", "layout", "method"}
        self.n_train, self.n_test = meta["n_train"], meta["n_test"]
        with np.load(self.folder / "arrays.npz") as arrays:
            self.arrays = dict(arrays)

    def column(self, name):
        """One metric over the epochs, as a float array (nan where an epoch lacks it)."""
        return np.array([row.get(name, np.nan) for row in self.history], dtype=float)

    def final(self, name):
        return self.column(name)[-1]


def record_run(spec, folder):
    """Train one run and write its cache entry into ``folder`` (run.json + arrays.npz)."""
    from nmref.train import TrainConfig, train
    from . import recorder
    config = TrainConfig(**spec, out=str(folder / "run"), progress=False, overwrite=True,
                         checkpoint_every=spec.get("epochs") or 1_000_000)
    start, cpu = time.perf_counter(), time.process_time()
    with recorder.recording() as snapshots:
        result = train(config)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    history, arrays, layers = recorder.from_checkpoint(result["checkpoint"], result["history"])
    np.savez(folder / "arrays.npz", **arrays, **snapshots.arrays())
    meta = {"config": full_config(spec), "spec": spec, "history": history, "seconds": seconds, "cpu_seconds": cpu,
            "layers": layers, "n_train": result["n_train"], "n_test": result["n_test"]}
    (folder / "run.json").write_text(json.dumps(meta, default=_json_default))
    shutil.rmtree(folder / "run", ignore_errors=True)           # the checkpoint is not needed any more


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in run.json")


def execute(overrides, cache_dir):
    """Worker entry: train ``overrides`` unless cached; returns (key, seconds trained or 0.0)."""
    cache_dir = Path(cache_dir)
    key = run_key(overrides)
    if (cache_dir / key / "run.json").exists():
        return key, 0.0
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{key}-"))
    try:
        start = time.perf_counter()
        record_run(overrides, tmp)
        try:
            os.rename(tmp, cache_dir / key)
        except OSError:                                            # another process finished it first
            shutil.rmtree(tmp, ignore_errors=True)
        return key, time.perf_counter() - start
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load(key, cache_dir=CACHE_DIR):
    return RunResult(Path(cache_dir) / key)


def ensure(wanted, cache_dir=CACHE_DIR, jobs=1, progress=True):
    """Make sure every run in ``wanted`` (figure name -> list of spec dicts) is cached; identical runs across
    figures are trained once. Returns (key -> RunResult, number of runs trained now)."""
    from tqdm.auto import tqdm
    cache_dir = Path(cache_dir)
    keys = {name: [run_key(s) for s in specs] for name, specs in wanted.items()}
    unique = {}
    for name, specs in wanted.items():
        for key, s in zip(keys[name], specs):
            unique.setdefault(key, s)
    todo = {k: s for k, s in unique.items() if not (cache_dir / k / "run.json").exists()}
    overall = tqdm(total=len(unique), desc="all figures: training runs", unit="run", position=0,
                   disable=not progress, initial=len(unique) - len(todo))
    bars = {name: tqdm(total=len(set(ks)), desc=f"  {name}", unit="run", position=i + 1, leave=True,
                       disable=not progress, initial=len({k for k in ks if k not in todo}))
            for i, (name, ks) in enumerate(keys.items())}

    def done(key):
        overall.update(1)
        for name, ks in keys.items():
            if key in ks:
                bars[name].update(1)

    try:
        if todo:
            with worker_pool(min(jobs, len(todo))) as pool:
                futures = {pool.submit(execute, s, str(cache_dir)): k for k, s in todo.items()}
                for future in as_completed(futures):
                    future.result()
                    done(futures[future])
    finally:
        for bar in (*bars.values(), overall):
            bar.close()
    return {k: load(k, cache_dir) for k in unique}, len(todo)


class worker_pool:
    """A spawn-context pool of ``jobs`` worker processes, each with one Numba / BLAS / OpenMP thread.

    One thread each, even with spare cores: the matmuls of these small models gain nothing from BLAS
    threads, and threaded OpenBLAS on a busy machine made an epoch about 4x slower (measured: 27 s vs 7 s
    wall for one SR-STE epoch on 8k samples, 2 cores under load); parallelism comes from ``jobs``. The
    variables are set in this process while the pool starts, for the spawned workers to inherit."""

    def __init__(self, jobs):
        self.jobs = jobs

    def __enter__(self):
        self.saved = {v: os.environ.get(v) for v in THREAD_VARS}
        os.environ.update({v: "1" for v in THREAD_VARS})
        self.pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"))
        return self.pool

    def __exit__(self, *exc):
        try:
            self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            for var, value in self.saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
        return False
