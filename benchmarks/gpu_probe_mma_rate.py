"""How fast can one H200 issue mma.sp (sparse, m16n8k32) and mma (dense, m16n8k16) from registers alone?
The ceiling for nmref's own kernels (nmref/kernels/sparse_mma*.py), measured with no memory traffic: every
warp runs CHAINS independent accumulator chains for ITERS rounds. Prints TFLOP/s (dense-equivalent: a 2:4
m16n8k32 counts 2 x 16 x 8 x 32) per (kind, warps per block, chains).

    python benchmarks/gpu_probe_mma_rate.py [--json OUT.json]
"""
import argparse
import json

from nmref.kernels import sparse_mma

SOURCE = r"""
extern "C" __global__ void rate(float* out, int iters) {
    const u32 lane = threadIdx.x & 31;
    uint4 a = make_uint4(0x3c003c00u ^ lane, 0x3c003c00u, 0x38003800u, 0x3c00bc00u);   // fp16 / bf16 bit noise
    u32 b[4] = {0x3c003c00u, 0x3800b800u ^ lane, 0x3c003c00u, 0x34003400u};
    const u32 e = 0x44444444u;                                                         // positions 0, 1
    float acc[CHAINS][4];
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int c = 0; c < CHAINS; ++c) {
#if SPARSE
            mma_sp(acc[c], a, b, e);
#else
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE ".f32 "
                         "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                         : "+f"(acc[c][0]), "+f"(acc[c][1]), "+f"(acc[c][2]), "+f"(acc[c][3])
                         : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b[0]), "r"(b[1]));
#endif
        }
    }
    float s = 0.f;
#pragma unroll
    for (int c = 0; c < CHAINS; ++c) s += acc[c][0] + acc[c][1] + acc[c][2] + acc[c][3];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"""


def median_seconds(cp, launch, repeats=5):
    """Median GPU time (CUDA events) of `launch()` over `repeats` runs, after one warm-up run."""
    launch()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3)
    return sorted(times)[repeats // 2]


def measure(cp, sparse, warps, chains, dtype="float16", iters=4096, blocks_per_sm=1):
    src = (f'#define IS_BF16 {int(dtype == "bfloat16")}\n#define PTX_TYPE "{sparse_mma.PTX_TYPES[dtype]}"\n'
           f"#define SPARSE {int(sparse)}\n#define CHAINS {chains}\n{sparse_mma.DEVICE_COMMON}{SOURCE}")
    kernel = cp.RawKernel(src, "rate")
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    blocks = sms * blocks_per_sm
    out = cp.empty(blocks * 32 * warps, dtype=cp.float32)
    args = (out, cp.int32(iters))
    seconds = median_seconds(cp, lambda: kernel((blocks,), (32 * warps,), args))
    mmas = blocks * warps * chains * iters
    flop = 2 * 16 * 8 * (32 if sparse else 16) * mmas
    clocks_per_mma_per_sm = seconds * 1.98e9 / (mmas / sms)
    return {"kind": "mma.sp m16n8k32" if sparse else "mma m16n8k16", "dtype": dtype, "warps": warps,
            "blocks_per_sm": blocks_per_sm, "chains": chains, "us": seconds * 1e6, "tflops": flop / seconds / 1e12,
            "clk_per_mma_per_sm_at_1.98GHz": clocks_per_mma_per_sm}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json")
    args = p.parse_args(argv)
    import cupy as cp
    rows = []
    for sparse in (1, 0):
        for warps, chains, per_sm in ((4, 8, 1), (4, 16, 1), (8, 8, 1), (8, 16, 1), (16, 8, 1), (8, 8, 2)):
            rows.append(measure(cp, sparse, warps, chains, blocks_per_sm=per_sm))
            print(json.dumps(rows[-1]), flush=True)
    print("| kind | warps x blocks/SM | chains | TFLOP/s (dense-equivalent) | clk per mma per SM |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['kind']} | {r['warps']} x {r['blocks_per_sm']} | {r['chains']} | {r['tflops']:.0f} | "
              f"{r['clk_per_mma_per_sm_at_1.98GHz']:.2f} |")
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
