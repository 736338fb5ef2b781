"""Probe of a 2:4 kernel on Hopper's warpgroup sparse MMA, wgmma.mma_async.sp (sm_90a), for the batches and
shapes where mma.sp cannot win (gpu_probe_mma_rate.py: mma.sp tops out near 1.2x dense cuBLAS). An experiment,
not part of nmref: right on every check, slower than cuSPARSELt (results/gpu_probe_wgmma_sp_2026-11-21.md).

The kernel. A block of WG warpgroups owns BM = 64 WG rows of W and BN rows of x (BN = the instruction's N),
and moves K through STAGES shared-memory buffers of KW x 64 columns (2 KW k-steps of 32) by cp.async. A stage
holds the x tile, KW sub-tiles of BN rows of 128 bytes in the 128-byte swizzle wgmma reads through a matrix
descriptor (16-byte chunk q of row n at q ^ (n & 7); B is x^T, K-major), then the block's A fragments and
metadata words as ``pack`` lays them out for m16n8k32 (IDENTITY_ORDER: W's groups in place). Warp w of a
warpgroup holds rows 16w..16w+15 of its 64-row A operand in registers in mma.sp's m16n8k32 fragment layout,
metadata in lanes 4g, 4g+1 (selector 0): the layout the checks confirmed on the first run. One wgmma
m64nBNk32 per k-step, fp32 accumulators. The pack's K is padded to whole stage tiles (zero columns, valid
metadata), so the wgmma of a round are issued without a branch between them and form one group.

Pipeline: at round i every thread waits for its copies of tile i, fences them into the async proxy and meets
the block at a barrier; it then issues the copies of tile i + STAGES - 2 (their buffer was read by the wgmma of
tile i - 2, which every warpgroup has waited for), reads tile i's A fragments from shared memory into one of
two register sets, issues the round's wgmma and waits for the previous round's (wgmma.wait_group 1). A wgmma
reads its registers until it completes, so the two sets must stay apart: a real use of the other set after the
wait keeps ptxas from merging them (with one set, round i + 1 overwrote registers round i still read: NaN).

K splits over a (1, 1, SPLIT) thread-block cluster as in gpu_probe_mma_tiled.py: each block leaves its fp32
partial tile in its shared memory and block r sums x rows [r BN / SPLIT, (r + 1) BN / SPLIT) of the SPLIT tiles
in rank order through distributed shared memory, adds the bias, rounds once and writes y: deterministic, one
launch. FENCE 0 drops the proxy fence (3% faster, not guaranteed by PTX); NOLOAD 1 skips the main loop's
copies (the compute side alone, wrong results).

Why it stays behind cuSPARSELt (arithmetic from the measured rates, gpu_probe_wgmma_rate.py): a sparse
m64nNk32 reads its B (32 x N fp16) from shared memory per warpgroup, 16 KB per 524k multiply-adds at N = 256,
so at the instruction's rate (~3,950 a clock per SM, 1,900 TFLOP/s dense-equivalent) B alone takes ~123 of the
128 bytes a clock shared memory delivers (32 banks of 4 bytes). Writing the stages (x, A) and reading A on top
bound a sparse GEMM built this way near 57% of the instruction's peak (A staged in shared memory, as here) or
67% (A loaded straight into registers): about 1.1-1.3 PFLOP/s. Measured at 4096^3: cuSPARSELt 1.08 PFLOP/s,
this kernel 0.69 (0.95 with its copies removed).

The cubin is built by nvcc (-arch=sm_90a) on the GPU machine, since the wgmma instructions need sm_90a.

    python benchmarks/gpu_probe_wgmma_sp.py --jsonl OUT.jsonl [--batches 64,256,4096] [--configs 2,256,4,1]
    python benchmarks/gpu_probe_wgmma_sp.py --source 2,256,4,4 > k.cu      (the CUDA source of one launch shape)
    python benchmarks/gpu_probe_wgmma_sp.py --ncu-target 2,256,5,1:4096:4096  (three launches, for ncu)
"""
import argparse
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from collections import namedtuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cusparselt import Timer  # noqa: E402
from gpu_probe_mma_sp import check, jsonl_emitter, summarize, timing  # noqa: E402
from gpu_probe_mma_tiled import SPLIT_K_COMMON  # noqa: E402

from nmref.kernels import sparse_mma  # noqa: E402

WgmmaConfig = namedtuple("WgmmaConfig", "wg bn stages split kw fence noload", defaults=(1, 1, 0))
IDENTITY_ORDER = tuple(range(8))
PACK_ROW_TILES = 16                    # rows padded to whole blocks of every launch shape (WG <= 4)
PACK_K = 128                           # columns padded to whole stage tiles of every launch shape (KW <= 2)
SWEEP = tuple(WgmmaConfig(*c) for c in [
    (2, 256, 4, 4), (2, 256, 4, 2), (2, 256, 4, 1), (1, 256, 4, 2), (1, 256, 5, 1),
    (2, 128, 6, 2), (2, 128, 6, 4), (2, 128, 4, 1), (1, 128, 6, 1), (1, 128, 6, 2),
    (4, 128, 4, 4), (4, 128, 4, 2), (4, 128, 4, 1), (2, 64, 8, 4), (1, 64, 8, 2)])
CHECK_SHAPES = [(256, 4096, 4096), (3, 32, 16), (13, 96, 80), (130, 64, 48), (200, 512, 1000), (300, 1024, 272),
                (1000, 4096, 1000)]

# The wgmma matrix descriptor (here and gpu_probe_wgmma_rate.py); u32 comes from the including source.
DESCRIPTOR = r"""
typedef unsigned long long u64;

// Matrix descriptor of a K-major tile in the 128-byte swizzle: start address, leading byte offset 16 (unused
// for this swizzle), stride byte offset 1024 (from one 8-row group to the next), swizzle mode 1.
__device__ __forceinline__ u64 descriptor(u32 addr) {
    return (u64)((addr & 0x3FFFF) >> 4) | ((u64)1 << 16) | ((u64)(1024 >> 4) << 32) | ((u64)1 << 62);
}
"""

SOURCE = r"""
constexpr int THREADS = 128 * WG;
constexpr int BM = 64 * WG;                            // W rows of the block
constexpr int TILES = 4 * WG;                          // 16-row tiles of the block (one per warp)
constexpr int KS = 2 * KW;                             // k-steps (of 32) per stage
constexpr int SUB_BYTES = BN * 128;                    // one 64-column x sub-tile: BN rows x 128 bytes
constexpr int X_BYTES = KW * SUB_BYTES;                // x tile of a stage: KW sub-tiles
constexpr int A_BYTES = TILES * KS * 32 * 16;          // A fragments: [tile][k-step][lane] uint4
constexpr int E_BYTES = TILES * KS * 16 * 4;           // metadata: [tile][k-step][16] u32
constexpr int STAGE_BYTES = (X_BYTES + A_BYTES + E_BYTES + 1023) / 1024 * 1024;
constexpr int P = BM + 4;                              // row pitch (floats) of the partial tile red[BN][P]
static_assert(BN % 8 == 0 && BN <= 256, "wgmma's N");
static_assert(BN % SPLIT == 0, "each block of the cluster finishes BN / SPLIT x rows");

WGMMA_FUNCTION

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory");
}

// A thread's copies of every stage, addresses worked out once. x: chunks c = tid + j THREADS of each KW sub-tile,
// row n = c / 8 (x row row0 + n), chunk q = tid % 8 (fixed per thread, as is the swizzle n & 7); A: the thread
// copies its own warp's fragments of the KS k-steps (lane = its lane); metadata: lanes < 4 KS of each warp copy
// their warp's words, 16 bytes each. x's k-steps >= K / 32 and x rows >= M are zero-filled.
struct Loader {
    static constexpr int X_PER_SUB = SUB_BYTES / 16 / THREADS;      // x chunks per thread per sub-tile
    static constexpr int X_JUMP = THREADS / 8;                      // x rows between a thread's chunks
    const u16* x_src;                                               // x[row0 + tid / 8][8 (tid % 8)]
    const uint4* a_src;                                             // vals[tile0 + warp][0][lane]
    const u32* e_src;                                               // meta[tile0 + warp][lane / 4][4 (lane % 4)]
    u32 x_dst, a_dst, e_dst;                                        // offsets within a stage
    int x_rows_left, x_step, K;
    bool e_active;

    __device__ Loader(const uint4* vals, const u32* meta, const u16* x, int tile0, int row0, int M, int K_,
                      int kp) : K(K_) {
        const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, n0 = tid >> 3, q = tid & 7;
        x_src = x + (size_t)min(row0 + n0, M - 1) * K + 8 * q;
        x_dst = n0 * 128 + ((q ^ (n0 & 7)) << 4);
        x_rows_left = M - row0 - n0;
        x_step = q >> 2;
        a_src = vals + (size_t)(tile0 + warp) * kp * 32 + lane;
        a_dst = X_BYTES + 16 * (warp * KS * 32 + lane);
        e_active = lane < 4 * KS;
        e_src = meta + ((size_t)(tile0 + warp) * kp + (lane >> 2)) * 16 + 4 * (lane & 3);
        e_dst = X_BYTES + A_BYTES + 16 * (warp * KS * 4 + lane);
    }

    // the copies of stage tile `tile` (k-steps KS tile .. KS tile + KS - 1) into the stage at shared address `stage`;
    // x's k-steps from x_steps = K / 32 on are zero-filled (the pack's are zero columns with valid metadata)
    __device__ __forceinline__ void load(u32 stage, int tile, int x_steps) const {
        const int s0 = KS * tile;
        const bool full = s0 + KS <= x_steps;
#pragma unroll
        for (int w = 0; w < KW; ++w)
#pragma unroll
            for (int j = 0; j < X_PER_SUB; ++j) {
                const bool valid = j * X_JUMP < x_rows_left && (full || s0 + 2 * w + x_step < x_steps);
                cp_async16(stage + x_dst + w * SUB_BYTES + j * X_JUMP * 128,
                           x_src + (size_t)j * X_JUMP * K + 32 * (s0 + 2 * w), valid);
            }
#pragma unroll
        for (int u = 0; u < KS; ++u)
            cp_async16(stage + a_dst + 16 * 32 * u, a_src + (size_t)(s0 + u) * 32, true);
        if (e_active)
            cp_async16(stage + e_dst, e_src + (size_t)s0 * 16, true);
    }
};
static_assert(SUB_BYTES % (16 * THREADS) == 0, "every thread copies whole x shares");
static_assert(KS <= 8, "metadata copies: 4 KS lanes of a warp");

extern "C" __global__ void CLUSTER __launch_bounds__(THREADS, 1)
nm24_wgmma_sp(const uint4* __restrict__ vals, const u32* __restrict__ meta, const u16* __restrict__ x,
              const u16* __restrict__ bias, int has_bias, u16* __restrict__ y, int M, int N, int K, int kp,
              int never)
{
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const u32 base = (smem_addr(smem_raw) + 1023) & ~1023u;       // stages start on 1024-byte boundaries
    unsigned char* smem = smem_raw + (base - smem_addr(smem_raw));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;   // warp = 4 warpgroup + warp of the group
    const int g = lane >> 2, t = lane & 3;
    const int x_steps = K / 32, k_tiles = kp / KS;                 // kp: the pack's k-steps, a multiple of KS
    const int tile0 = blockIdx.x * TILES, row0 = blockIdx.y * BN;
    const int rank = blockIdx.z;                                   // the block's rank in its (1, 1, SPLIT) cluster
    const int per = (k_tiles + SPLIT - 1) / SPLIT;
    const int t_begin = min(k_tiles, rank * per), t_end = min(k_tiles, t_begin + per);
    const int tiles = t_end - t_begin;

    float d[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) d[i] = 0.f;

    const Loader loader(vals, meta, x, tile0, row0, M, K, kp);
#pragma unroll
    for (int i = 0; i < STAGES - 2; ++i) {
        if (i < tiles) loader.load(base + i * STAGE_BYTES, t_begin + i, x_steps);
        asm volatile("cp.async.commit_group;" ::: "memory");
    }
    // A wgmma reads its A and metadata registers until it completes (PTX: they must not change before the
    // wait_group that covers it), and round i + 1 runs while round i's wgmma do. So rounds alternate two register
    // sets, and after round i + 1's wait_group 1 (round i done) set i % 2 is folded into `keep`, which is stored
    // only if never != 0: ptxas must keep the two sets apart (an empty asm would not reach it).
    uint4 a_set[2][KS];
    u32 e_set[2][KS];
    u32 keep = 0;
    auto round = [&](int i, uint4 (&a)[KS], u32 (&e)[KS], const uint4 (&a_done)[KS], const u32 (&e_done)[KS]) {
        asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 3) : "memory");
#if FENCE
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
        __syncthreads();                           // tile i landed; every wgmma of tile i - 2 is done
        const int next = i + STAGES - 2;
        if (next < tiles && !NOLOAD)                 // NOLOAD: timing of the compute side alone (wrong results)
            loader.load(base + (next % STAGES) * STAGE_BYTES, t_begin + next, x_steps);
        asm volatile("cp.async.commit_group;" ::: "memory");

        const u32 stage = base + (i % STAGES) * STAGE_BYTES;
        const unsigned char* sp = smem + (i % STAGES) * STAGE_BYTES;
        const uint4* a_frags = (const uint4*)(sp + X_BYTES) + warp * 32 * KS;      // [k-step][lane]
        const u32* e_words = (const u32*)(sp + X_BYTES + A_BYTES) + warp * 16 * KS; // [k-step][16]
#pragma unroll
        for (int u = 0; u < KS; ++u) {
            a[u] = a_frags[32 * u + lane];
            e[u] = e_words[16 * u + 2 * g + (t & 1)];
        }
        wgmma_fence();                             // whole tiles (the pack is padded): no branch between the wgmma,
#pragma unroll                                     // so they form one group
        for (int u = 0; u < KS; ++u)
            wgmma_sp(d, a[u], descriptor(stage + (u >> 1) * SUB_BYTES + 64 * (u & 1)), e[u]);
        wgmma_commit();
        wgmma_wait<1>();
#pragma unroll
        for (int u = 0; u < KS; ++u) keep ^= a_done[u].x ^ a_done[u].y ^ a_done[u].z ^ a_done[u].w ^ e_done[u];
    };
#pragma unroll
    for (int u = 0; u < KS; ++u) {
        a_set[0][u] = a_set[1][u] = make_uint4(0u, 0u, 0u, 0u);
        e_set[0][u] = e_set[1][u] = 0u;
    }
    for (int i = 0; i < tiles; i += 2) {
        round(i, a_set[0], e_set[0], a_set[1], e_set[1]);
        if (i + 1 < tiles) round(i + 1, a_set[1], e_set[1], a_set[0], e_set[0]);
    }
    if (never) y[0] = (u16)keep;
    wgmma_wait<0>();
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();                                               // the stages are free: reuse them

    float* red = (float*)smem;                                     // red[x row][W row], pitch P
    const int r0 = 16 * warp + g;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
        float* at = red + (8 * j + 2 * t) * P + r0;
        at[0] = d[4 * j];
        at[P] = d[4 * j + 1];
        at[8] = d[4 * j + 2];
        at[P + 8] = d[4 * j + 3];
    }
    finish_split<BM, BN, P, THREADS>(red, rank, row0, tile0 * 16, bias, has_bias, y, M, N);
}
"""


def wgmma_function(bn, ptx_type):
    """The device function issuing one wgmma.mma_async.sp m64n{bn}k32 (A from registers, B by descriptor)."""
    acc = bn // 2
    regs = ", ".join(f"%{i}" for i in range(acc))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(acc))
    return (
        "__device__ __forceinline__ void wgmma_sp(float* d, const uint4& a, u64 desc, u32 e) {\n"
        f'    asm volatile("wgmma.mma_async.sp.sync.aligned.m64n{bn}k32.f32.{ptx_type}.{ptx_type} "\n'
        f'                 "{{{regs}}}, {{%{acc}, %{acc + 1}, %{acc + 2}, %{acc + 3}}}, "\n'
        f'                 "%{acc + 4}, %{acc + 5}, 0, 1, 1, 1, 0;"\n'
        f"                 : {outs}\n"
        '                 : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "l"(desc), "r"(e) : "memory");\n'
        "}\n")


def tile_shape(config):
    """(BM, BN): the W rows and x rows of one block."""
    return 64 * config.wg, config.bn


def shared_bytes(config):
    """Dynamic shared memory of one block: the stages (reused for the fp32 partial tile) + 1 KB for alignment."""
    bm, bn = tile_shape(config)
    stage = -(-config.kw * (bn * 128 + config.wg * 4 * 2 * (512 + 64)) // 1024) * 1024
    return max(config.stages * stage, 4 * bn * (bm + 4)) + 1024


@functools.lru_cache(maxsize=None)
def kernel_source(dtype, config):
    """The CUDA source for fp16/bf16 and a WgmmaConfig."""
    defines = "".join(f"#define {name.upper()} {int(value)}\n" for name, value in config._asdict().items())
    ptx_type = sparse_mma.PTX_TYPES[dtype]
    return (f'#define IS_BF16 {int(dtype == "bfloat16")}\n#define PTX_TYPE "{ptx_type}"\n{defines}'
            f"{sparse_mma.DEVICE_COMMON}{SPLIT_K_COMMON}{DESCRIPTOR}" + SOURCE.replace("WGMMA_FUNCTION",
                                                                          wgmma_function(config.bn, ptx_type)))


def cubin_function(source, name, label):
    """Kernel `name` of a CUDA source built by nvcc -arch=sm_90a (cached by the source's hash), loaded by CuPy;
    ptxas's register count and warnings printed under `label`."""
    import cupy
    folder = os.path.join(tempfile.gettempdir(), "nmref_wgmma")
    os.makedirs(folder, exist_ok=True)
    stem = os.path.join(folder, hashlib.sha1(source.encode()).hexdigest()[:16])
    if not os.path.exists(stem + ".cubin"):
        with open(stem + ".cu", "w") as f:
            f.write(source)
        run = subprocess.run(["nvcc", "-arch=sm_90a", "-cubin", "-std=c++17", "-O3", "-Xptxas", "-v",
                              "-o", stem + ".cubin", stem + ".cu"], capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"nvcc failed for {label}:\n{run.stderr[-3000:]}")
        notes = [line.strip() for line in run.stderr.splitlines()
                 if ("arning" in line or "registers" in line) and "C7519" not in line]
        print(f"{label}: " + " | ".join(notes), flush=True)
    return cupy.RawModule(path=stem + ".cubin").get_function(name)


@functools.lru_cache(maxsize=None)
def compiled(dtype, config):
    """The CuPy kernel for fp16/bf16 and a WgmmaConfig."""
    kernel = cubin_function(kernel_source(dtype, config), "nm24_wgmma_sp", f"{dtype} {tuple(config)}")
    kernel.max_dynamic_shared_size_bytes = shared_bytes(config)
    return kernel


class WgmmaPacked:
    """A 2:4 weight (out, in) packed for the wgmma kernel (IDENTITY_ORDER, rows padded to PACK_ROW_TILES tiles)."""

    def __init__(self, weight, bias=None):
        self.dtype = np.dtype(weight.dtype).name
        self.out_features, self.in_features = weight.shape
        pad = -self.in_features % PACK_K
        if pad:                                # zero columns: whole stage tiles, valid metadata (positions 0, 1)
            import cupy
            weight = cupy.concatenate([weight, cupy.zeros((self.out_features, pad), weight.dtype)], axis=1)
        self.vals, self.meta = sparse_mma.pack(weight, PACK_ROW_TILES, IDENTITY_ORDER)
        self.bias = bias

    def launch(self, x, out, config):
        """out (batch, out) = x (batch, in) @ W.T (+ bias) on the current CuPy stream."""
        assert PACK_K % (64 * config.kw) == 0
        bm, bn = tile_shape(config)
        batch = x.shape[0]
        grid = (-(-self.out_features // bm), -(-batch // bn), config.split)
        bias = x if self.bias is None else self.bias
        compiled(self.dtype, config)(grid, (128 * config.wg,), (
            self.vals, self.meta, x, bias, np.int32(self.bias is not None), out, np.int32(batch),
            np.int32(self.out_features), np.int32(self.in_features), np.int32(self.vals.shape[1]), np.int32(0)),
            shared_mem=shared_bytes(config))


def ncu_target(config, batch, size):
    """Three launches of one launch shape at batch x size x size fp16 (for ncu to profile the third)."""
    import cupy as cp

    from nmref.masks import nm_mask
    w = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    packed = WgmmaPacked(cp.asarray(w * nm_mask(w, 2, 4)).astype(cp.float16))
    x = cp.random.default_rng(1).standard_normal((batch, size), dtype=cp.float32).astype(cp.float16)
    out = cp.empty((batch, size), cp.float16)
    for _ in range(3):
        packed.launch(x, out, config)
    cp.cuda.Device().synchronize()


def parse_config(text):
    return WgmmaConfig(*(int(v) for v in text.split(",")))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jsonl")
    p.add_argument("--batches", default="64,256,1024,4096")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--configs", help="launch shapes to time instead of SWEEP, e.g. 2,256,4,4;2,128,6,2")
    p.add_argument("--no-check", action="store_true")
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--source", metavar="CONFIG", help="print the fp16 CUDA source of one launch shape and stop")
    p.add_argument("--ncu-target", metavar="CONFIG:BATCH:SIZE", help="only launch one shape (for ncu)")
    args = p.parse_args(argv)
    if args.source:
        print(kernel_source("float16", parse_config(args.source)))
        return
    if args.ncu_target:
        config, batch, size = args.ncu_target.split(":")
        return ncu_target(parse_config(config), int(batch), int(size))
    if not args.jsonl:
        p.error("--jsonl is required")
    import cupy as cp
    configs = SWEEP if not args.configs else tuple(parse_config(c) for c in args.configs.split(";"))
    emit = jsonl_emitter(args.jsonl)
    t0 = time.time()
    emit({"gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "configs": configs,
          "date": time.strftime("%Y-%m-%d %H:%M")})
    if not args.no_check:
        check(cp, emit, [c for c in configs if not c.noload], CHECK_SHAPES, packer=WgmmaPacked)
        emit({"check_s": time.time() - t0})
    timing(cp, emit, Timer(cp), configs, [int(b) for b in args.batches.split(",")], args.iters,
           dtypes=args.dtypes.split(","), fitting=lambda batch, cs: cs, packer=WgmmaPacked)
    emit({"total_s": time.time() - t0})
    summarize(args.jsonl)


if __name__ == "__main__":
    main()
