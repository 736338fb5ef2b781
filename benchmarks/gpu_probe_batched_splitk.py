"""Split-K through cuSPARSELt's batched matmul (issue 7, batch 256; an experiment, not shipped).

ncu (gpu_run.sh streams, STREAMS_NCU=1) showed why cuSPARSELt is no faster than dense at 256x4096x4096: the
kernel its search picks has 256x160 tiles, 32 blocks on 132 SMs (0.24 waves), and split-K is refused on the H200.
A batched matmul of S problems, problem b = x[:, b K/S : (b+1) K/S] @ W[:, b K/S : (b+1) K/S].T, gives S times
the blocks in one launch; a small kernel then sums the S partial outputs (fp32, in order b = 0 .. S-1) and rounds
once. The partial outputs are fp16 / bf16 (cuSPARSELt writes D in the input type), so the result is not
bit-equal to one product; its error against the fp32 product is printed.

W is rearranged once into S contiguous column blocks (S, N, K/S); x is described in place: batch b is the
(M, K/S) view at column b K/S, leading dimension K, batch stride K/S ("view"). If cuSPARSELt refuses that
interleaved batch, a contiguous copy (S, M, K/S) made before timing ("copy", the copy not timed) shows what the
batched kernel alone would give. Raw nvmath bindings, W as the structured A (row-major, op N), x as B
(row-major, op T), D column-major (N, M) per problem, which is y's (M, N) row-major layout.

    python benchmarks/gpu_probe_batched_splitk.py [--batch 256] [--size 4096] [--splits 1,2,4,8] [--json FILE]
"""
import json

import numpy as np

from bench_cusparselt import Timer, rel, rotated_inputs
from gpu_probe_split_streams import base_parser

from nmref.cusparselt import ALIGNMENT, _COMPUTE_32F, _CUDA_DTYPE, _OP_N, _OP_T, _ORDER_COL, _ORDER_ROW, _SPARSITY_50

SUM_PARTS = r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// y[i] = sum over b of parts[b n + i] in fp32, in order of b, rounded once to the output type
#define SUM_PARTS(NAME, T, TO_FLOAT, FROM_FLOAT)                                                  \
extern "C" __global__ void NAME(const T* parts, T* y, long long n, int s) {                       \
    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;                         \
    if (i >= n) return;                                                                           \
    float acc = 0.f;                                                                              \
    for (int b = 0; b < s; ++b) acc += TO_FLOAT(parts[b * n + i]);                                \
    y[i] = FROM_FLOAT(acc);                                                                       \
}
SUM_PARTS(sum_parts_f16, __half, __half2float, __float2half_rn)
SUM_PARTS(sum_parts_bf16, __nv_bfloat16, __bfloat162float, __float2bfloat16_rn)
"""


def parse_args(argv=None):
    return base_parser(__doc__.split("\n")[0], "1,2,4,8").parse_args(argv)


class BatchedSplit:
    """y (M, N) = x (M, K) @ W.T as S batched cuSPARSELt problems over column blocks of K, then summed."""

    def __init__(self, cp, lt, w, m, s, x_mode, x_example):
        n, k = w.shape
        self.cp, self.lt, self.m, self.n, self.k, self.s, self.x_mode = cp, lt, m, n, k, s, x_mode
        self.dtype = np.dtype(w.dtype).name
        kb = k // s
        self.w_blocks = cp.ascontiguousarray(w.reshape(n, s, kb).transpose(1, 0, 2))                  # (S, N, K/S)
        h = self.h = lt.init()
        dt = _CUDA_DTYPE[self.dtype]
        a = lt.structured_descriptor_init(h, n, kb, kb, ALIGNMENT, dt, _ORDER_ROW, _SPARSITY_50)
        ldx, x_stride = (k, kb) if x_mode == "view" else (kb, m * kb)
        b = lt.dense_descriptor_init(h, m, kb, ldx, ALIGNMENT, dt, _ORDER_ROW)
        d = lt.dense_descriptor_init(h, n, m, n, ALIGNMENT, dt, _ORDER_COL)
        self.descs = [a, b, d]
        for desc, stride in ((a, n * kb), (b, x_stride), (d, n * m)):
            self._set(lt.mat_desc_set_attribute, desc, lt.MatDescAttribute.NUM_BATCHES, s)
            self._set(lt.mat_desc_set_attribute, desc, lt.MatDescAttribute.BATCH_STRIDE, stride)
        self.mm = lt.matmul_descriptor_init(h, _OP_N, _OP_T, a, b, d, d, _COMPUTE_32F)
        self.sel = lt.matmul_alg_selection_init(h, self.mm, 0)
        self.plan = lt.matmul_plan_init(h, self.mm, self.sel)
        size, buf = lt.sp_mma_compressed_size(h, self.plan)
        self.wc, buffer = cp.empty(size, cp.uint8), cp.empty(max(buf, 1), cp.uint8)
        valid = cp.zeros(1, cp.int32)
        lt.sp_mma_prune_check(h, self.mm, self.w_blocks.data.ptr, valid.data.ptr, 0)
        if int(valid.get()[0]):
            raise RuntimeError("prune check refused the batched weight")
        lt.sp_mma_compress(h, self.plan, self.w_blocks.data.ptr, self.wc.data.ptr, buffer.data.ptr, 0)
        self.parts = cp.empty((s, m, n), dtype=w.dtype)                                            # (S, M, N)
        self.alpha, self.beta = np.ones(1, np.float32), np.zeros(1, np.float32)
        self.streams = np.array([cp.cuda.get_current_stream().ptr], np.uint64)
        self.ws = cp.empty(max(lt.matmul_get_workspace(h, self.plan), 1), cp.uint8)
        xb = self.prepare(x_example)
        lt.matmul_search(h, self.plan, self.alpha.ctypes.data, self.wc.data.ptr, xb.data.ptr,
                         self.beta.ctypes.data, self.parts.data.ptr, self.parts.data.ptr, self.ws.data.ptr,
                         self.streams.ctypes.data, 1)
        self.ws = cp.empty(max(lt.matmul_get_workspace(h, self.plan), 1), cp.uint8)
        value = np.zeros(1, np.int32)
        lt.matmul_alg_get_attribute(h, self.sel, lt.MatmulAlgAttribute.CONFIG_ID, value.ctypes.data, 4)
        self.config = int(value[0])
        module = cp.RawModule(code=SUM_PARTS)
        self.sum_parts = module.get_function("sum_parts_bf16" if self.dtype == "bfloat16" else "sum_parts_f16")

    def _set(self, setter, desc, attr, value):
        dtype = self.lt.get_mat_desc_attribute_dtype(attr)
        v = np.array([value], dtype=dtype)
        setter(self.h, desc, attr, v.ctypes.data, v.itemsize)

    def prepare(self, x):
        """x as the batched B operand: x itself (view) or its S column blocks made contiguous (copy)."""
        if self.x_mode == "view":
            return x
        return self.cp.ascontiguousarray(x.reshape(self.m, self.s, self.k // self.s).transpose(1, 0, 2))

    def batched(self, xb):
        self.lt.matmul(self.h, self.plan, self.alpha.ctypes.data, self.wc.data.ptr, xb.data.ptr,
                       self.beta.ctypes.data, self.parts.data.ptr, self.parts.data.ptr, self.ws.data.ptr,
                       self.streams.ctypes.data, 1)

    def __call__(self, xb, y):
        self.batched(xb)
        if self.s == 1:
            return self.parts[0]
        total = self.m * self.n
        self.sum_parts(((total + 255) // 256,), (256,), (self.parts, y, np.int64(total), np.int32(self.s)))
        return y

    def close(self):
        lt = self.lt
        lt.matmul_plan_destroy(self.plan)
        lt.matmul_alg_selection_destroy(self.sel)
        lt.matmul_descriptor_destroy(self.mm)
        for desc in self.descs:
            lt.mat_descriptor_destroy(desc)
        lt.destroy(self.h)


def probe(cp, lt, cslt, timer, dtype, m, k, splits, iters):
    npd = cslt.np_dtype(dtype)
    n = k
    ws, xs = rotated_inputs(cp, npd, m, k, n, 7)                                       # (N, K) and (M, K) each
    n_inputs = len(ws)
    ref = xs[0].astype(cp.float32) @ ws[0].astype(cp.float32).T                                   # (M, N)
    full = [cslt.SparseMatmul(w) for w in ws]
    rows = {"dense": {"us": timer.measure(lambda i: cp.matmul(xs[i], ws[i].T), n_inputs, iters)["gpu_ms"] * 1e3},
            "nmref": {"us": timer.measure(lambda i: full[i](xs[i]), n_inputs, iters)["gpu_ms"] * 1e3,
                      "rel": rel(cp.asnumpy(full[0](xs[0])), cp.asnumpy(ref))}}
    for s in splits:
        for x_mode in ("view", "copy"):
            key = f"S={s} {x_mode}"
            try:
                ops = [BatchedSplit(cp, lt, w, m, s, x_mode, xs[0]) for w in ws]
            except Exception as exc:
                rows[key] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
                print(key, rows[key], flush=True)
                continue
            xbs = [op.prepare(x) for op, x in zip(ops, xs)]
            y = cp.empty((m, n), dtype=npd)
            out = ops[0](xbs[0], y)
            rows[key] = {"config": ops[0].config, "rel": rel(cp.asnumpy(out), cp.asnumpy(ref)),
                         "us": timer.measure(lambda i: ops[i](xbs[i], y), n_inputs, iters)["gpu_ms"] * 1e3,
                         "batched_us": timer.measure(lambda i: ops[i].batched(xbs[i]), n_inputs,
                                                     iters)["gpu_ms"] * 1e3}
            print(key, rows[key], flush=True)
            for op in ops:
                op.close()
            if x_mode == "view" and "error" not in rows[key]:
                break                                           # the in-place view works: no copy variant needed
    return {"dtype": dtype, "shape": f"{m}x{k}x{n}", "rows": rows}


def main(argv=None):
    args = parse_args(argv)
    import cupy as cp
    from nvmath.bindings import cusparseLt as lt

    from nmref import cusparselt as cslt
    timer = Timer(cp)
    splits = [int(s) for s in args.splits.split(",")]
    records = [probe(cp, lt, cslt, timer, dtype, args.batch, args.size, splits, args.iters)
               for dtype in args.dtypes.split(",")]
    print("\n| dtype | shape | variant | us (batched + sum) | batched alone (us) | dense / variant | config "
          "| rel. error |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in records:
        dense = r["rows"]["dense"]["us"]
        for key, row in r["rows"].items():
            if "error" in row:
                print(f"| {r['dtype']} | {r['shape']} | {key} | {row['error'][:80]} | | | | |")
                continue
            batched = row.get("batched_us", float("nan"))
            print(f"| {r['dtype']} | {r['shape']} | {key} | {row['us']:.1f} | {batched:.1f} "
                  f"| {dense / row['us']:.2f}x | {row.get('config', '')} | {row.get('rel', float('nan')):.1e} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
