"""Does splitting K over concurrent cuSPARSELt calls help at batch 256? (issue 7; an experiment, not shipped)

cuSPARSELt refuses split-K on the H200 (0.8.0 and 0.10.0: gpu_notes.md, rounds 3 and 6), and at batch 256 a
4096 x 4096 weight gives few output tiles: if its kernel leaves SMs idle, S calls on K/S columns each, run on S
streams at once and summed, could fill them. Measured here, all with bench_cusparselt's Timer (GPU time, the
launches queued behind a spin kernel) on the same rotated inputs, fp16 and bf16:
  dense        CuPy matmul (cuBLAS)
  nmref        SparseMatmul(W) on all of K
  part S       one SparseMatmul on K/S columns alone (is the kernel's time proportional to K?)
  streams S    S SparseMatmul on K/S columns each, on S streams at once, then the partial outputs summed
  sum S        the summation alone
The partial outputs are rounded to the input dtype before the sum, so "streams S" is not bit-equal to one call
(its error against the fp32 product is printed); the x column blocks are made contiguous up front (untimed).

    python benchmarks/gpu_probe_split_streams.py [--batch 256] [--size 4096] [--splits 2,4] [--json FILE]
    ncu --profile-from-start off ... python benchmarks/gpu_probe_split_streams.py --profile
        (dense, nmref on all of K and on half of K, fp16, once each inside a profiler range)
"""
import argparse
import json

from bench_cusparselt import Timer, random_24, rel, rotated_inputs


def base_parser(description, splits):
    """The options of the batch-256 split-K probes (this one and gpu_probe_batched_splitk.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=4096, help="in = out features")
    p.add_argument("--splits", default=splits)
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", default=None)
    return p


def parse_args(argv=None):
    p = base_parser(__doc__.split("\n")[0], "2,4")
    p.add_argument("--profile", action="store_true", help="only launch the kernels for ncu (see above)")
    return p.parse_args(argv)


def profile_launches(cp, cslt, m, k):
    """Plans built and searched first; then dense, nmref (all of K) and nmref (K/2), once each, profiled."""
    npd = cslt.np_dtype("float16")
    w = random_24(cp, k, k, npd, 7)                                                             # (N, K)
    x = cp.random.default_rng(107).standard_normal((m, k), dtype=cp.float32).astype(npd)           # (M, K)
    full = cslt.SparseMatmul(w)
    half = cslt.SparseMatmul(cp.ascontiguousarray(w[:, :k // 2]))
    x_half = cp.ascontiguousarray(x[:, :k // 2])                                                # (M, K/2)
    for _ in range(2):
        cp.matmul(x, w.T), full(x), half(x_half)
    print("plans:", full.plan_info(m), half.plan_info(m), flush=True)
    cp.cuda.Device().synchronize()
    cp.cuda.profiler.start()
    cp.matmul(x, w.T)
    full(x)
    half(x_half)
    cp.cuda.Device().synchronize()
    cp.cuda.profiler.stop()


def probe(cp, cslt, timer, dtype, m, k, splits, iters):
    npd = cslt.np_dtype(dtype)
    n = k
    ws, xs = rotated_inputs(cp, npd, m, k, n, 7)                                       # (N, K) and (M, K) each
    n_inputs = len(ws)
    ref = [x.astype(cp.float32) @ w.astype(cp.float32).T for x, w in zip(xs, ws)]                 # (M, N)
    out = {"dtype": dtype, "shape": f"{m}x{k}x{n}"}
    full = [cslt.SparseMatmul(w) for w in ws]
    times = {"dense": timer.measure(lambda i: cp.matmul(xs[i], ws[i].T), n_inputs, iters),
             "nmref": timer.measure(lambda i: full[i](xs[i]), n_inputs, iters)}
    errors = {"nmref": rel(cp.asnumpy(full[0](xs[0])), cp.asnumpy(ref[0]))}
    for s in splits:
        cols = k // s
        parts = [[cslt.SparseMatmul(cp.ascontiguousarray(w[:, j * cols:(j + 1) * cols])) for j in range(s)]
                 for w in ws]                                                                    # s ops per input
        xparts = [[cp.ascontiguousarray(x[:, j * cols:(j + 1) * cols]) for j in range(s)] for x in xs]  # (M, K/s)
        streams = [cp.cuda.Stream(non_blocking=True) for _ in range(s)]
        partial = [cp.empty((m, n), dtype=npd) for _ in range(s)]                               # (M, N) each

        def split_call(i):
            fork = cp.cuda.Event(disable_timing=True)
            fork.record()
            joins = []
            for j, stream in enumerate(streams):
                stream.wait_event(fork)
                with stream:
                    parts[i][j](xparts[i][j], out=partial[j])
                    joins.append(stream.record())
            for e in joins:
                cp.cuda.get_current_stream().wait_event(e)
            return sum(partial[1:], partial[0])

        def sum_only(i):
            return sum(partial[1:], partial[0])

        times[f"part {s}"] = timer.measure(lambda i: parts[i][0](xparts[i][0], out=partial[0]), n_inputs, iters)
        times[f"streams {s}"] = timer.measure(split_call, n_inputs, iters)
        times[f"sum {s}"] = timer.measure(sum_only, n_inputs, iters)
        errors[f"streams {s}"] = rel(cp.asnumpy(split_call(0)), cp.asnumpy(ref[0]))
        for ops in parts:
            for op in ops:
                op.close()
    out["us"] = {key: round(t["gpu_ms"] * 1e3, 2) for key, t in times.items()}
    out["rel_err_vs_fp32"] = errors
    return out


def main(argv=None):
    args = parse_args(argv)
    import cupy as cp
    from nmref import cusparselt as cslt
    if args.profile:
        return profile_launches(cp, cslt, args.batch, args.size)
    timer = Timer(cp)
    splits = [int(s) for s in args.splits.split(",")]
    records = []
    for dtype in args.dtypes.split(","):
        rec = probe(cp, cslt, timer, dtype, args.batch, args.size, splits, args.iters)
        records.append(rec)
        print(json.dumps(rec), flush=True)
    keys = list(records[0]["us"])
    print("\n| dtype | shape | " + " | ".join(f"{key} (us)" for key in keys) + " | dense / best split |")
    print("| --- | --- |" + " ---: |" * (len(keys) + 1))
    for r in records:
        best = min(v for key, v in r["us"].items() if key.startswith("streams"))
        print(f"| {r['dtype']} | {r['shape']} | " + " | ".join(f"{r['us'][key]:.1f}" for key in keys)
              + f" | {r['us']['dense'] / best:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
