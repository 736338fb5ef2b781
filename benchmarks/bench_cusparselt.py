"""2:4 matmul on the GPU: nmref.cusparselt.SparseMatmul vs CuPy dense (cuBLAS) vs PyTorch's torch._cslt_sparse_mm.

nmref = SparseMatmul as shipped: cuSPARSELt, and for batch <= 64 also nmref's own mma.sp kernel, the faster
kept per batch size; "cuSPARSELt only" and "search only" = SparseMatmul(engines="cusparselt") with and without
the pinned-config candidate.

Shape M x K x N: M = batch (rows of x), K = in_features, N = out_features; y (M, N) = x (M, K) @ W.T with
W (N, K) 2:4 along K. Every method gets the same CuPy-allocated inputs (PyTorch through DLPack, no copy),
rotated over several (x, W) pairs (as many as make 256 MiB) so the weights are read from HBM, not L2.

Two times per method, medians of CUDA-event measurements after warm-up:
  gpu     per-call GPU time, the launches queued behind a spin kernel so the GPU never waits for the host;
  steady  time per call of back-to-back calls from Python (max of host overhead and GPU time).
The whole table runs --repeats times (fresh objects, fresh algorithm search); the summary gives the median
over repeats and the spread (max - min) / median.

    python benchmarks/bench_cusparselt.py                     # all shapes, fp16 and bf16, 3 repeats
    python benchmarks/bench_cusparselt.py --shapes 16x4096x4096 --repeats 1 --iters 10
    python benchmarks/bench_cusparselt.py --merge fp16.json bf16.json --markdown table.md   # one table from several
                                                                                           # runs (no GPU needed)
"""
import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from nmref.kernels.sparse_mma import MAX_BATCH as MAX_MMA_BATCH     # NumPy only: no CuPy needed to import

SHAPES = {                                  # name: (M batch, K in, N out)
    "16x4096x4096": (16, 4096, 4096),
    "256x4096x4096": (256, 4096, 4096),
    "4096x4096x4096": (4096, 4096, 4096),
    "8192x8192x8192": (8192, 8192, 8192),
    "16384x16384x16384": (16384, 16384, 16384),
    "32768x4096x11008": (32768, 4096, 11008),
    "32768x11008x4096": (32768, 11008, 4096),
}
METHODS = ("cupy_dense", "nmref_cslt", "nmref_cusparselt_only", "nmref_search_only", "torch_cslt", "torch_dense")
ROTATE_BYTES = 256 * 2**20                  # weights + inputs cycled per method: several times the L2

SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names from: " + ", ".join(SHAPES))
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=20, help="timed calls per measurement")
    p.add_argument("--search", type=int, default=1, help="1: cuSPARSELt's algorithm search per plan; 0: default config")
    p.add_argument("--json", default=None, help="write raw results here")
    p.add_argument("--markdown", default=None, help="write the summary table here")
    p.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                   help="no measuring: one table from these --json files (e.g. one per dtype, same machine), "
                        "repeat i of every file taken as repeat i of the table")
    return p.parse_args(argv)


class Timer:
    """CUDA-event timing on the legacy default stream, which CuPy and PyTorch both use by default."""

    def __init__(self, cp):
        self.cp = cp
        self.spin = cp.RawKernel(SPIN, "spin")
        self._launch_spin(1000)
        cp.cuda.Device().synchronize()
        self.cycles_per_ms = self._calibrate()

    def _launch_spin(self, cycles):
        self.spin((1,), (1,), (np.int64(int(cycles)),))

    def _calibrate(self):
        cp = self.cp
        start, end = cp.cuda.Event(), cp.cuda.Event()
        cycles = 20_000_000
        start.record()
        self._launch_spin(cycles)
        end.record()
        end.synchronize()
        return cycles / cp.cuda.get_elapsed_time(start, end)

    def measure(self, call, n_inputs, iters):
        cp = self.cp
        sync = cp.cuda.Device().synchronize
        for i in range(n_inputs):                     # every input once: plans and searches built here
            call(i)
        sync()
        t0 = time.perf_counter()
        call(0)
        sync()
        slow = time.perf_counter() - t0 > 0.02         # a slow host path (PyTorch's fp16 plan per call): few calls
        calls = 2 if slow else 10
        t0 = time.perf_counter()
        for i in range(calls):
            call(i % n_inputs)
        host_ms = (time.perf_counter() - t0) * 1e3 / calls
        sync()
        if slow:
            iters = 3
        cycles = self.cycles_per_ms * (2.0 * host_ms * iters + 1.0)
        for _ in range(4):                           # GPU time: launches queued behind a spin kernel
            sync()
            starts = [cp.cuda.Event() for _ in range(iters)]
            ends = [cp.cuda.Event() for _ in range(iters)]
            self._launch_spin(cycles)
            marker = cp.cuda.Event(disable_timing=True)
            marker.record()
            for i in range(iters):
                starts[i].record()
                call(i % n_inputs)
                ends[i].record()
            starved = marker.done                    # the spin ended before the last launch was queued
            ends[-1].synchronize()
            if not starved:
                break
            cycles *= 4
        gpu = [cp.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)]
        steady = []
        for _ in range(3):                           # steady state: back-to-back calls from Python
            sync()
            start, end = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            for i in range(iters):
                call(i % n_inputs)
            end.record()
            end.synchronize()
            steady.append(cp.cuda.get_elapsed_time(start, end) / iters)
        return {"gpu_ms": statistics.median(gpu), "steady_ms": statistics.median(steady), "host_ms": host_ms,
                "gpu_ms_min": min(gpu), "gpu_ms_max": max(gpu), "starved": bool(starved)}


def random_24(cp, rows, cols, dtype, seed):
    """Random normal (rows, cols) with the 2 largest |w| of every 4 along cols kept."""
    w = cp.random.default_rng(seed).standard_normal((rows, cols // 4, 4), dtype=cp.float32)   # (rows, cols/4, 4)
    a = cp.abs(w)
    index = cp.arange(4)
    below = (a[..., None, :] < a[..., :, None]) | ((a[..., None, :] == a[..., :, None]) & (index < index[:, None]))
    keep = below.sum(axis=3) >= 2                                                 # rank among the 4, ties by index
    return (w * keep).reshape(rows, cols).astype(dtype)


def rotated_inputs(cp, np_dtype, m, k, n, seed):
    """(ws, xs): as many 2:4 weights (N, K) and inputs (M, K) as fill ROTATE_BYTES (1 to 8), seeds seed + i and
    seed + 100 + i, so that timed calls cycling through them read the weights from HBM, not the L2."""
    n_inputs = int(min(8, max(1, math.ceil(ROTATE_BYTES / ((n * k + m * k) * np_dtype.itemsize)))))
    ws = [random_24(cp, n, k, np_dtype, seed + i) for i in range(n_inputs)]                       # (N, K)
    xs = [cp.random.default_rng(seed + 100 + i).standard_normal((m, k), dtype=cp.float32).astype(np_dtype)
          for i in range(n_inputs)]                                                             # (M, K)
    return ws, xs


def as_torch(torch, a):
    """A zero-copy torch view of a CuPy array (bfloat16 through a uint16 view)."""
    if a.dtype.name == "bfloat16":
        return torch.from_dlpack(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_dlpack(a)


def rel(a, b):
    a, b = a.astype(np.float32), b.astype(np.float32)
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def bench_shape(cp, torch, cslt, timer, name, dtype, iters, seed, search=True):
    m, k, n = SHAPES[name]
    np_dtype = cslt.np_dtype(dtype)
    ws, xs = rotated_inputs(cp, np_dtype, m, k, n, seed)
    n_inputs = len(ws)
    results, errors = {}, {}
    calls = {"cupy_dense": lambda i: cp.matmul(xs[i], ws[i].T)}
    t0 = time.perf_counter()
    ops = [cslt.SparseMatmul(w, search=search) for w in ws]
    build_s = time.perf_counter() - t0
    calls["nmref_cslt"] = lambda i: ops[i](xs[i])
    ops_cslt = ops_searched = None
    if m <= MAX_MMA_BATCH:       # where nmref's mma.sp kernel is a candidate: cuSPARSELt alone, for comparison
        ops_cslt = [cslt.SparseMatmul(w, search=search, engines="cusparselt") for w in ws]
        calls["nmref_cusparselt_only"] = lambda i: ops_cslt[i](xs[i])
    if search:                   # the searched plan alone, without the pinned-config candidate (round 2 of issue 7)
        ops_searched = [cslt.SparseMatmul(w, search=True, pin_config=False, engines="cusparselt") for w in ws]
        calls["nmref_search_only"] = lambda i: ops_searched[i](xs[i])
    if torch is not None:
        wts, xts = [as_torch(torch, w) for w in ws], [as_torch(torch, x) for x in xs]
        calls["torch_dense"] = lambda i: torch.mm(xts[i], wts[i].t())
        if torch.backends.cusparselt.is_available():
            wcs = [torch._cslt_compress(w) for w in wts]
            calls["torch_cslt"] = lambda i: torch._cslt_sparse_mm(wcs[i], xts[i].t(), transpose_result=True)
    t0 = time.perf_counter()
    reference = None
    for method in METHODS:
        if method not in calls:
            continue
        try:
            y = calls[method](0)
            is_torch = torch is not None and isinstance(y, torch.Tensor)
            y_host = y.float().cpu().numpy() if is_torch else cp.asnumpy(y.astype(cp.float32))
            if reference is None:
                reference = y_host
            errors[method] = rel(y_host, reference)
            results[method] = timer.measure(calls[method], n_inputs, iters)
        except Exception as exc:                                   # report, keep the other methods
            results[method] = {"error": f"{type(exc).__name__}: {exc}"}
    plans = [op.plan_info(m) for op in ops]
    del ops, calls
    ops_searched = ops_cslt = None
    cp.get_default_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()
    flop = 2.0 * m * n * k
    return {"shape": name, "M": m, "K": k, "N": n, "dtype": dtype, "n_inputs": n_inputs, "flop": flop,
            "build_s": build_s, "measure_s": time.perf_counter() - t0, "rel_err_vs_first": errors,
            "nmref_plans": plans, "methods": results}


def environment(cp, torch, cslt):
    from nvmath.bindings import cusparseLt as lt
    handle = lt.init()
    version = lt.get_version(handle)
    lt.destroy(handle)
    props = cp.cuda.runtime.getDeviceProperties(0)
    import nvmath
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpu": props["name"].decode(),
            "compute_capability": cp.cuda.Device(0).compute_capability, "cusparselt": version,
            "cupy": cp.__version__, "nvmath": nvmath.__version__, "torch": None if torch is None else torch.__version__,
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(), "driver": cp.cuda.runtime.driverGetVersion(),
            "python": platform.python_version()}


def summarize(runs, env):
    """Markdown: per dtype and shape, medians over repeats, spread, and ratios vs nmref."""
    keys = sorted({(r["dtype"], r["shape"]) for run in runs for r in run}, key=lambda t: (t[0], list(SHAPES).index(t[1])))
    lines = [f"# cuSPARSELt 2:4 matmul benchmark: {env['gpu']}, {env['date']}", "",
             f"cuSPARSELt {env['cusparselt']}, CuPy {env['cupy']}, nvmath-python {env['nvmath']}, "
             f"PyTorch {env['torch']}, CUDA runtime {env['cuda_runtime']}, driver {env['driver']}; nmref's "
             f"algorithm search {'on' if env.get('search') else 'off (default configuration)'}.", "",
             "M x K x N: M = batch, K = in_features, N = out_features; y = x @ W.T, W (N, K) 2:4 along K. "
             f"Times in microseconds, median over the repeats (up to {len(runs)}; a row's count is in its last "
             "column) of the per-repeat medians; spread = (max - min) / median over repeats. Ratios > 1 mean nmref is "
             "faster.", ""]
    if env.get("merged"):
        lines += ["Joined from separate runs on one machine (`--merge`): " + ", ".join(env["merged"]) + ".", ""]
    for mode in ("gpu", "steady"):
        lines += [f"## {mode} time per call" + (" (GPU kernel time, launches queued)" if mode == "gpu" else
                                                  " (back-to-back calls from Python, host overhead included)"), "",
                  "| dtype | M x K x N | cupy dense | nmref | nmref cuSPARSELt only | nmref search only | torch cslt | "
                  "torch dense | dense/nmref | dense/cuSPARSELt only | search-only/nmref | torch_cslt/nmref | "
                  "nmref TFLOP/s (dense-equivalent) | spread nmref | spread dense | spread torch cslt | "
                  "nmref plans kept: mma_sp / pinned config / searched | repeats |",
                  "| --- | --- |" + " ---: |" * 14 + " --- | ---: |"]
        for dtype, shape in keys:
            rows = [r for run in runs for r in run if (r["dtype"], r["shape"]) == (dtype, shape)]
            med, spread = {}, {}
            for method in METHODS:
                values = [r["methods"][method][f"{mode}_ms"] * 1e3 for r in rows
                          if method in r["methods"] and f"{mode}_ms" in r["methods"][method]]
                if values:
                    med[method] = statistics.median(values)
                    spread[method] = (max(values) - min(values)) / med[method]
            fmt = lambda mth: f"{med[mth]:.1f}" if mth in med else "n/a"
            ratio = lambda mth: f"{med[mth] / med['nmref_cslt']:.2f}x" if mth in med and "nmref_cslt" in med else "n/a"
            sprd = lambda mth: f"{100 * spread[mth]:.1f}%" if mth in spread else "n/a"
            tflops = f"{rows[0]['flop'] / (med['nmref_cslt'] * 1e-6) / 1e12:.0f}" if "nmref_cslt" in med else "n/a"
            kept = [p for r in rows for p in r.get("nmref_plans", []) if p]
            mma = sum(p.get("engine") == "mma_sp" for p in kept)
            pinned = sum(bool(p["pinned"]) for p in kept)
            only = (f"{med['cupy_dense'] / med['nmref_cusparselt_only']:.2f}x"
                    if "cupy_dense" in med and "nmref_cusparselt_only" in med else "= nmref")
            lines.append(f"| {dtype} | {shape} | {fmt('cupy_dense')} | {fmt('nmref_cslt')} | "
                         f"{fmt('nmref_cusparselt_only') if 'nmref_cusparselt_only' in med else '= nmref'} | "
                         f"{fmt('nmref_search_only')} | {fmt('torch_cslt')} | {fmt('torch_dense')} | {ratio('cupy_dense')} | "
                         f"{only} | {ratio('nmref_search_only')} | {ratio('torch_cslt')} | {tflops} | "
                         f"{sprd('nmref_cslt')} | {sprd('cupy_dense')} | {sprd('torch_cslt')} | "
                         f"{mma} / {pinned} / {len(kept) - mma - pinned} | {len(rows)} |")
        lines.append("")
    host = [(r["dtype"], r["shape"], {m: v.get("host_ms") for m, v in r["methods"].items()}) for r in runs[-1]]
    lines += ["## host time per call (last repeat, microseconds, Python enqueue only)", "",
              "| dtype | M x K x N | " + " | ".join(METHODS) + " |", "| --- | --- |" + " ---: |" * len(METHODS)]
    for dtype, shape, h in host:
        lines.append(f"| {dtype} | {shape} | " + " | ".join(f"{h[m] * 1e3:.1f}" if h.get(m) else "n/a" for m in METHODS) + " |")
    errors = [(r["dtype"], r["shape"], m, v["error"]) for run in runs for r in run for m, v in r["methods"].items()
              if "error" in v]
    worst = max((e for run in runs for r in run for e in r["rel_err_vs_first"].values()), default=float("nan"))
    starved = sum(v.get("starved", False) for run in runs for r in run for v in r["methods"].values())
    lines += ["", f"Largest relative difference of any method's output from CuPy dense on the same inputs: {worst:.2e}.",
              f"Measurements where the spin kernel ran out before all launches were queued: {starved}."]
    lines += [f"- error: {d} {s} {m}: {e}" for d, s, m, e in errors]
    return "\n".join(lines) + "\n"


def merge(paths):
    """(env, runs) of several --json files: environments must agree (the first file's date is kept), and
    repeat i of each file becomes part of repeat i."""
    loaded = [json.loads(Path(path).read_text()) for path in paths]
    env = loaded[0]["env"]
    for path, d in zip(paths, loaded):
        differs = {k for k in env if k != "date" and d["env"].get(k) != env[k]}
        if differs:
            sys.exit(f"--merge: {path} was measured in another environment ({', '.join(sorted(differs))} differ "
                     f"from {paths[0]}); merge only runs of one machine and software stack")
    if len(paths) > 1:
        env = dict(env, merged=[f"{Path(path).name} ({d['env']['date']})" for path, d in zip(paths, loaded)])
    repeats = max(len(d["runs"]) for d in loaded)
    runs = [[r for d in loaded if i < len(d["runs"]) for r in d["runs"][i]] for i in range(repeats)]
    return env, runs


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        env, runs = merge(args.merge)
        print(summarize(runs, env))
        save(argparse.Namespace(json=args.json, markdown=args.markdown), env, runs)
        return
    import cupy as cp
    from nmref import cusparselt as cslt
    try:
        import torch
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    env = environment(cp, torch, cslt)
    env["search"] = bool(args.search)
    print(json.dumps(env), flush=True)
    timer = Timer(cp)
    shapes, dtypes = args.shapes.split(","), args.dtypes.split(",")
    for s in shapes:
        if s not in SHAPES:
            sys.exit(f"unknown shape {s!r}; choose from {', '.join(SHAPES)}")
    runs = []
    for repeat in range(args.repeats):
        run = []
        for dtype in dtypes:
            for shape in shapes:
                r = bench_shape(cp, torch, cslt, timer, shape, dtype, args.iters, seed=1000 * repeat,
                                search=bool(args.search))
                run.append(r)
                brief = {m: (f"{v['gpu_ms'] * 1e3:.1f}/{v['steady_ms'] * 1e3:.1f}us" if "gpu_ms" in v else v["error"][:80])
                         for m, v in r["methods"].items()}
                print(f"repeat {repeat} {dtype} {shape}: {brief} build {r['build_s']:.2f}s "
                      f"err {max(r['rel_err_vs_first'].values(), default=0):.1e}", flush=True)
                save(args, env, runs + [run])               # after every shape: a time-out keeps what was measured
        runs.append(run)
    table = summarize(runs, env)
    print(table)
    save(args, env, runs)


def save(args, env, runs):
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "runs": runs}, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(summarize(runs, env))


if __name__ == "__main__":
    main()
