"""Probe which cuSPARSELt call sequences work on this GPU, each variant in its own process (a kernel that
traps leaves the CUDA context unusable). Raw nvmath bindings, independent of nmref.cusparselt.

    python benchmarks/gpu_probe_cusparselt.py [--json FILE] [--only round2|a,b,...]   # all variants
    python benchmarks/gpu_probe_cusparselt.py VARIANT            # one, in this process
    python benchmarks/gpu_probe_cusparselt.py --layouts [--jsonl FILE] [--budget S] [--dtypes float16,...]
        [--layout-names wA_wrow_xrow,...] [--no-nmref]   (environment: PROBE_BATCHES, PROBE_SWEEP, PROBE_SPLIT=0)

Round 3 (--layouts): for y = x @ W.T with W 4096x4096, every operand arrangement cuSPARSELt accepts without a
copy (W as structured A or B, each operand's descriptor row- or column-major), per batch size: the library's
search, and a sweep over every config id, then split-K x split-K mode on the 12 fastest; CUDA-event medians
with the L2 flushed before every call, against CuPy dense timed the same way; nmref's SparseMatmul per layout last. One process per
(dtype, arrangement), restarted past a configuration that kills the CUDA context.
"""
import json
import os
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
    if {"-h", "--help"} & set(sys.argv):
        print("usage: python benchmarks/gpu_probe_cusparselt.py [...]\n" + __doc__)
        return
    if "--layouts-child" in sys.argv:
        i = sys.argv.index("--layouts-child")
        dtype, layout, log, deadline = sys.argv[i + 1:i + 5]
        r3_child(dtype, layout, log, float(deadline))
        return
    if "--layouts" in sys.argv:
        r3_main(sys.argv)
        return
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


# ---------------------------------------------------------------- round 3: arrangements, split-K
LAYOUTS = {      # name: (operand holding W, W's descriptor order, x's descriptor order); y (M, N) row-major always
    "wA_wrow_xrow": ("A", "row", "row"),      # rounds 1-2: D = W x^T, column-major (N, M)
    "wA_wrow_xcol": ("A", "row", "col"),
    "wA_wcol_xrow": ("A", "col", "row"),
    "wA_wcol_xcol": ("A", "col", "col"),
    "wB_wrow_xrow": ("B", "row", "row"),      # D = x W^T, row-major (M, N)
    "wB_wrow_xcol": ("B", "row", "col"),
    "wB_wcol_xrow": ("B", "col", "row"),
    "wB_wcol_xcol": ("B", "col", "col"),
}
SPLITS = ((None, None), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2), (16, 1), (16, 2), (None, 6), (None, 3))
R3_BATCHES = tuple(int(b) for b in os.environ.get("PROBE_BATCHES", "16,64,256,1024,4096").split(","))
R3_SWEEP = tuple(int(b) for b in os.environ.get("PROBE_SWEEP", "16,256,4096").split(",") if b)
R3_SPLIT = os.environ.get("PROBE_SPLIT", "1") != "0"     # round 2 of the sweep: split-K x mode on the best 12
R3_K = R3_N = 4096
_ROW, _COL = 2, 1


def r3_matmul_desc(lt, h, layout, m, ct_in, ct_out, compute):
    """Matmul descriptor for y (m, N) = x (m, K) @ W.T in arrangement ``layout``; (desc, W is operand A)."""
    side, w_order, x_order = LAYOUTS[layout]
    k, n = R3_K, R3_N
    w = (lt.structured_descriptor_init(h, n, k, k, 16, ct_in, _ROW, 0) if w_order == "row"
         else lt.structured_descriptor_init(h, k, n, k, 16, ct_in, _COL, 0))              # W (N, K) row = (K, N) col
    x = (lt.dense_descriptor_init(h, m, k, k, 16, ct_in, _ROW) if x_order == "row"
         else lt.dense_descriptor_init(h, k, m, k, 16, ct_in, _COL))                      # x (M, K) row = (K, M) col
    if side == "A":                   # D = op(W) op(x): (N, M) column-major
        d = lt.dense_descriptor_init(h, n, m, n, 16, ct_out, _COL)
        op_w, op_x = (0 if w_order == "row" else 1), (1 if x_order == "row" else 0)
        return lt.matmul_descriptor_init(h, op_w, op_x, w, x, d, d, compute), True
    d = lt.dense_descriptor_init(h, m, n, n, 16, ct_out, _ROW)     # D = op(x) op(W): (M, N) row-major
    op_x, op_w = (0 if x_order == "row" else 1), (1 if w_order == "row" else 0)
    return lt.matmul_descriptor_init(h, op_x, op_w, x, w, d, d, compute), False


def cold_us(cp, flush, fn, iters):
    """Median GPU time of fn (us), ``flush`` (a buffer larger than the L2) rewritten before every call."""
    import statistics
    fn()
    starts = [cp.cuda.Event() for _ in range(iters)]
    ends = [cp.cuda.Event() for _ in range(iters)]
    for i in range(iters):
        flush.fill(i & 255)
        starts[i].record()
        fn()
        ends[i].record()
    ends[-1].synchronize()
    return statistics.median(cp.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends)) * 1e3


def r3_child(dtype, layout, log_path, deadline):
    """Every item of one (dtype, layout) not yet in log_path; exit code 3 once the CUDA context is dead."""
    import cupy as cp
    from nvmath.bindings import cusparseLt as lt
    done = set()
    try:
        with open(log_path) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        done = {(r["m"], r["key"]) for r in recs if (r.get("dtype"), r.get("layout")) == (dtype, layout)}
    except FileNotFoundError:
        pass
    log = open(log_path, "a")

    def write(rec):
        log.write(json.dumps(dict(rec, dtype=dtype, layout=layout)) + "\n")
        log.flush()

    npd = np.float16
    if dtype == "bfloat16":
        import ml_dtypes
        npd = ml_dtypes.bfloat16
    ct = {"float16": 2, "bfloat16": 14}[dtype]
    attr = lt.MatmulAlgAttribute
    h = lt.init()
    flush = cp.empty(256 << 20, cp.uint8)                       # 4x the H200's L2
    alpha, beta = np.ones(1, np.float32), np.zeros(1, np.float32)
    streams = np.zeros(1, np.uint64)                            # the legacy default stream, as CuPy uses
    rng = cp.random.default_rng(0)
    w32 = rng.standard_normal((R3_N, R3_K // 4, 4), dtype=cp.float32)
    rank = cp.argsort(cp.argsort(cp.abs(w32), axis=2), axis=2)
    w = (w32 * (rank >= 2)).reshape(R3_N, R3_K).astype(npd)      # (N, K) 2:4 along K

    def cold(fn, iters):
        return cold_us(cp, flush, fn, iters)

    def alive():
        try:
            cp.cuda.runtime.deviceSynchronize()
            return float(cp.ones(4).sum()) == 4.0
        except Exception:
            return False

    def item(m, key, fn):
        if (m, key) in done:
            return
        if time.time() > deadline:
            if (m, "deadline") not in done:
                write({"m": m, "key": "deadline", "skipped": f"deadline reached at {key}"})
                done.add((m, "deadline"))
            return
        write({"m": m, "key": key, "start": True})
        try:
            rec = fn()
        except Exception as exc:
            rec = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        write(dict(rec, m=m, key=key))
        if "error" in rec and not alive():
            sys.exit(3)

    def get_attr(sel, a):
        v = np.full(1, -1, np.int32)
        try:
            lt.matmul_alg_get_attribute(h, sel, a, v.ctypes.data, 4)
        except Exception:
            pass
        return int(v[0])

    def set_attr(sel, a, value):
        v = np.array([value], np.int32)
        lt.matmul_alg_set_attribute(h, sel, a, v.ctypes.data, 4)

    for m_phase in ("search", "sweep"):
        for m in (R3_BATCHES if m_phase == "search" else R3_SWEEP):
            x = rng.standard_normal((m, R3_K), dtype=cp.float32).astype(npd)             # (M, K)
            ref = x.astype(cp.float32) @ w.astype(cp.float32).T                          # (M, N)
            y = cp.empty((m, R3_N), dtype=npd)                                           # (M, N)
            if m_phase == "sweep" and time.time() > deadline:
                break
            try:
                mm, w_is_a = r3_matmul_desc(lt, h, layout, m, ct, ct, 2)
                valid = cp.zeros(1, cp.int32)
                lt.sp_mma_prune_check(h, mm, w.data.ptr, valid.data.ptr, 0)
                refused = int(valid.get()[0]) != 0
            except Exception as exc:
                item(m, "describe", lambda: {"error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            if refused:
                item(m, "prune_check", lambda: {"error": "prune check refused the 2:4 weight in this arrangement"})
                continue
            a_ptr, b_ptr = (None, x.data.ptr) if w_is_a else (x.data.ptr, None)

            def build(cfg=None, split=None, mode=None, search=False, search_iters=None):
                sel = lt.matmul_alg_selection_init(h, mm, 0)
                for a, v in ((attr.CONFIG_ID, cfg), (attr.SPLIT_K, split), (attr.SPLIT_K_MODE, mode),
                             (attr.SEARCH_ITERATIONS, search_iters)):
                    if v is not None:
                        set_attr(sel, a, v)
                plan = lt.matmul_plan_init(h, mm, sel)
                size, bsize = lt.sp_mma_compressed_size(h, plan)
                wc, buf = cp.empty(size, cp.uint8), cp.empty(max(bsize, 1), cp.uint8)
                lt.sp_mma_compress(h, plan, w.data.ptr, wc.data.ptr, buf.data.ptr, 0)
                ws = cp.empty(max(lt.matmul_get_workspace(h, plan), 1), cp.uint8)
                pa, pb = (wc.data.ptr, b_ptr) if w_is_a else (a_ptr, wc.data.ptr)

                def call():
                    lt.matmul(h, plan, alpha.ctypes.data, pa, pb, beta.ctypes.data, y.data.ptr, y.data.ptr,
                              ws.data.ptr, streams.ctypes.data, 1)
                if search:
                    lt.matmul_search(h, plan, alpha.ctypes.data, pa, pb, beta.ctypes.data, y.data.ptr, y.data.ptr,
                                     ws.data.ptr, streams.ctypes.data, 1)
                    ws = cp.empty(max(lt.matmul_get_workspace(h, plan), 1), cp.uint8)
                info = {"cfg": get_attr(sel, attr.CONFIG_ID), "split_k": get_attr(sel, attr.SPLIT_K),
                        "mode": get_attr(sel, attr.SPLIT_K_MODE), "max_id": get_attr(sel, attr.CONFIG_MAX_ID),
                        "ws": int(ws.size)}
                return call, info, (plan, sel, wc, ws, buf)

            def measure(iters, **kw):
                call, info, keep = build(**kw)
                y.fill(np.nan)
                call()
                err = float(cp.linalg.norm(y.astype(cp.float32) - ref) / cp.linalg.norm(ref))
                info.update(rel=err, us=cold(call, iters))
                lt.matmul_plan_destroy(keep[0])
                lt.matmul_alg_selection_destroy(keep[1])
                return info

            if m_phase == "search":
                if layout == "wA_wrow_xrow":
                    yd = cp.empty((m, R3_N), dtype=npd)
                    item(m, "dense", lambda: {"us": cold(lambda: cp.matmul(x, w.T, out=yd), 30)})
                item(m, "search", lambda: measure(30, search=True))
                if m <= 256:
                    item(m, "search_it20", lambda: measure(30, search=True, search_iters=20))
                continue
            def swept():
                with open(log_path) as f:
                    recs = [json.loads(line) for line in f]
                return sorted((r for r in recs if (r.get("dtype"), r.get("layout"), r.get("m")) == (dtype, layout, m)
                               and r.get("key", "").startswith("c") and "us" in r and r["rel"] < 5e-2),
                              key=lambda r: r["us"])

            max_id = build()[1]["max_id"]
            for cfg in range(max_id):                       # every config, no split-K; then split-K on the best 12
                item(m, f"c{cfg}_sNone_mNone", lambda: measure(7, cfg=cfg))
            best_configs = [int(r["key"].split("_")[0][1:]) for r in swept()][:12]
            for cfg in best_configs if R3_SPLIT else ():
                for split, mode in SPLITS[1:]:
                    item(m, f"c{cfg}_s{split}_m{mode}", lambda: measure(7, cfg=cfg, split=split, mode=mode))
            for r in swept()[:3]:
                cfg, split, mode = (None if v[1:] == "None" else int(v[1:]) for v in r["key"].split("_"))
                item(m, "top_" + r["key"], lambda: measure(30, cfg=cfg, split=split, mode=mode))
    log.close()


def r3_nmref_child(dtype, log_path):
    """nmref's SparseMatmul per layout and CuPy dense, timed like the raw items (after the raw ones)."""
    import cupy as cp
    from nmref import cusparselt as cslt
    npd = cslt.np_dtype(dtype)
    flush = cp.empty(256 << 20, cp.uint8)
    rng = cp.random.default_rng(1)
    w32 = rng.standard_normal((R3_N, R3_K // 4, 4), dtype=cp.float32)
    rank = cp.argsort(cp.argsort(cp.abs(w32), axis=2), axis=2)
    w = (w32 * (rank >= 2)).reshape(R3_N, R3_K).astype(npd)
    log = open(log_path, "a")

    def cold(fn, iters=30):
        return cold_us(cp, flush, fn, iters)

    layouts = list(getattr(cslt, "LAYOUTS", ())) + (["auto"] if hasattr(cslt, "LAYOUTS") else [None])
    for m in R3_BATCHES:
        x = rng.standard_normal((m, R3_K), dtype=cp.float32).astype(npd)
        ref = x.astype(cp.float32) @ w.astype(cp.float32).T
        rec = {"dtype": dtype, "layout": "nmref", "m": m, "key": "dense", "us": cold(lambda: cp.matmul(x, w.T))}
        log.write(json.dumps(rec) + "\n")
        for layout in layouts:
            rec = {"dtype": dtype, "layout": "nmref", "m": m, "key": f"nmref_{layout}"}
            try:
                op = cslt.SparseMatmul(w) if layout is None else cslt.SparseMatmul(w, layout=layout)
                y = op(x)
                rec["rel"] = float(cp.linalg.norm(y.astype(cp.float32) - ref) / cp.linalg.norm(ref))
                rec["us"] = cold(lambda: op(x, out=y))
                rec["chosen"] = getattr(op, "layout_for", lambda b: None)(m)
                op.close()
            except Exception as exc:
                rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
            log.write(json.dumps(rec) + "\n")
            log.flush()
    log.close()


def r3_main(argv):
    """Run every (dtype, layout) child with restarts, then nmref's, then print the summary."""
    opt = lambda name, default: argv[argv.index(name) + 1] if name in argv else default
    log_path = opt("--jsonl", "/tmp/probe_layouts.jsonl")
    budget = float(opt("--budget", "300"))
    dtypes = opt("--dtypes", "float16,bfloat16").split(",")
    t_end = time.time() + budget
    layouts = opt("--layout-names", ",".join(LAYOUTS)).split(",")
    jobs = [(d, lay) for d in dtypes for lay in layouts]
    for i, (dtype, layout) in enumerate(jobs):
        nmref_reserve = 15 * len(dtypes) if "--no-nmref" not in argv else 0
        deadline = time.time() + max(5.0, (t_end - nmref_reserve - time.time()) / (len(jobs) - i))
        for attempt in range(8):
            try:
                cmd = [sys.executable, __file__, "--layouts-child", dtype, layout, log_path, str(deadline)]
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, deadline - time.time() + 60))
            except subprocess.TimeoutExpired as exc:
                p = subprocess.CompletedProcess(exc.cmd, -9, "", "timeout")
            crashed = _r3_mark_crashed(log_path, dtype, layout)
            elapsed = time.time() - t_end + budget
            print(f"{dtype} {layout}: exit {p.returncode}, crashed items {crashed}, {elapsed:.0f}s", flush=True)
            if p.returncode == 0:
                break
            if not crashed and p.returncode != 3:
                print((p.stdout + p.stderr)[-1500:], flush=True)
                break
    for dtype in dtypes if "--no-nmref" not in argv else ():
        code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                f"import gpu_probe_cusparselt as g; g.r3_nmref_child({dtype!r}, {log_path!r})")
        try:
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=100)
            print(f"nmref {dtype}: exit {p.returncode} {(p.stdout + p.stderr)[-800:]}", flush=True)
        except subprocess.TimeoutExpired:
            print(f"nmref {dtype}: timed out", flush=True)
    print(r3_summary(log_path))


def _r3_mark_crashed(log_path, dtype, layout):
    """Items that started and never finished (the process died in them): recorded as crashed, skipped next."""
    with open(log_path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    mine = [r for r in recs if r.get("dtype") == dtype and r.get("layout") == layout]
    finished = {(r["m"], r["key"]) for r in mine if "start" not in r}
    crashed = [(r["m"], r["key"]) for r in mine if "start" in r and (r["m"], r["key"]) not in finished]
    with open(log_path, "a") as f:
        for m, key in crashed:
            f.write(json.dumps({"dtype": dtype, "layout": layout, "m": m, "key": key, "error": "process died"}) + "\n")
    return crashed


def r3_summary(log_path):
    """Markdown: per dtype and batch, dense vs each arrangement's searched and best swept time."""
    with open(log_path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    recs = [r for r in recs if "start" not in r]
    lines = ["| dtype | M | layout | dense us | search us (cfg, split-K, mode) | best swept us (key) | dense/best |"
             " items ok/err |", "| --- | ---: | --- | ---: | --- | --- | ---: | --- |"]
    for dtype in sorted({r["dtype"] for r in recs}):
        for m in R3_BATCHES:
            mine = [r for r in recs if r["dtype"] == dtype and r["m"] == m]
            dense = [r["us"] for r in mine if r["key"] == "dense" and "us" in r]
            d = min(dense) if dense else float("nan")
            for layout in LAYOUTS:
                rs = [r for r in mine if r["layout"] == layout and r["key"] != "dense"]
                if not rs:
                    continue
                ok = [r for r in rs if "us" in r and r.get("rel", 1) < 2e-2]
                s = next((r for r in ok if r["key"] == "search"), None)
                s_txt = f"{s['us']:.1f} ({s['cfg']}, {s['split_k']}, {s['mode']})" if s else "-"
                best = min(ok, key=lambda r: r["us"], default=None)
                b_txt = f"{best['us']:.1f} ({best['key']})" if best else "-"
                ratio = f"{d / best['us']:.2f}x" if best else "-"
                errors = sorted({r.get("error", r.get("skipped", ""))[:60] for r in rs if "us" not in r})
                lines.append(f"| {dtype} | {m} | {layout} | {d:.1f} | {s_txt} | {b_txt} | {ratio} | "
                             f"{len(ok)}/{len(rs) - len(ok)} {'; '.join(errors)[:150]} |")
    lines += ["", "nmref.cusparselt.SparseMatmul per layout (search on), timed the same way:", "",
              "| dtype | M | dense us | " + " | ".join(LAYOUTS) + " | auto (chosen) |",
              "| --- | ---: | ---: |" + " ---: |" * (len(LAYOUTS) + 1)]
    for dtype in sorted({r["dtype"] for r in recs}):
        for m in R3_BATCHES:
            mine = {r["key"]: r for r in recs if r["dtype"] == dtype and r["m"] == m and r["layout"] == "nmref"}
            if not mine:
                continue
            cell = lambda r: "-" if r is None else (f"{r['us']:.1f}" if "us" in r else "err")
            auto = mine.get("nmref_auto")
            lines.append(f"| {dtype} | {m} | {cell(mine.get('dense'))} | "
                         + " | ".join(cell(mine.get(f"nmref_{lay}")) for lay in LAYOUTS)
                         + f" | {cell(auto)} ({auto.get('chosen') if auto else '-'}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
