"""Probe (issue 7): how much the timing method moves the 2:4 speed-up over dense, on the same objects in one run.

Issue 7's facts (fp16, 4096x4096 weights: 1.28x at batch 16, 1.23x at 256, 1.53x at 4096^3) are "medians of 30, one
run" of a method the issue does not give; bench_cusparselt, which judges the targets, measured 1.39x / 1.00x / 1.43x.
Here one process times CuPy dense (cuBLAS) and nmref's SparseMatmul as shipped four ways:

  queued_rotated  bench_cusparselt's method (its Timer): inputs rotated over 256 MiB so W comes from HBM, launches
                  queued behind a spin kernel so the GPU never waits for the host. The bench's "gpu" column.
  queued_one      the same Timer on one (x, W) pair, called again and again: W may stay in the 50 MB L2.
  synced_one      cupyx.profiler.benchmark(n_repeat=30) on one pair: each call timed alone after a sync, so its
                  GPU time also holds the host's launch of the call. The simplest "median of 30".
  flushed_one     one pair, a 256 MiB buffer written before every call (L2 cold), CUDA events around the call.

    python benchmarks/gpu_probe_timing_methods.py --jsonl OUT.jsonl [--batches 16,256,4096] [--repeats 3]
    python benchmarks/gpu_probe_timing_methods.py --summarize OUT.jsonl
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cusparselt import Timer, rel, rotated_inputs  # noqa: E402
from gpu_probe_cusparselt import cold_us  # noqa: E402
from gpu_probe_mma_sp import jsonl_emitter, read_jsonl  # noqa: E402

METHODS = ("queued_rotated", "queued_one", "synced_one", "flushed_one")
ISSUE_FACTS = {16: 1.28, 256: 1.23, 4096: 1.53}      # issue 7, fp16, dense / sparse at batch x 4096 x 4096


def measure(cp, timer, flush, call, n_inputs, iters):
    """{method: GPU time in us} of call(i), i indexing the rotated inputs (0 for the one-pair methods)."""
    from cupyx.profiler import benchmark
    one = lambda: call(0)                                                   # noqa: E731
    synced = benchmark(one, n_repeat=iters, n_warmup=10).gpu_times[0]       # seconds, (iters,)
    return {"queued_rotated": timer.measure(call, n_inputs, iters)["gpu_ms"] * 1e3,
            "queued_one": timer.measure(lambda i: one(), 1, iters)["gpu_ms"] * 1e3,
            "synced_one": float(statistics.median(synced)) * 1e6,
            "flushed_one": cold_us(cp, flush, one, iters)}


def run(args, emit):
    import cupy as cp
    from nmref.cusparselt import SparseMatmul, np_dtype
    timer = Timer(cp)
    flush = cp.empty(256 << 20, cp.uint8)                                   # 5x the H200's L2
    size = args.size
    for repeat in range(args.repeats):
        for dtype in args.dtypes.split(","):
            for m in map(int, args.batches.split(",")):
                ws, xs = rotated_inputs(cp, np_dtype(dtype), m, size, size, seed=1000 * repeat + m)
                ops = [SparseMatmul(w) for w in ws]                         # fresh objects, fresh search
                calls = {"dense": lambda i: cp.matmul(xs[i], ws[i].T), "nmref": lambda i: ops[i](xs[i])}
                err = rel(cp.asnumpy(calls["nmref"](0).astype(cp.float32)),
                          cp.asnumpy(calls["dense"](0).astype(cp.float32)))
                times = {name: measure(cp, timer, flush, call, len(ws), args.iters) for name, call in calls.items()}
                emit({"repeat": repeat, "dtype": dtype, "M": m, "K": size, "N": size, "n_inputs": len(ws),
                      "rel_err": err, "plan": {k: str(v) for k, v in ops[0].plan_info(m).items()}, "us": times})
                del ops, calls, ws, xs
                cp.get_default_memory_pool().free_all_blocks()


def table(records):
    """Markdown: per (dtype, batch) and method, dense and nmref medians over repeats, ratio, spread of the ratio."""
    lines = ["| dtype | M x K x N | method | dense (us) | nmref (us) | dense / nmref | spread of the ratio | issue's fact |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    keys = sorted({(r["dtype"], r["M"], r["K"], r["N"]) for r in records}, key=lambda k: (k[0] != "float16", k[1:]))
    for dtype, m, k, n in keys:
        rows = [r for r in records if (r["dtype"], r["M"], r["K"], r["N"]) == (dtype, m, k, n)]
        for method in METHODS:
            dense = statistics.median(r["us"]["dense"][method] for r in rows)
            sparse = statistics.median(r["us"]["nmref"][method] for r in rows)
            ratios = [r["us"]["dense"][method] / r["us"]["nmref"][method] for r in rows]
            spread = (max(ratios) - min(ratios)) / statistics.median(ratios)
            fact = ISSUE_FACTS.get(m) if dtype == "float16" and k == n == 4096 else None
            lines.append(f"| {dtype} | {m}x{k}x{n} | {method} | {dense:.1f} | {sparse:.1f} | "
                         f"{statistics.median(ratios):.2f}x | {100 * spread:.0f}% ({len(rows)}) | "
                         f"{'' if fact is None else f'{fact:.2f}x'} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jsonl", help="append one record per (repeat, dtype, batch) here")
    p.add_argument("--batches", default="16,256,4096")
    p.add_argument("--size", type=int, default=4096, help="K = N (in = out features)")
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--iters", type=int, default=30, help="timed calls per measurement (the issue's 30)")
    p.add_argument("--summarize", nargs="+", metavar="JSONL", help="print the table of saved records and stop")
    args = p.parse_args(argv)
    if args.summarize:
        print(table(read_jsonl(args.summarize)))
        return
    if not args.jsonl:
        p.error("--jsonl OUT.jsonl is needed to run (or --summarize JSONL to print a table)")
    records = []
    emit = jsonl_emitter(args.jsonl)
    run(args, lambda rec: (records.append(rec), emit(rec)))
    print(table(records))


if __name__ == "__main__":
    main()
