"""Probe of a tiled 2:4 kernel for batches past sparse_mma's range (an experiment, not part of nmref): the same
mma.sp m16n8k32 as nmref/kernels/sparse_mma.py, with the block's x and W tiles staged in shared memory.
Measured on an H200 (benchmarks/results/gpu_probe_mma_tiled_2026-11-21.md, gpu_notes.md "Round 4"): right on
every check, but 1.7x slower than cuSPARSELt at 256x4096x4096 and 2.2x slower at 4096^3, so nmref does not
ship it; gpu_probe_mma_rate.py measures the instruction's ceiling.

The kernel. sparse_mma's kernel keeps the batch in registers and re-reads x for every row block and W for
every batch block: from batch 32-64 on that traffic sets its time. Here a block of WARPS warps owns
BM = 16 RW WARPS rows of W (RW row tiles per warp) and BN = 8 NT rows of x, and moves k-steps through STAGES
shared-memory buffers of KC k-steps each by cp.async (16 bytes a thread, every address worked out once per
thread). A stage holds, for its KC k-steps, the block's A fragments and metadata words as ``pack`` laid them
out (contiguous per row tile) and the x tile, BN rows of 32 KC values whose 16-byte chunks are swizzled
(chunk q of row n at q ^ (n & 7)) so that each 8x8 matrix of an ldmatrix hits eight different bank groups.
Each warp reads its RW A fragments once per k-step and every B fragment with one ldmatrix.x4 (W's groups are
packed in place, IDENTITY_ORDER, so x needs no lane swap), and issues RW x NT mma.sp into fp32 accumulators.

The k-steps split into SPLIT contiguous ranges, one per block of a thread-block cluster (1, 1, SPLIT) (Hopper's
distributed shared memory): each block leaves its fp32 partial tile in its own shared memory, and block r then
sums x rows [r BN / SPLIT, (r + 1) BN / SPLIT) of the SPLIT partial tiles in rank order, adds the bias, rounds
once to fp16/bf16 and writes y. Deterministic (fixed summation order), no workspace, one launch. SPLIT = 1
needs no cluster (compute capability 8.x); SPLIT > 1 needs 9.0.

    python benchmarks/gpu_probe_mma_tiled.py --jsonl OUT.jsonl [--batches 64,256,4096]
    python benchmarks/gpu_probe_mma_tiled.py --ncu-target 8,2,8,4,3,2     (three launches, for ncu)
    python benchmarks/gpu_probe_mma_sp.py --summary OUT.jsonl
"""
import argparse
import functools
import os
import sys
import time
from collections import namedtuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_cusparselt import Timer  # noqa: E402
from gpu_probe_mma_sp import check, jsonl_emitter, summarize, timing  # noqa: E402

from nmref.kernels import sparse_mma  # noqa: E402

TiledConfig = namedtuple("TiledConfig", "warps rw nt kc stages split")
IDENTITY_ORDER = tuple(range(8))       # W's groups in place: ldmatrix reads x's k in place
PACK_ROW_TILES = 32                    # rows padded to whole blocks of every launch shape
SWEEP = tuple(TiledConfig(*c) for c in
              [(8, 2, 16, 2, 4, s) for s in (1, 2, 4)] + [(8, 2, 16, 4, 3, s) for s in (2, 4)] +
              [(4, 4, 8, 2, 4, s) for s in (1, 2, 4)] + [(4, 4, 8, 4, 3, s) for s in (2, 4)] +
              [(8, 4, 8, 2, 3, s) for s in (1, 2, 4)] + [(8, 2, 8, 2, 4, s) for s in (2, 4)] +
              [(8, 2, 8, 4, 3, s) for s in (2, 4)] + [(4, 2, 16, 2, 4, s) for s in (2, 4)])
CHECK_SHAPES = [(256, 4096, 4096), (3, 32, 16), (13, 96, 80), (130, 64, 48), (200, 512, 1000), (300, 1024, 272),
                (1000, 4096, 1000)]

# Device helpers of the probes' split-K kernels (here and gpu_probe_wgmma_sp.py); SPLIT is the cluster size.
SPLIT_K_COMMON = r"""
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared address dst, or 16 zero bytes if !valid (src-size 0: src is not read)
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}

__device__ __forceinline__ float ld_cluster(u32 addr, int rank) {     // a float of block `rank`'s shared memory
    u32 remote;
    float v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(addr), "r"(rank));
    asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
    return v;
}

__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}

#if SPLIT > 1
#define CLUSTER __cluster_dims__(1, 1, SPLIT)
#else
#define CLUSTER
#endif

// The end of a split-K block, once its fp32 partial tile red[X_ROWS][PITCH] (x row, W row) is in shared
// memory: block `rank` of the (1, 1, SPLIT) cluster sums x rows [rank X_ROWS / SPLIT, (rank + 1) X_ROWS / SPLIT)
// of the SPLIT tiles (W_ROWS W rows each) in rank order (deterministic), adds the bias, rounds once and writes
// y[row0 + b][col0 + n].
template <int W_ROWS, int X_ROWS, int PITCH, int NTHREADS>
__device__ __forceinline__ void finish_split(const float* red, int rank, int row0, int col0,
        const u16* __restrict__ bias, int has_bias, u16* __restrict__ y, int M, int N) {
#if SPLIT > 1
    cluster_sync();                                    // every partial tile of the cluster is written
    const u32 red_addr = smem_addr(red);
#else
    __syncthreads();
#endif
    constexpr int ROWS = X_ROWS / SPLIT;                   // x rows this block finishes
    for (int i = threadIdx.x; i < ROWS * W_ROWS; i += NTHREADS) {
        const int b = rank * ROWS + i / W_ROWS, n = i % W_ROWS;
        const int row = row0 + b, col = col0 + n;
#if SPLIT > 1
        float sum = 0.f;
#pragma unroll
        for (int w = 0; w < SPLIT; ++w) sum += ld_cluster(red_addr + 4 * (b * PITCH + n), w);
#else
        float sum = red[b * PITCH + n];
#endif
        if (row < M && col < N) {
            if (has_bias) sum += to_float(bias[col]);
            y[(size_t)row * N + col] = from_float(sum);
        }
    }
#if SPLIT > 1
    cluster_sync();                                    // keep this block's tile alive until the others read it
#endif
}
"""

SOURCE = r"""
constexpr int THREADS = 32 * WARPS;
constexpr int TILES = WARPS * RW;                      // row tiles (16 W rows each) of the block
constexpr int BM = 16 * TILES;                         // W rows of the block
constexpr int BN = 8 * NT;                             // x rows of the block
constexpr int A_CHUNKS = TILES * KC * 32;              // 16-byte chunks of a stage: A fragments,
constexpr int E_CHUNKS = TILES * KC * 4;               //   metadata words,
constexpr int X_CHUNKS = BN * KC * 4;                  //   x tile
constexpr int STAGE_CHUNKS = A_CHUNKS + E_CHUNKS + X_CHUNKS;
constexpr int P = BM + 4;                              // row pitch (floats) of the partial tile red[BN][P]
static_assert(KC % 2 == 0, "the x swizzle needs rows of at least 128 bytes (KC even)");
static_assert(BN % SPLIT == 0, "each block of the cluster finishes BN / SPLIT x rows");

__device__ __forceinline__ int x_chunk(int n, int q) { return n * (KC * 4) + (q ^ (n & 7)); }

// B fragment (32 x 8, k x batch) of batch tile b, k-step u of the stage: lane l gives the address of row
// 8b + (l & 7), chunk 4u + (l >> 3); lane (g, t) gets x[8b + g][8i + 2t, + 2) in b[i], which is the fragment's
// k = 2t + 8i + {0, 1} because the tiled pack keeps W's groups in place (IDENTITY_ORDER).
__device__ __forceinline__ void ldmatrix_x4(u32* b, const uint4* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(b[0]), "=r"(b[1]), "=r"(b[2]), "=r"(b[3]) : "r"(smem_addr(p)));
}

// A thread's share of every stage, its addresses worked out once: A_CHUNKS / THREADS chunks of A fragments
// (row tiles i0 + j THREADS / (32 KC)), the same number of x chunks (rows n0 + j THREADS / (4 KC)), and the
// metadata chunks c = tid + j THREADS < E_CHUNKS. Chunks of k-steps >= s_end and x rows >= M are zero-filled;
// the pack's rows are padded to whole blocks (PACK_ROW_TILES).
struct StageLoader {
    const uint4* a_src;                                // chunk j of k-step s: a_src + j A_JUMP k_steps 32 + 32 s
    const uint4* e_src;                                // meta as uint4, chunk of c = tid: e_src + 4 s
    const u16* x_src;                                  // x_src + j X_JUMP K + 32 s
    int a_step, e_step, x_step;                        // k-step of the thread's chunk within a stage
    int x_dst, x_rows_left;                            // swizzled chunk of j = 0; x rows from n0 to M
    int k_steps, K;

    static constexpr int A_JUMP = THREADS / (KC * 32), X_JUMP = THREADS / (KC * 4);

    __device__ StageLoader(const uint4* vals, const u32* meta, const u16* x, int tile0, int row0, int M, int K_,
                           int k_steps_) : k_steps(k_steps_), K(K_) {
        const int tid = threadIdx.x;
        a_src = vals + (size_t)(tile0 + tid / (KC * 32)) * k_steps * 32 + tid % (KC * 32);
        a_step = tid % (KC * 32) / 32;
        e_src = (const uint4*)(meta + (size_t)(tile0 + tid / (KC * 4)) * k_steps * 16) + tid % (KC * 4);
        e_step = tid % (KC * 4) / 4;
        const int n0 = tid / (KC * 4), q0 = tid % (KC * 4);
        x_src = x + (size_t)(row0 + n0) * K + 8 * q0;
        x_step = q0 / 4;
        x_dst = x_chunk(n0, q0);
        x_rows_left = M - row0 - n0;
    }

    __device__ __forceinline__ void load(uint4* stage, int s0, int s_end) const {
        const int tid = threadIdx.x;
#pragma unroll
        for (int j = 0; j < A_CHUNKS / THREADS; ++j) {
            const bool valid = s0 + a_step < s_end;
            cp_async16(smem_addr(stage + tid + j * THREADS), a_src + ((size_t)j * A_JUMP * k_steps + s0) * 32, valid);
        }
#pragma unroll
        for (int j = 0; j < (E_CHUNKS + THREADS - 1) / THREADS; ++j) {
            if (E_CHUNKS % THREADS && tid + j * THREADS >= E_CHUNKS) break;
            const bool valid = s0 + e_step < s_end;
            cp_async16(smem_addr(stage + A_CHUNKS + tid + j * THREADS),
                       e_src + ((size_t)j * (THREADS / (KC * 4)) * k_steps * 16 + 16 * s0) / 4, valid);
        }
#pragma unroll
        for (int j = 0; j < X_CHUNKS / THREADS; ++j) {
            const bool valid = j * X_JUMP < x_rows_left && s0 + x_step < s_end;
            cp_async16(smem_addr(stage + A_CHUNKS + E_CHUNKS + x_dst + j * THREADS), x_src + (size_t)j * X_JUMP * K + 32 * s0,
                       valid);
        }
    }
};
static_assert(A_CHUNKS % THREADS == 0 && X_CHUNKS % THREADS == 0, "every thread copies whole A and x shares");
static_assert(THREADS % (KC * 32) == 0 && (THREADS / (KC * 4)) % 8 == 0,
              "a thread's chunks keep their k-step and swizzle from one j to the next");

extern "C" __global__ void CLUSTER __launch_bounds__(THREADS, 1)
nm24_mma_sp_tiled(const uint4* __restrict__ vals, const u32* __restrict__ meta, const u16* __restrict__ x,
                  const u16* __restrict__ bias, int has_bias, u16* __restrict__ y, int M, int N, int K)
{
    extern __shared__ uint4 smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int k_steps = K / 32;
    const int tile0 = blockIdx.x * TILES, row0 = blockIdx.y * BN;
    const int rank = blockIdx.z;                       // = the block's rank in its (1, 1, SPLIT) cluster
    const int per = (k_steps + SPLIT - 1) / SPLIT;
    const int s_begin = min(k_steps, rank * per), s_end = min(k_steps, s_begin + per);
    const int chunks = (s_end - s_begin + KC - 1) / KC;

    const StageLoader loader(vals, meta, x, tile0, row0, M, K, k_steps);
    float acc[RW][NT][4];
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int b = 0; b < NT; ++b)
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[r][b][i] = 0.f;
#pragma unroll
    for (int i = 0; i < STAGES - 1; ++i) {
        if (i < chunks)
            loader.load(smem + i * STAGE_CHUNKS, s_begin + i * KC, s_end);
        asm volatile("cp.async.commit_group;" ::: "memory");
    }
    for (int c = 0; c < chunks; ++c) {
        asm volatile("cp.async.wait_group %0;" :: "n"(STAGES - 2) : "memory");
        __syncthreads();                               // stage c landed; every warp is done with stage c - 1
        const int next = c + STAGES - 1;
        if (next < chunks)
            loader.load(smem + (next % STAGES) * STAGE_CHUNKS, s_begin + next * KC, s_end);
        asm volatile("cp.async.commit_group;" ::: "memory");

        const uint4* stage = smem + (c % STAGES) * STAGE_CHUNKS;
        const uint4* a_frags = stage + warp * RW * KC * 32;                  // [RW][KC][32 lanes]
        const u32* e_words = (const u32*)(stage + A_CHUNKS) + warp * RW * KC * 16;   // [RW][KC][16]
        const uint4* xs = stage + A_CHUNKS + E_CHUNKS;                       // [BN][4 KC] swizzled
        const int steps = min(KC, s_end - (s_begin + c * KC));
#pragma unroll
        for (int u = 0; u < KC; ++u) {
            if (u >= steps) break;
            uint4 a[RW];
            u32 e[RW];
#pragma unroll
            for (int r = 0; r < RW; ++r) {
                a[r] = a_frags[(r * KC + u) * 32 + lane];
                e[r] = e_words[(r * KC + u) * 16 + 2 * g + (t & 1)];
            }
#pragma unroll
            for (int b = 0; b < NT; ++b) {
                u32 bf[4];
                ldmatrix_x4(bf, xs + x_chunk(8 * b + (lane & 7), 4 * u + (lane >> 3)));
#pragma unroll
                for (int r = 0; r < RW; ++r) mma_sp(acc[r][b], a[r], bf, e[r]);
            }
        }
    }
    asm volatile("cp.async.wait_group 0;" ::: "memory");
    __syncthreads();                                   // the stages are free: reuse them for the partial tile

    float* red = (float*)smem;                         // red[x row][W row], pitch P (no bank conflicts)
#pragma unroll
    for (int r = 0; r < RW; ++r)
#pragma unroll
        for (int b = 0; b < NT; ++b) {
            float* base = red + (8 * b + 2 * t) * P + 16 * (warp * RW + r) + g;
            base[0] = acc[r][b][0];
            base[P] = acc[r][b][1];
            base[8] = acc[r][b][2];
            base[P + 8] = acc[r][b][3];
        }
    finish_split<BM, BN, P, THREADS>(red, rank, row0, tile0 * 16, bias, has_bias, y, M, N);
}
"""



def tile_shape(config):
    """(BM, BN): the W rows and x rows of one block."""
    return 16 * config.warps * config.rw, 8 * config.nt


def shared_bytes(config):
    """Dynamic shared memory of one block: the stages, reused for the fp32 partial tile."""
    bm, bn = tile_shape(config)
    tiles = config.warps * config.rw
    stage = 16 * config.kc * (tiles * 32 + tiles * 4 + bn * 4)
    return max(config.stages * stage, 4 * bn * (bm + 4))


@functools.lru_cache(maxsize=None)
def kernel_source(dtype, config):
    """The CUDA source for fp16/bf16 and a TiledConfig."""
    defines = "".join(f"#define {name.upper()} {int(value)}\n" for name, value in config._asdict().items())
    return (f'#define IS_BF16 {int(dtype == "bfloat16")}\n#define PTX_TYPE "{sparse_mma.PTX_TYPES[dtype]}"\n'
            f"{defines}{sparse_mma.DEVICE_COMMON}{SPLIT_K_COMMON}{SOURCE}")


@functools.lru_cache(maxsize=None)
def compiled(dtype, config):
    """The CuPy RawKernel for fp16/bf16 and a TiledConfig, its dynamic shared-memory limit raised."""
    import cupy
    kernel = cupy.RawKernel(kernel_source(dtype, config), "nm24_mma_sp_tiled", options=("--std=c++17",))
    kernel.max_dynamic_shared_size_bytes = shared_bytes(config)
    return kernel



class TiledPacked:
    """A 2:4 weight (out, in) packed for the tiled kernel (IDENTITY_ORDER, rows padded to PACK_ROW_TILES tiles)."""

    def __init__(self, weight, bias=None):
        self.dtype = np.dtype(weight.dtype).name
        self.out_features, self.in_features = weight.shape
        self.vals, self.meta = sparse_mma.pack(weight, PACK_ROW_TILES, IDENTITY_ORDER)
        self.bias = bias

    def launch(self, x, out, config):
        """out (batch, out) = x (batch, in) @ W.T (+ bias) on the current CuPy stream."""
        bm, bn = tile_shape(config)
        batch = x.shape[0]
        grid = (-(-self.out_features // bm), -(-batch // bn), config.split)
        bias = x if self.bias is None else self.bias
        compiled(self.dtype, config)(grid, (32 * config.warps,), (
            self.vals, self.meta, x, bias, np.int32(self.bias is not None), out, np.int32(batch),
            np.int32(self.out_features), np.int32(self.in_features)), shared_mem=shared_bytes(config))


def ncu_target(config, batch=256, size=4096):
    """Three launches at batch x size x size fp16 (for ncu to profile the third)."""
    import cupy as cp

    from nmref.masks import nm_mask
    w = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    packed = TiledPacked(cp.asarray(w * nm_mask(w, 2, 4)).astype(cp.float16))
    x = cp.random.default_rng(1).standard_normal((batch, size), dtype=cp.float32).astype(cp.float16)
    out = cp.empty((batch, size), cp.float16)
    for _ in range(3):
        packed.launch(x, out, TiledConfig(*config))
    cp.cuda.Device().synchronize()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jsonl")
    p.add_argument("--batches", default="64,128,256,512,1024,4096")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--ncu-target", metavar="CONFIG", help="only launch one launch shape, e.g. 8,2,8,4,3,2")
    args = p.parse_args(argv)
    if args.ncu_target:
        return ncu_target(tuple(int(v) for v in args.ncu_target.split(",")))
    if not args.jsonl:
        p.error("--jsonl is required")
    import cupy as cp
    emit = jsonl_emitter(args.jsonl)
    t0 = time.time()
    emit({"gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "configs": SWEEP,
          "date": time.strftime("%Y-%m-%d %H:%M")})
    check(cp, emit, SWEEP, CHECK_SHAPES, packer=TiledPacked)
    emit({"check_s": time.time() - t0})
    timing(cp, emit, Timer(cp), SWEEP, [int(b) for b in args.batches.split(",")], args.iters,
           fitting=lambda batch, configs: configs, packer=TiledPacked)
    emit({"total_s": time.time() - t0})
    summarize(args.jsonl)


if __name__ == "__main__":
    main()
