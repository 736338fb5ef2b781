"""Probe (issue 7): CUTLASS 4.2's Hopper 2:4 sparse GEMM against dense cuBLAS and nmref's cuSPARSELt path.

Is the issue's 1.2x at batch 256 and 1.5x at 4096^3 reachable on this GPU with the best open-source sparse kernels
(TMA, wgmma.sp, warp-specialized producer/consumer pipelines, clusters with multicast, stream-K)? Each launch shape
of benchmarks/gpu_probe_cutlass_sparse.cu is built into its own shared library (``--build``: nvcc, sm_90a, CUTLASS's
headers from the ``nvidia-cutlass`` wheel) and loaded here through ctypes on CuPy's arrays and stream. Not part of
nmref: nmref ships no compiled code, and CUTLASS compresses W into its own layout.

Checks: every library against CuPy's fp32 product of the same 2:4 weight (fresh random shapes, output poisoned with
NaN). Timing: bench_cusparselt's Timer and rotated inputs (the weights come from HBM), in one process with CuPy dense
(cuBLAS) and nmref's SparseMatmul as shipped, y (M, N) = x (M, K) @ W.T at K = N = 4096.

    python benchmarks/gpu_probe_cutlass_sparse.py --build DIR --cutlass CUTLASS_SOURCE   (20 libraries, nvcc)
    python benchmarks/gpu_probe_cutlass_sparse.py --libs DIR --jsonl OUT.jsonl [--batches 256,4096]
"""
import argparse
import ctypes
import glob
import itertools
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cusparselt import Timer, random_24, rel, rotated_inputs  # noqa: E402
from gpu_probe_mma_sp import jsonl_emitter, read_jsonl  # noqa: E402

from nmref.cusparselt import np_dtype as np_dtype_of  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_probe_cutlass_sparse.cu")
# Launch shapes (TM, TN, TK, CM, CN, PINGPONG, STREAMK): M = W rows, N = batch rows. Call 2 of session 6
# (gpu_notes.md, round 7) built the first ten; call 3 the rest, around call 2's batch-256 winner (ping-pong 64x128).
CONFIGS = [
    (128, 128, 128, 1, 2, 0, 0), (128, 256, 128, 1, 1, 0, 0), (128, 128, 128, 2, 1, 0, 0), (64, 128, 128, 1, 1, 1, 0),
    (128, 128, 128, 1, 1, 0, 1), (128, 256, 128, 1, 1, 0, 1), (256, 128, 128, 1, 1, 0, 0), (64, 256, 128, 1, 1, 1, 0),
    (128, 256, 128, 2, 1, 0, 0), (256, 128, 128, 1, 1, 0, 1),
    (64, 128, 128, 2, 1, 1, 0), (64, 128, 128, 1, 2, 1, 0), (64, 128, 128, 2, 2, 1, 0), (64, 128, 128, 4, 1, 1, 0),
    (64, 64, 128, 1, 1, 1, 0), (64, 64, 128, 2, 1, 1, 0), (64, 128, 64, 1, 1, 1, 0), (128, 64, 128, 1, 1, 0, 0),
    (128, 64, 128, 1, 2, 0, 0), (128, 64, 128, 1, 1, 0, 1)]
MACROS = ("TM", "TN", "TK", "CM", "CN", "PINGPONG", "STREAMK")
CHECK_SHAPES = [(256, 4096, 4096), (64, 1024, 512), (200, 512, 1024), (4096, 2048, 1024)]   # (M batch, K, N out)


def build(folder, cutlass, jobs, configs):
    """One library per (launch shape, dtype) in `folder` (kept if already there), `jobs` nvcc at a time."""
    os.makedirs(folder, exist_ok=True)

    def one(case):
        config, bf16 = case
        out = os.path.join(folder, "lib" + "_".join(map(str, config)) + f"_{bf16}.so")
        if os.path.exists(out):
            return case, 0, "kept"
        cmd = ["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-O3", "-DNDEBUG", "-std=c++17",
               "--expt-relaxed-constexpr", "-shared", "-Xcompiler", "-fPIC", f"-I{cutlass}/include",
               f"-I{cutlass}/tools/util/include", f"-DELEM_BF16={bf16}", "-o", out, SOURCE]
        cmd[-3:-3] = [f"-D{name}={value}" for name, value in zip(MACROS, config)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        return case, run.returncode, run.stderr[-2000:]

    with ThreadPoolExecutor(jobs) as pool:
        for case, code, err in pool.map(one, itertools.product(configs, (0, 1))):
            print(f"{case}: {'built' if code == 0 else 'FAILED'} {err}", flush=True)


class CutlassLib:
    """One built launch shape: compress a 2:4 weight once, then y = x @ W.T on CuPy's current stream."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        lib.probe_config.restype = ctypes.c_char_p
        lib.probe_compress.restype = ctypes.c_void_p
        lib.probe_compress.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
        lib.probe_run.restype = ctypes.c_int
        lib.probe_run.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        lib.probe_free.argtypes = [ctypes.c_void_p]
        self.lib, self.name = lib, lib.probe_config().decode()
        self.dtype = "bfloat16" if self.name.endswith("bf16") else "float16"

    def compress(self, cp, w):
        """A handle for the 2:4 weight w (N out, K in), contiguous on the GPU."""
        handle = self.lib.probe_compress(w.data.ptr, w.shape[0], w.shape[1], cp.cuda.get_current_stream().ptr)
        if not handle:
            raise RuntimeError(f"{self.name}: compression refused")
        return handle

    def matmul(self, cp, handle, x, out):
        status = self.lib.probe_run(handle, x.data.ptr, out.data.ptr, x.shape[0], cp.cuda.get_current_stream().ptr)
        if status:
            raise RuntimeError(f"{self.name}: run failed ({status})")
        return out


def check(cp, emit, libs):
    for lib, (m, k, n) in itertools.product(libs, CHECK_SHAPES):
        np_dtype = np_dtype_of(lib.dtype)
        seed = int(np.random.SeedSequence().generate_state(1)[0] % 2**31)       # fresh inputs every run
        w = random_24(cp, n, k, np_dtype, seed)
        x = cp.random.default_rng(seed + 1).standard_normal((m, k), dtype=cp.float32).astype(np_dtype)
        out = cp.full((m, n), cp.nan, np_dtype)
        try:
            handle = lib.compress(cp, w)
            lib.matmul(cp, handle, x, out)
            cp.cuda.Device().synchronize()
            lib.lib.probe_free(handle)
            ref = x.astype(cp.float32) @ w.astype(cp.float32).T
            err = rel(cp.asnumpy(out), cp.asnumpy(ref))
            record = {"check": lib.name, "shape": [m, k, n], "rel_err": err,
                      "ok": bool(np.isfinite(err) and err < (1e-3 if lib.dtype == "float16" else 1e-2))}
        except Exception as exc:                                              # report, keep the others
            record = {"check": lib.name, "shape": [m, k, n], "error": str(exc), "ok": False}
        emit(record)


def timing(cp, emit, timer, libs, batches, dtypes, iters, seed=0):
    from nmref.cusparselt import SparseMatmul
    for dtype, m in itertools.product(dtypes, batches):
        k = n = 4096
        np_dtype = np_dtype_of(dtype)
        ws, xs = rotated_inputs(cp, np_dtype, m, k, n, seed)
        outs = [cp.empty((m, n), np_dtype) for _ in ws]
        ops = [SparseMatmul(w) for w in ws]
        rows = {"cupy_dense": timer.measure(lambda i: cp.matmul(xs[i], ws[i].T), len(ws), iters)["gpu_ms"],
                "nmref": timer.measure(lambda i: ops[i](xs[i], out=outs[i]), len(ws), iters)["gpu_ms"]}
        ops.clear()                                   # free the cuSPARSELt plans before the CUTLASS handles
        for lib in (lib for lib in libs if lib.dtype == dtype):
            handles = [lib.compress(cp, w) for w in ws]
            try:
                rows[lib.name] = timer.measure(lambda i: lib.matmul(cp, handles[i], xs[i], outs[i]), len(ws),
                                               iters)["gpu_ms"]
            except RuntimeError as exc:
                rows[lib.name] = str(exc)
            for h in handles:
                lib.lib.probe_free(h)
        emit({"timing": dtype, "shape": [m, k, n], "gpu_us": {key: (v * 1e3 if isinstance(v, float) else v)
                                                             for key, v in rows.items()}})
        cp.get_default_memory_pool().free_all_blocks()


def table(records):
    """Markdown: per (dtype, shape), every contender's median GPU time over the repeats, its spread
    ((max - min) / median) and dense / contender, fastest first."""
    times = {}
    for r in (r for r in records if "timing" in r):
        for key, value in r["gpu_us"].items():
            if isinstance(value, float):
                times.setdefault((r["timing"], "x".join(map(str, r["shape"]))), {}).setdefault(key, []).append(value)
    lines = ["| dtype | M x K x N | contender | GPU time (us) | spread | repeats | dense / contender |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for (dtype, shape), rows in times.items():
        dense = statistics.median(rows["cupy_dense"])
        for key, values in sorted(rows.items(), key=lambda kv: statistics.median(kv[1])):
            med = statistics.median(values)
            lines.append(f"| {dtype} | {shape} | {key} | {med:.1f} | {(max(values) - min(values)) / med:.0%} | "
                         f"{len(values)} | {dense / med:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build", metavar="DIR")
    p.add_argument("--cutlass", help="CUTLASS source folder (include/, tools/util/include/)")
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p.add_argument("--configs", help="indices into CONFIGS to build (default: all)")
    p.add_argument("--libs", metavar="DIR")
    p.add_argument("--jsonl")
    p.add_argument("--batches", default="256,4096")
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--summarize", nargs="+", metavar="JSONL", help="print the table of saved records and stop")
    args = p.parse_args(argv)
    if args.summarize:
        print(table(read_jsonl(args.summarize)))
        return
    if args.build:
        chosen = CONFIGS if not args.configs else [CONFIGS[int(i)] for i in args.configs.split(",")]
        return build(args.build, args.cutlass, args.jobs, chosen)
    import cupy as cp
    libs = [CutlassLib(path) for path in sorted(glob.glob(os.path.join(args.libs, "lib*.so")))]
    emit = jsonl_emitter(args.jsonl)
    emit({"gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "date": time.strftime("%Y-%m-%d %H:%M"),
          "libraries": [lib.name for lib in libs]})
    t0 = time.time()
    check(cp, emit, libs)
    timer = Timer(cp)
    for _ in range(args.repeats):
        timing(cp, emit, timer, libs, [int(b) for b in args.batches.split(",")], args.dtypes.split(","), args.iters)
    emit({"total_s": time.time() - t0})
    records = read_jsonl([args.jsonl])
    bad = [r for r in records if "check" in r and not r["ok"]]
    print(f"checks: {sum('check' in r for r in records)} run, {len(bad)} failed")
    for r in bad:
        print("  FAILED", r)
    print(table(records))


if __name__ == "__main__":
    main()
