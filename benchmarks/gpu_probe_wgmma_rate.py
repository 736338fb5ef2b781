"""How fast can one H200 run Hopper's warpgroup MMA, sparse (wgmma.mma_async.sp m64nNk32) and dense
(wgmma.mma_async m64nNk16), with A from registers (RS) or shared memory (SS) and B from shared memory, with no
global memory traffic? The ceiling for gpu_probe_wgmma_sp.py, as gpu_probe_mma_rate.py is for mma.sp. Each
warpgroup issues U instructions into one accumulator per round and waits for all but DEPTH rounds
(DEPTH = -1: waits only at the end); the operands are constant bit noise (timing only). LOADA, SYNC, PROXY
add, one by one, what gpu_probe_wgmma_sp.py's main loop does each round: A fragments and metadata words read
from shared memory, a block barrier, a proxy fence. RANDOM fills the operands with random fp16 values
(the power, hence the clock, of real data). Prints TFLOP/s
dense-equivalent (a 2:4 m64nNk32 counts 2 x 64 x N x 32).

    python benchmarks/gpu_probe_wgmma_rate.py [--json OUT.json]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_probe_mma_rate import median_seconds  # noqa: E402
from gpu_probe_wgmma_sp import DESCRIPTOR, cubin_function  # noqa: E402

SOURCE = r"""

WGMMA_FUNCTION

__device__ __forceinline__ u32 random_half(u32 i) {         // sign, exponent 13..16, mantissa from a hash of i
    i ^= i >> 16; i *= 0x7feb352du; i ^= i >> 15; i *= 0x846ca68bu; i ^= i >> 16;
    return ((i >> 15) & 0x8000u) | ((13u + (i & 3u)) << 10) | ((i >> 2) & 0x3ffu);
}
__device__ __forceinline__ u32 random_halves(u32 i) { return random_half(2 * i) | (random_half(2 * i + 1) << 16); }

extern "C" __global__ void __launch_bounds__(128 * WGR, 1) rate(float* out, int iters) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 raw = (u32)__cvta_generic_to_shared(smem_raw), base = (raw + 1023) & ~1023u;
    uint4* fill = (uint4*)(smem_raw + (base - raw));
    for (int i = threadIdx.x; i < 65536 / 16; i += blockDim.x)
#if RANDOM                                                      // random fp16 in +-[0.25, 2): the power of real data
        fill[i] = make_uint4(random_halves(4 * i), random_halves(4 * i + 1), random_halves(4 * i + 2),
                             random_halves(4 * i + 3));
#else
        fill[i] = make_uint4(0x3c003c00u ^ i, 0x38003800u, 0x3c00bc00u, 0x34003400u);   // fp16 bit noise
#endif
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
#if RANDOM
    uint4 a = make_uint4(random_halves(99991 * threadIdx.x), random_halves(99991 * threadIdx.x + 1),
                         random_halves(99991 * threadIdx.x + 2), random_halves(99991 * threadIdx.x + 3));
#else
    const u32 lane = threadIdx.x & 31;
    uint4 a = make_uint4(0x3c003c00u ^ lane, 0x3c003c00u, 0x38003800u, 0x3c00bc00u);
#endif
    u32 e = 0x44444444u;                                        // 2:4 positions 0, 1
    u32* meta_words = (u32*)(smem_raw + (base - raw)) + 15360;  // valid metadata words for LOADA
    for (int i = threadIdx.x; i < 1024; i += blockDim.x) meta_words[i] = 0x44444444u;
    __syncthreads();
    const u64 desc_b = descriptor(base), desc_a = descriptor(base + 32768);
    float d[N / 2];
#pragma unroll
    for (int i = 0; i < N / 2; ++i) d[i] = 0.f;
    // LOADA 1: each wgmma's A fragment and metadata word read from shared memory just before it; LOADA 2: a
    // round's U fragments read into one of two register sets, the other set "kept alive" by an empty asm after
    // the round's wait. ptxas never sees an empty asm: it merges the sets and serializes every HGMMA (SASS in
    // results/gpu_wgmma_sass_2026-11-21.txt); gpu_probe_wgmma_sp.py keeps its sets apart with a real use.
    uint4 a_set[2][U];
    u32 e_set[2][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        a_set[0][u] = a_set[1][u] = a;
        e_set[0][u] = e_set[1][u] = e;
    }
    auto round = [&](int i, uint4 (&as)[U], u32 (&es)[U], const uint4 (&a_other)[U], const u32 (&e_other)[U]) {
#if SYNC
        __syncthreads();
#endif
#if PROXY
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
#if LOADA == 2
#pragma unroll
        for (int u = 0; u < U; ++u) {
            as[u] = fill[(threadIdx.x + 128 * WGR * ((i + u) & 7)) & 2047];
            es[u] = meta_words[(threadIdx.x + 37 * u) & 1023];
        }
#endif
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int u = 0; u < U; ++u) {
#if LOADA == 1
            a = fill[(threadIdx.x + 128 * WGR * ((i + u) & 7)) & 2047];
            e = meta_words[(threadIdx.x + 37 * u) & 1023];
#endif
#if LOADA == 2
            wgmma(d, as[u], desc_a, desc_b + 4 * (u & 1), es[u]);
#else
            wgmma(d, a, desc_a, desc_b + 4 * (u & 1), e);
#endif
        }
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#if DEPTH >= 0
        asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(DEPTH) : "memory");
#endif
#if LOADA == 2
#pragma unroll
        for (int u = 0; u < U; ++u)
            asm volatile("" :: "r"(a_other[u].x), "r"(a_other[u].y), "r"(a_other[u].z), "r"(a_other[u].w),
                         "r"(e_other[u]));
#endif
    };
    for (int i = 0; i < iters; i += 2) {
        round(i, a_set[0], e_set[0], a_set[1], e_set[1]);
        round(i + 1, a_set[1], e_set[1], a_set[0], e_set[0]);
    }
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) s += d[i];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""

KINDS = {   # kind: (PTX shape suffix, operands after d, k)
    "sp_rs": ("sp.sync.aligned.m64n{n}k32", "{{%{a0}, %{a1}, %{a2}, %{a3}}}, %{db}, %{e}, 0, 1, 1, 1, 0", 32),
    "sp_ss": ("sp.sync.aligned.m64n{n}k32", "%{da}, %{db}, %{e}, 0, 1, 1, 1, 0, 0", 32),
    "dense_rs": ("sync.aligned.m64n{n}k16", "{{%{a0}, %{a1}, %{a2}, %{a3}}}, %{db}, 1, 1, 1, 0", 16),
    "dense_ss": ("sync.aligned.m64n{n}k16", "%{da}, %{db}, 1, 1, 1, 0, 0", 16),
}


def wgmma_function(kind, n):
    shape, operands, _ = KINDS[kind]
    acc = n // 2
    slots = {"a0": acc, "a1": acc + 1, "a2": acc + 2, "a3": acc + 3, "da": acc + 4, "db": acc + 5, "e": acc + 6}
    regs = ", ".join(f"%{i}" for i in range(acc))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(acc))
    return ("__device__ __forceinline__ void wgmma(float* d, const uint4& a, u64 desc_a, u64 desc_b, u32 e) {\n"
            f'    asm volatile("wgmma.mma_async.{shape.format(n=n)}.f32.f16.f16 {{{regs}}}, '
            f'{operands.format(**slots)};"\n'
            f"                 : {outs}\n"
            '                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(desc_a), "l"(desc_b), "r"(e) : "memory");\n'
            "}\n")


def measure(cp, kind, n, wgr, u, depth, loada=0, sync=0, proxy=0, random=0, iters=2048):
    defines = (f"#define N {n}\n#define WGR {wgr}\n#define U {u}\n#define DEPTH {depth}\n#define LOADA {loada}\n"
               f"#define SYNC {sync}\n#define PROXY {proxy}\n#define RANDOM {random}\n")
    source = defines + "typedef unsigned int u32;\n" + DESCRIPTOR + SOURCE.replace("WGMMA_FUNCTION",
                                                                                   wgmma_function(kind, n))
    kernel = cubin_function(source, "rate", f"{kind} n{n} wg{wgr} u{u} depth{depth} loada{loada} sync{sync} "
                                            f"proxy{proxy} random{random}")
    kernel.max_dynamic_shared_size_bytes = 65536 + 1024
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    out = cp.empty(sms * 128 * wgr, dtype=cp.float32)
    args = (out, cp.int32(iters))
    seconds = median_seconds(cp, lambda: kernel((sms,), (128 * wgr,), args, shared_mem=65536 + 1024))
    count = sms * wgr * u * iters
    flop = 2 * 64 * n * 32 * count                       # dense-equivalent (a dense k16 pair = one k32)
    if KINDS[kind][2] == 16:
        flop //= 2
    return {"kind": kind, "n": n, "warpgroups": wgr, "u": u, "depth": depth, "loada": loada, "sync": sync,
            "proxy": proxy, "random": random, "us": seconds * 1e6, "tflops": flop / seconds / 1e12}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    args = p.parse_args(argv)
    import cupy as cp
    rows = []
    cases = [("sp_rs", 256, 1, 2, 1), ("sp_rs", 256, 2, 2, 1), ("sp_rs", 256, 1, 4, -1), ("sp_rs", 256, 2, 4, -1),
             ("sp_rs", 128, 2, 4, -1), ("sp_rs", 256, 2, 2, 0),
             ("sp_ss", 256, 1, 4, -1), ("sp_ss", 256, 2, 4, -1), ("sp_ss", 256, 2, 2, 1),
             ("dense_rs", 256, 2, 4, -1), ("dense_ss", 256, 2, 4, -1), ("dense_ss", 256, 2, 4, 1),
             # what gpu_probe_wgmma_sp.py's loop adds: A and metadata from shared memory, a barrier, a proxy fence
             ("sp_rs", 256, 2, 2, 1, 1), ("sp_rs", 256, 2, 2, 1, 0, 1), ("sp_rs", 256, 2, 2, 1, 0, 0, 1),
             ("sp_rs", 256, 2, 2, 1, 1, 1, 1), ("sp_rs", 256, 2, 4, 1, 1, 1, 1), ("sp_rs", 256, 1, 2, 1, 1),
             ("sp_ss", 256, 2, 2, 1, 1), ("sp_ss", 256, 2, 2, 1, 1, 1, 1), ("sp_ss", 256, 2, 4, 1, 1, 1, 1),
             # the same on random operands (power): the rate real data can have
             ("sp_rs", 256, 2, 4, -1, 0, 0, 0, 1), ("sp_ss", 256, 2, 4, -1, 0, 0, 0, 1),
             ("dense_ss", 256, 2, 4, -1, 0, 0, 0, 1), ("dense_rs", 256, 2, 4, -1, 0, 0, 0, 1),
             ("sp_rs", 256, 2, 2, 1, 1, 1, 1, 1), ("sp_ss", 256, 2, 2, 1, 1, 1, 1, 1),
             # two register sets for A and metadata (LOADA 2)
             ("sp_rs", 256, 2, 2, 1, 2), ("sp_rs", 256, 1, 2, 1, 2), ("sp_rs", 256, 2, 2, 1, 2, 1, 1),
             ("sp_rs", 256, 2, 4, 1, 2, 1, 1), ("sp_rs", 256, 2, 2, 1, 2, 1, 1, 1), ("sp_ss", 256, 2, 2, 1, 2, 1, 1, 1)]
    for case in cases:
        try:
            rows.append(measure(cp, *case))
        except Exception as exc:
            rows.append({"kind": case[0], "case": case, "error": f"{type(exc).__name__}: {exc}"[:400]})
        print(json.dumps(rows[-1]), flush=True)
    print("| kind | N | warpgroups | per round | wait depth | A, meta from smem | barrier | proxy fence | random "
          "| TFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "tflops" in r:
            print(f"| {r['kind']} | {r['n']} | {r['warpgroups']} | {r['u']} | {r['depth']} | {r['loada']} | "
                  f"{r['sync']} | {r['proxy']} | {r['random']} | {r['tflops']:.0f} |")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
