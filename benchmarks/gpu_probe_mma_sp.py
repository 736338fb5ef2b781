"""Probe nmref's own 2:4 kernel (nmref/kernels/sparse_mma.py, mma.sp m16n8k32) on the GPU: is it right, and
which launch shapes beat cuSPARSELt and dense cuBLAS at small batch?

1. Correctness: every launch shape in CONFIGS, fp16 and bf16, odd shapes, with and without
   a bias, against CuPy's dense matmul of the same weight (float32). If the metadata layout taken from PTX's
   description were wrong, the alternative word arrangement is tried and reported.
2. Timing (bench_cusparselt's Timer: per-call GPU time behind a spin kernel, inputs rotated past the L2):
   batch 8..1024 x 4096x4096, dense cuBLAS, nmref.cusparselt.SparseMatmul (cuSPARSELt only), each launch shape
   (--sweep: a wide sweep of launch shapes in fp16, CONFIGS in bf16).

    python benchmarks/gpu_probe_mma_sp.py --jsonl OUT.jsonl [--sweep]
    python benchmarks/gpu_probe_mma_sp.py --summary OUT.jsonl
"""
import argparse
import itertools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cusparselt import Timer, random_24, rel  # noqa: E402

from nmref import cusparselt as cslt  # noqa: E402
from nmref.kernels import sparse_mma as sm  # noqa: E402

SWEEP = tuple(c for c in itertools.product((1, 2, 4, 8), (1, 2, 4), (4, 8, 16, 32), (1, 2, 4), (0, 1))
              if sm.shared_bytes(c[0], c[1], c[2]) <= 48 * 1024 and c[0] * c[1] * c[3] * (1 + c[4]) <= 16
              and c[2] * (c[0] + c[1]) <= 96 and c[2] * c[0] * c[1] >= 16)


def swap_meta(meta):
    """The other arrangement of the metadata words: lane 4g holds row g (both halves), lane 4g+1 row g+8."""
    w = meta.reshape(meta.shape[:-1] + (8, 2))
    lo, hi = w[..., 0], w[..., 1]
    out = w.copy()
    out[..., 0] = (lo & 0xFFFF) | ((hi & 0xFFFF) << 16)
    out[..., 1] = (lo >> 16) | (hi & 0xFFFF0000)
    return out.reshape(meta.shape)


CHECK_SHAPES = [(16, 4096, 4096), (8, 64, 32), (13, 96, 80), (40, 128, 48), (256, 512, 1000), (3, 32, 16)]


def check(cp, emit, configs, shapes=CHECK_SHAPES, packer=sm.PackedWeight):
    rng = np.random.default_rng(0)
    for dtype in ("float16", "bfloat16"):
        np_dtype = cslt.np_dtype(dtype)
        for (m, k, n), bias in itertools.product(shapes, (False, True)):
            w = random_24(cp, n, k, np_dtype, int(rng.integers(1 << 30)))
            w[0, :4] = 0
            x = cp.asarray(rng.standard_normal((m, k)).astype(np.float32)).astype(np_dtype)
            b = cp.asarray(rng.standard_normal(n).astype(np.float32)).astype(np_dtype) if bias else None
            ref = x.astype(cp.float32) @ w.astype(cp.float32).T + (0 if b is None else b.astype(cp.float32))
            packed = packer(w, b)
            for config in configs:
                out = cp.full((m, n), np.nan, dtype=np.float32).astype(np_dtype)
                try:
                    packed.launch(x, out, config)
                    cp.cuda.Device().synchronize()
                    err = rel(cp.asnumpy(out.astype(cp.float32)), cp.asnumpy(ref))
                    rec = {"check": dtype, "shape": [m, k, n], "bias": bias, "config": config, "rel_err": err,
                           "nan": bool(cp.isnan(out.astype(cp.float32)).any())}
                    if not err < 1e-2:
                        packed.meta, saved = swap_meta(packed.meta), packed.meta
                        packed.launch(x, out, config)
                        rec["rel_err_swapped_meta"] = rel(cp.asnumpy(out.astype(cp.float32)), cp.asnumpy(ref))
                        packed.meta = saved
                except Exception as exc:
                    rec = {"check": dtype, "shape": [m, k, n], "config": config,
                           "error": f"{type(exc).__name__}: {exc}"}
                emit(rec)


def timing(cp, emit, timer, configs, batches, iters, shape=(4096, 4096), dtypes=("float16", "bfloat16"),
           fitting=sm.configs_for, packer=sm.PackedWeight):
    n, k = shape
    for dtype in dtypes:
        np_dtype = cslt.np_dtype(dtype)
        n_inputs = 8
        ws = [random_24(cp, n, k, np_dtype, 7 + i) for i in range(n_inputs)]
        packs = [packer(w) for w in ws]
        for batch in batches:
            xs = [cp.random.default_rng(100 + i).standard_normal((batch, k), dtype=cp.float32).astype(np_dtype)
                  for i in range(n_inputs)]
            outs = [cp.empty((batch, n), dtype=np_dtype) for _ in range(n_inputs)]
            rec = {"time": dtype, "M": batch, "K": k, "N": n}
            rec["dense_us"] = timer.measure(lambda i: cp.matmul(xs[i], ws[i].T), n_inputs, iters)["gpu_ms"] * 1e3
            ops = [cslt.SparseMatmul(w) for w in ws]
            rec["cslt_us"] = timer.measure(lambda i: ops[i](xs[i], outs[i]), n_inputs, iters)["gpu_ms"] * 1e3
            rec["cslt_plan"] = ops[0].plan_info(batch)
            for op in ops:
                op.close()
            times = {}
            for config in fitting(batch, configs):
                try:
                    times[str(config)] = timer.measure(lambda i: packs[i].launch(xs[i], outs[i], config),
                                                       n_inputs, iters)["gpu_ms"] * 1e3
                except Exception as exc:
                    times[str(config)] = f"{type(exc).__name__}: {exc}"[:200]
            rec["mma_us"] = times
            numeric = {c: t for c, t in times.items() if isinstance(t, float)}
            if numeric:
                best = min(numeric, key=numeric.get)
                rec["best"], rec["best_us"] = best, numeric[best]
                rec["dense_over_best"] = rec["dense_us"] / numeric[best]
                rec["dense_over_cslt"] = rec["dense_us"] / rec["cslt_us"]
            emit(rec)
            del xs, outs
            cp.get_default_memory_pool().free_all_blocks()


def summarize(path):
    """A short table of a probe's records: failed checks, then per dtype and batch the dense, cuSPARSELt and
    three fastest launch-shape times."""
    records = read_jsonl([path])
    checks = [r for r in records if "check" in r]
    bad = [r for r in checks if "error" in r or r.get("nan") or not r.get("rel_err", 1) < 1e-2]
    print(f"checks: {len(checks)}, failed: {len(bad)}")
    for r in bad[:20]:
        print("  FAILED", json.dumps(r)[:300])
    print("| dtype | MxKxN | dense us | cuSPARSELt us | best launch shapes (us) | dense/best | dense/cuSPARSELt |")
    print("| --- | --- | ---: | ---: | --- | ---: | ---: |")
    for r in records:
        if "time" not in r or "best_us" not in r:
            continue
        numeric = sorted((t, c) for c, t in r["mma_us"].items() if isinstance(t, float))
        top = ", ".join(f"{c} {t:.1f}" for t, c in numeric[:3])
        print(f"| {r['time']} | {r['M']}x{r['K']}x{r['N']} | {r['dense_us']:.1f} | {r['cslt_us']:.1f} | {top} | "
              f"{r['dense_over_best']:.2f}x | {r['dense_over_cslt']:.2f}x |")


def read_jsonl(paths):
    """The records of the JSON-lines files ``paths`` (what jsonl_emitter wrote), in order."""
    records = []
    for path in paths:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def jsonl_emitter(path):
    """emit(record): print the record's first 400 characters and append it to the JSON-lines file ``path``."""
    out = open(path, "a")

    def emit(rec):
        line = json.dumps(rec)
        print(line[:400], flush=True)
        out.write(line + "\n")
        out.flush()
    return emit


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jsonl")
    p.add_argument("--summary", metavar="JSONL", help="print the table of an earlier probe's records and stop")
    p.add_argument("--sweep", action="store_true", help="time the wide sweep of launch shapes (fp16 and bf16)")
    p.add_argument("--batches", default="8,16,32,64,128,256,1024")
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    if args.summary:
        return summarize(args.summary)
    if not args.jsonl:
        p.error("--jsonl is required")
    import cupy as cp
    emit = jsonl_emitter(args.jsonl)
    t0 = time.time()
    emit({"gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "configs": sm.CONFIGS,
          "sweep": len(SWEEP), "date": time.strftime("%Y-%m-%d %H:%M")})
    timer = Timer(cp)
    batches = [int(b) for b in args.batches.split(",")]
    check(cp, emit, sm.CONFIGS)
    emit({"check_s": time.time() - t0})
    if args.sweep:                                     # the wide sweep in fp16 (same kernel code for bf16)
        timing(cp, emit, timer, sm.CONFIGS + tuple(c for c in SWEEP if c not in sm.CONFIGS), batches, args.iters,
               dtypes=("float16",))
        timing(cp, emit, timer, sm.CONFIGS, batches, args.iters, dtypes=("bfloat16",))
    else:
        timing(cp, emit, timer, sm.CONFIGS, batches, args.iters)
    emit({"total_s": time.time() - t0})


if __name__ == "__main__":
    main()
