"""N:M magnitude mask speed: the Numba kernel vs the NumPy reference vs torch.topk vs one plain copy.

CPU (default): a 4096x4096 float32 weight (linear layout) for 2:4, 4:8, 1:4, 2:8, 8:16, plus a
(512, 512, 3, 3) conv weight for 2:4 (NHWC groups, read in place by the strided kernel). All contenders
on the same 2 threads (numba.set_num_threads(2), torch.set_num_threads(2)), timed interleaved, medians.
"copy" is np.copyto into a preallocated array: the memory-bound floor (a mask reads the weight once).
"isfinite" is np.isfinite(w).all(), the NaN/inf check the kernel folds into its own pass.
Targets: Numba >= 10x faster than the reference, and within 4x of the copy for 2:4.
Also: transposable masks (Hubara et al. 2021) on a 1024x1024 Gaussian weight, exact (min-cost flow) vs
greedy, with the greedy's loss of kept |w| relative to exact.

--gpu: the CuPy kernel (nm_mask on a CuPy array, including its inf/NaN flag readback) vs a device copy
(cupy.copyto) of the same 4096x4096 float32 weight, CUDA-event timed; target within 3x of the copy.
Every mask is checked against the NumPy reference before it is timed.

    python benchmarks/bench_masks.py              # CPU table, saved under benchmarks/results/
    python benchmarks/bench_masks.py --quick      # 1024x1024, few repeats (development, not for reporting)
    python benchmarks/bench_masks.py --gpu        # on the GPU machine
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, machine, save, table  # noqa: E402

from nmref.masks import nm_mask, nm_mask_reference  # noqa: E402
from nmref.transposable import nm_mask_transposable  # noqa: E402

PATTERNS = ((2, 4), (4, 8), (1, 4), (2, 8), (8, 16))
THREADS = 2


def torch_topk_mask(torch, wt, n, m, layout):
    """The usual PyTorch N:M mask: topk of |w| per group, scattered into a bool mask (ties: unspecified)."""
    if layout == "conv":
        wt = wt.permute(0, 2, 3, 1)
    groups = wt.abs().reshape(-1, m)
    idx = torch.topk(groups, n, dim=1, sorted=False).indices
    mask = torch.zeros(groups.shape, dtype=torch.bool).scatter_(1, idx, True).reshape(wt.shape)
    return mask.permute(0, 3, 1, 2) if layout == "conv" else mask


def cpu_table(size, repeats):
    import numba
    import torch
    numba.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    cases = [(f"linear {size}x{size}", rng.standard_normal((size, size)).astype(np.float32), "linear", p)
             for p in PATTERNS]
    conv = rng.standard_normal((size // 8, size // 8, 3, 3)).astype(np.float32)
    cases.append((f"conv {conv.shape[0]}x{conv.shape[1]}x3x3", conv, "conv", (2, 4)))
    rows, checks = [], []
    for label, w, layout, (n, m) in cases:
        wt = torch.from_numpy(w)
        dst = np.empty_like(w)
        mask = nm_mask(w, n, m, layout, backend="numba")
        assert np.array_equal(mask, nm_mask_reference(w, n, m, layout)), (label, n, m)
        runs = {"numba": lambda: nm_mask(w, n, m, layout, backend="numba"),
                "reference": lambda: nm_mask_reference(w, n, m, layout),
                "torch": lambda: torch_topk_mask(torch, wt, n, m, layout),
                "copy": lambda: np.copyto(dst, w),
                "isfinite": lambda: np.isfinite(w).all()}
        t = alternate(runs, repeats=repeats, warmup=1)
        rows.append([label, f"{n}:{m}", *(1e3 * t[k] for k in runs), t["reference"] / t["numba"],
                     t["torch"] / t["numba"], t["numba"] / t["copy"]])
        print(table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
        if layout == "linear" and (n, m) == (2, 4):
            checks.append(("Numba >= 10x faster than the reference (2:4)", t["reference"] / t["numba"] >= 10))
            checks.append(("Numba within 4x of the copy (2:4)", t["numba"] / t["copy"] <= 4))
    speedups = [r[-3] for r in rows]
    checks.append((f"Numba >= 10x faster than the reference on every row (min {min(speedups):.1f}x)",
                   min(speedups) >= 10))
    return rows, checks


HEADERS = ["weight", "pattern", "numba ms", "reference ms", "torch.topk ms", "copy ms", "isfinite ms",
           "reference / numba", "torch / numba", "numba / copy"]


def transposable_table(size, exact_patterns=((2, 4), (1, 4), (4, 8), (2, 8))):
    w = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    mag = np.abs(w).astype(np.float64)
    rows = []
    for n, m in exact_patterns:
        times, kept = {}, {}
        for method in ("exact", "greedy"):
            start = time.perf_counter()
            mask = nm_mask_transposable(w, n, m, method)
            times[method] = time.perf_counter() - start
            kept[method] = (mag * mask).sum()
        plain = (mag * nm_mask(w, n, m)).sum()
        rows.append([f"{n}:{m}", times["exact"], times["greedy"], 100 * (1 - kept["greedy"] / kept["exact"]),
                     100 * (1 - kept["exact"] / plain)])
        print(table(T_HEADERS, rows[-1:]).splitlines()[-1], flush=True)
    return rows


T_HEADERS = ["pattern", "exact s", "greedy s", "greedy loss vs exact, % of kept |w|",
             "exact loss vs plain N:M, % of kept |w|"]


def gpu_main(size, repeats):
    from nmref.backend import gpu_available
    if not gpu_available():
        sys.exit("--gpu needs CuPy and a CUDA GPU")
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    w = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    wd = cupy.asarray(w)
    dst = cupy.empty_like(wd)
    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def timed(fn):
        fn()
        cupy.cuda.Device().synchronize()
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
        return statistics.median(times)

    rows, checks = [], []
    for n, m in PATTERNS:
        assert np.array_equal(cupy.asnumpy(nm_mask(wd, n, m)), nm_mask_reference(w, n, m)), (n, m)
        t_mask = timed(lambda: nm_mask(wd, n, m))
        t_copy = timed(lambda: cupy.copyto(dst, wd))
        rows.append([f"{n}:{m}", 1e6 * t_mask, 1e6 * t_copy, t_mask / t_copy])
        print(f"{n}:{m}: CuPy mask {1e6 * t_mask:.1f} us, device copy {1e6 * t_copy:.1f} us, "
              f"ratio {t_mask / t_copy:.2f}", flush=True)
        if (n, m) == (2, 4):
            checks.append(("CuPy mask within 3x of a device copy (2:4)", t_mask / t_copy <= 3))
    body = table(["pattern", "CuPy mask us", "device copy us", "mask / copy"], rows)
    notes = (f"GPU: {name}, CuPy {cupy.__version__}; {size}x{size} float32, median of {repeats} CUDA-event "
             "timings; the mask time includes the inf/NaN flag readback (one host sync).\n\n"
             + "\n".join(f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in checks))
    print(body + "\n\n" + notes)
    return save("masks_gpu", "N:M mask on the GPU: CuPy kernel vs device copy", body, notes)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1024x1024, few repeats (development, not for reporting)")
    p.add_argument("--gpu", action="store_true", help="CuPy kernel vs device copy (needs a CUDA GPU)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    size = 1024 if args.quick else 4096
    if args.gpu:
        path = gpu_main(size, args.repeats or (5 if args.quick else 50))
        print(f"saved {path}")
        return
    print(f"bench_masks on {machine()}")
    print(table(HEADERS, []))
    rows, checks = cpu_table(size, args.repeats or (3 if args.quick else 7))
    print(table(T_HEADERS, []))
    t_rows = transposable_table(256 if args.quick else 1024)
    body = (table(HEADERS, rows) + "\n\nTransposable masks (exact = min-cost flow, greedy = descending |w| "
            f"with 3-edge swap repair), {256 if args.quick else 1024}^2 Gaussian float32 weight:\n\n"
            + table(T_HEADERS, t_rows))
    notes = (f"{THREADS} threads for Numba and torch; medians of interleaved runs; quick={args.quick}. torch.topk "
             "breaks ties arbitrarily (timing baseline only); nmref's masks equal the reference bit for bit.\n\n"
             + "\n".join(f"- {'PASS' if ok else 'MISS'}: {text}" for text, ok in checks))
    print("\n" + notes)
    if not args.no_save:
        print(f"saved {save('masks' + ('_quick' if args.quick else ''), 'N:M mask speed (CPU)', body, notes)}")


if __name__ == "__main__":
    main()
