"""Probe which cuSPARSELt call sequences work on this GPU, each variant in its own process (a kernel that
traps leaves the CUDA context unusable). Raw nvmath bindings, independent of nmref.cusparselt.

    python benchmarks/gpu_probe_cusparselt.py [--json FILE] [--only round2|a,b,...]   # all variants
    python benchmarks/gpu_probe_cusparselt.py VARIANT            # one, in this process
"""
import json
import subprocess
import sys
import time

import numpy as np

VARIANTS = {                      # name: options; shape (out, in, batch)
    "plain_small": dict(shape=(64, 128, 32)),
    "plain_4096": dict(shape=(4096, 4096, 16)),
    "plain_4096_b4096": dict(shape=(4096, 4096, 4096)),
    "plain_bf16": dict(shape=(256, 512, 64), dtype="bfloat16"),
    "plain_bias": dict(shape=(256, 512, 64), bias=True),
    "plain_plan_compress": dict(shape=(256, 512, 64), compress="plan"),
    "plain_int8_int32": dict(shape=(256, 512, 64), dtype="int8", out="int32"),
    "plain_int8_fp16": dict(shape=(256, 512, 64), dtype="int8", out="float16"),
    "search_small": dict(shape=(64, 128, 32), search=True),
    "search_4096": dict(shape=(4096, 4096, 256), search=True),
    "search_big_workspace": dict(shape=(4096, 4096, 256), search=True, ws_extra=256 << 20),
    "search_sparse_ptr": dict(shape=(4096, 4096, 256), search=True, sparse_ptr=True),
    "search_no_streams": dict(shape=(4096, 4096, 256), search=True, nstreams=0),
    "search_d_rowmajor": dict(shape=(4096, 4096, 256), search=True, d_order="row"),
    "search_b_colmajor_opN": dict(shape=(4096, 4096, 256), search=True, b_op="N"),
    "search_plan_compress": dict(shape=(4096, 4096, 256), search=True, compress="plan"),
    "torch_cslt": dict(shape=(4096, 4096, 256), torch=True),
    "configs_4096": dict(shape=(4096, 4096, 256), configs=True),
    # second round: does the search need the weight compressed through its own plan?
    "cross_c32_s16": dict(shape=(4096, 4096, 16), search=True, compress="plan", compress_batch=32),
    "cross_c32_s256": dict(shape=(4096, 4096, 256), search=True, compress="plan", compress_batch=32),
    "cross_c256_s32": dict(shape=(4096, 4096, 32), search=True, compress="plan", compress_batch=256),
    "same_s16": dict(shape=(4096, 4096, 16), search=True, compress="plan"),
    "same_s4096": dict(shape=(4096, 4096, 4096), search=True, compress="plan"),
    "same_tiny": dict(shape=(16, 16, 8), search=True, compress="plan"),
    "same_bf16_s256": dict(shape=(4096, 4096, 256), dtype="bfloat16", search=True, compress="plan"),
    "bytes_4096": dict(shape=(4096, 4096, 16), bytes=(8, 16, 32, 256, 4096)),
}
ROUND2 = [k for k in VARIANTS if k.startswith(("cross", "same", "bytes"))]


def run(name):
    import cupy as cp
    from nvmath.bindings import cusparseLt as lt
    o = VARIANTS[name]
    out_f, in_f, batch = o["shape"]
    dtype = o.get("dtype", "float16")
    out_dtype = o.get("out", "int32" if dtype == "int8" else dtype)
    if dtype == "bfloat16" or out_dtype == "bfloat16":
        import ml_dtypes
    npd = {"float16": np.float16, "int8": np.int8, "int32": np.int32, "float32": np.float32}.get
    dt = (lambda s: np.dtype(ml_dtypes.bfloat16) if s == "bfloat16" else np.dtype(npd(s)))
    rng = np.random.default_rng(0)
    w = rng.standard_normal((out_f, in_f // 4, 4)).astype(np.float32)
    keep = np.argsort(np.argsort(np.abs(w), axis=2), axis=2) >= 2
    w = (w * keep).reshape(out_f, in_f)
    x = rng.standard_normal((batch, in_f)).astype(np.float32)
    if dtype == "int8":
        w, x = np.rint(w * 10).clip(-40, 40), rng.integers(-8, 9, (batch, in_f)).astype(np.float32)
    wg, xg = cp.asarray(w).astype(dt(dtype)), cp.asarray(x).astype(dt(dtype))
    ref = x.astype(np.float64) @ cp.asnumpy(wg.astype(cp.float32)).astype(np.float64).T
    bias = cp.asarray(rng.standard_normal(out_f).astype(np.float32)).astype(dt("float32" if dtype == "int8" else out_dtype)) if o.get("bias") else None
    if bias is not None:
        ref = ref + cp.asnumpy(bias.astype(cp.float32))

    if o.get("torch"):
        import torch
        wt, xt = torch.from_dlpack(wg), torch.from_dlpack(xg)
        wc = torch._cslt_compress(wt)
        y = torch._cslt_sparse_mm(wc, xt.t(), transpose_result=True)
        torch.cuda.synchronize()
        e1 = np.linalg.norm(y.float().cpu().numpy() - ref) / np.linalg.norm(ref)
        alg = torch._cslt_sparse_mm_search(wc, xt.t(), transpose_result=True)
        y2 = torch._cslt_sparse_mm(wc, xt.t(), transpose_result=True, alg_id=alg)
        torch.cuda.synchronize()
        e2 = np.linalg.norm(y2.float().cpu().numpy() - ref) / np.linalg.norm(ref)
        return f"default rel {e1:.2e}; searched alg_id {alg} rel {e2:.2e}"

    ctype = {"float16": 2, "bfloat16": 14, "int8": 3, "int32": 10, "float32": 0}
    h = lt.init()
    a = lt.structured_descriptor_init(h, out_f, in_f, in_f, 16, ctype[dtype], 2, 0)
    if o.get("b_op", "T") == "T":
        b, op_b = lt.dense_descriptor_init(h, batch, in_f, in_f, 16, ctype[dtype], 2), 1
    else:
        b, op_b = lt.dense_descriptor_init(h, in_f, batch, in_f, 16, ctype[dtype], 1), 0
    if o.get("d_order", "col") == "col":
        d = lt.dense_descriptor_init(h, out_f, batch, out_f, 16, ctype[out_dtype], 1)
    else:
        d = lt.dense_descriptor_init(h, out_f, batch, batch, 16, ctype[out_dtype], 2)
    mm = lt.matmul_descriptor_init(h, 0, op_b, a, b, d, d, 0 if dtype == "int8" else 2)
    holders = []
    if bias is not None:
        p = np.array([bias.data.ptr], np.uint64); holders.append(p)
        lt.matmul_desc_set_attribute(h, mm, 8, p.ctypes.data, 8)
    if o.get("sparse_ptr"):
        p = np.array([wg.data.ptr], np.uint64); holders.append(p)
        lt.matmul_desc_set_attribute(h, mm, 9, p.ctypes.data, 8)
    def plan_for(rows):
        bb = lt.dense_descriptor_init(h, rows, in_f, in_f, 16, ctype[dtype], 2)
        dd = lt.dense_descriptor_init(h, out_f, rows, out_f, 16, ctype[out_dtype], 1)
        m2 = lt.matmul_descriptor_init(h, 0, 1, a, bb, dd, dd, 0 if dtype == "int8" else 2)
        return lt.matmul_plan_init(h, m2, lt.matmul_alg_selection_init(h, m2, 0))

    def compress_with(pl):
        size, bsize = lt.sp_mma_compressed_size(h, pl)
        out, buf = cp.empty(size, cp.uint8), cp.empty(max(bsize, 1), cp.uint8)
        lt.sp_mma_compress(h, pl, wg.data.ptr, out.data.ptr, buf.data.ptr, 0)
        cp.cuda.Device().synchronize()
        return out

    if o.get("bytes"):
        ref_c = compress_with(plan_for(o["bytes"][0]))
        size2, bsize2 = lt.sp_mma_compressed_size2(h, a)
        c2, buf2 = cp.empty(size2, cp.uint8), cp.empty(max(bsize2, 1), cp.uint8)
        lt.sp_mma_compress2(h, a, 1, 0, wg.data.ptr, c2.data.ptr, buf2.data.ptr, 0)
        cp.cuda.Device().synchronize()
        same = {rows: bool(c.size == ref_c.size and (c == ref_c).all())
                for rows in o["bytes"][1:] for c in [compress_with(plan_for(rows))]}
        v2_same = bool(c2.size == ref_c.size and (c2 == ref_c).all())
        return f"plan-compressed bytes equal to batch {o['bytes'][0]}'s: {same}; compress2 equal: {v2_same}; sizes {ref_c.size} {c2.size}"
    alg_sel = lt.matmul_alg_selection_init(h, mm, 0)
    max_id = np.zeros(1, np.int32)
    lt.matmul_alg_get_attribute(h, alg_sel, 1, max_id.ctypes.data, 4)
    plan = lt.matmul_plan_init(h, mm, alg_sel)
    valid = cp.zeros(1, cp.int32)
    if o.get("compress", "v2") == "v2":
        lt.sp_mma_prune_check2(h, a, 1, 0, wg.data.ptr, valid.data.ptr, 0)
        size, bsize = lt.sp_mma_compressed_size2(h, a)
        wc, buf = cp.empty(size, cp.uint8), cp.empty(max(bsize, 1), cp.uint8)
        lt.sp_mma_compress2(h, a, 1, 0, wg.data.ptr, wc.data.ptr, buf.data.ptr, 0)
    else:
        lt.sp_mma_prune_check(h, mm, wg.data.ptr, valid.data.ptr, 0)
        wc = compress_with(plan_for(o["compress_batch"]) if "compress_batch" in o else plan)
    cp.cuda.Device().synchronize()
    assert int(valid.get()[0]) == 0, "prune check refused a 2:4 weight"
    alpha, beta = np.ones(1, np.float32), np.zeros(1, np.float32)
    streams = np.zeros(1, np.uint64)
    nst = o.get("nstreams", 1)
    sptr = streams.ctypes.data if nst else 0
    y_shape = (batch, out_f) if o.get("d_order", "col") == "col" else (out_f, batch)
    y = cp.full(y_shape, 7, dtype=dt(out_dtype))

    def workspace(plan):
        n = lt.matmul_get_workspace(h, plan) + o.get("ws_extra", 0)
        return cp.empty(max(n, 1), cp.uint8), n

    def result():
        yy = cp.asnumpy(y.astype(cp.float32)).astype(np.float64)
        yy = yy if y_shape == (batch, out_f) else yy.T
        return np.linalg.norm(yy - ref) / np.linalg.norm(ref)

    if o.get("configs"):
        lines = [f"CONFIG_MAX_ID {int(max_id[0])}"]
        for cid in range(int(max_id[0])):
            print(f"config {cid} ...", flush=True)
            sel = lt.matmul_alg_selection_init(h, mm, 0)
            c = np.array([cid], np.int32)
            lt.matmul_alg_set_attribute(h, sel, 0, c.ctypes.data, 4)
            pl = lt.matmul_plan_init(h, mm, sel)
            ws, n = workspace(pl)
            y.fill(7)
            start, end = cp.cuda.Event(), cp.cuda.Event()
            lt.matmul(h, pl, alpha.ctypes.data, wc.data.ptr, xg.data.ptr, beta.ctypes.data, y.data.ptr, y.data.ptr,
                      ws.data.ptr, sptr, nst)
            start.record()
            for _ in range(5):
                lt.matmul(h, pl, alpha.ctypes.data, wc.data.ptr, xg.data.ptr, beta.ctypes.data, y.data.ptr,
                          y.data.ptr, ws.data.ptr, sptr, nst)
            end.record()
            end.synchronize()
            lines.append(f"config {cid}: ws {n} rel {result():.2e} {cp.cuda.get_elapsed_time(start, end) / 5 * 1e3:.1f}us")
            print(lines[-1], flush=True)
        return "; ".join(lines)

    ws, n = workspace(plan)
    info = f"max_id {int(max_id[0])} ws {n}"
    if o.get("search"):
        lt.matmul_search(h, plan, alpha.ctypes.data, wc.data.ptr, xg.data.ptr, beta.ctypes.data, y.data.ptr,
                         y.data.ptr, ws.data.ptr, sptr, nst)
        cp.cuda.Device().synchronize()
        cid = np.zeros(1, np.int32)
        lt.matmul_alg_get_attribute(h, alg_sel, 0, cid.ctypes.data, 4)
        ws, n = workspace(plan)
        info += f" searched config {int(cid[0])} ws {n}"
    y.fill(7)
    lt.matmul(h, plan, alpha.ctypes.data, wc.data.ptr, xg.data.ptr, beta.ctypes.data, y.data.ptr, y.data.ptr,
              ws.data.ptr, sptr, nst)
    cp.cuda.Device().synchronize()
    return f"{info} rel {result():.2e}"


def main():
    if len(sys.argv) > 1 and sys.argv[1] in VARIANTS:
        print("RESULT", run(sys.argv[1]), flush=True)
        return
    results = {}
    names = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else list(VARIANTS)
    names = ROUND2 if names == ["round2"] else names
    for name in names:
        t0 = time.time()
        try:
            p = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=120)
            text = p.stdout + p.stderr
        except subprocess.TimeoutExpired as exc:
            text = f"TIMEOUT {exc}"
        lines = [ln for ln in text.splitlines() if ln.strip()]
        ok = any(ln.startswith("RESULT") for ln in lines)
        summary = next((ln for ln in lines if ln.startswith("RESULT")), " | ".join(lines[-3:]))
        if name == "configs_4096":
            summary = " ; ".join(ln for ln in lines if ln.startswith("config") or ln.startswith("CONFIG")) + " || " + lines[-1] if lines else ""
        results[name] = {"ok": ok, "out": summary[:3000], "s": round(time.time() - t0, 1)}
        print(f"{name:24s} {'OK ' if ok else 'BAD'} {summary[:600]}", flush=True)
    if "--json" in sys.argv:
        with open(sys.argv[sys.argv.index("--json") + 1], "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
