# %% [markdown]
# # 06 · From an nmref-trained 2:4 weight to a cuSPARSELt matmul
#
# **Goal.** Take a weight trained with SR-STE 2:4, check it is deployable, compress it the way the
# hardware stores it, and run `y = x @ W~.T` with NVIDIA's cuSPARSELt on a GPU, checking the result and
# timing it against the dense product. On a machine without a GPU the notebook runs every CPU part
# (mask, checks, compression, a reference matmul from the compressed format, fp16 rounding) and explains
# what the GPU part would do.
#
# **The math in a few lines** (docs/algorithms.md, section 6).
# * A Linear layer computes $y = x \tilde W^\top + b$ with $\tilde W$ `(out, in)` 2:4 **along `in`**, the
#   reduction dimension $K$ of the matmul. That is the only direction the Sparse Tensor Cores accept.
# * cuSPARSELt stores $\tilde W$ as its kept values, a dense `(out, in/2)` matrix, plus 2-bit positions:
#   $9/16$ of the fp16 bytes. It then does half the multiply-adds of the dense product.
# * Operand roles: $\tilde W$ row-major is the structured operand A (`opA = N`), $x$ `(batch, in)`
#   row-major is B with `opB = T`, and the output is written column-major `(out, batch)` with
#   `ld = out`, which in memory *is* $y$ `(batch, out)` row-major: no transposes, no copies.
# * Rules for fp16/bf16: both dimensions of $\tilde W$ multiples of 16, the batch a multiple of 8.
#   Compress once per weight; create the plan (and run the algorithm search) once per shape.
#
# > **About the outputs shown here:** they come from a full run on an NVIDIA H200 (2026-11-21), so
# > section 4 shows the cuSPARSELt check and timings. On a machine without a GPU the same notebook runs the
# > CPU parts and says that section 4 was skipped.

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import nmref
from nmref.cusparselt import check_batch, check_weight_shape
from nmref.data import fast_mode
from nmref.masks import check_nm, compress_nm, decompress_nm, is_nm
from nmref.train import TrainConfig, train

FAST = fast_mode()
scratch = tempfile.TemporaryDirectory(prefix="nmref_nb06_")   # removed when the kernel exits
work = Path(scratch.name)
rng = np.random.default_rng(0)
ON_GPU = nmref.gpu_available()
print("GPU visible to CuPy:", ON_GPU)

# %% [markdown]
# ## 1. A weight trained with SR-STE 2:4
# A short run of the MLP on MNIST-1D (40 → 256 → 256 → 10; the hidden Linear layers are 2:4, the last one
# stays dense as in the SR-STE recipe). In fast mode (CI) it trains one epoch on 2000 samples; the full
# run, whose outputs you are reading, trains five epochs on the 40 000 training samples.

# %%
result = train(TrainConfig(dataset="mnist1d", model="mlp", method="srste", pattern="2:4",
                           epochs=1 if FAST else 5, out=str(work / "run"), progress=False))
print(f"test accuracy {result['final']['test_acc']:.3f} after {len(result['history'])} epochs")
print((work / "run" / "model.txt").read_text())

# %% [markdown]
# The checkpoint holds the dense weights $W$ (`param/...`) and the mask of the next forward
# (`mask/...`); the deployable weight is $\tilde W = W \odot E$. Check it is 2:4 along `in`:

# %%
ckpt = np.load(result["checkpoint"])
w_dense = ckpt["param/3.weight"]                         # (256, 256) the hidden Linear
mask = ckpt["mask/3.weight"]
w_tilde = w_dense * mask                                 # (out, in)
check_nm(w_tilde, 2, 4, name="3.weight")                 # raises if any group has more than 2 non-zeros
print("3.weight:", w_tilde.shape, "2:4:", is_nm(w_tilde, 2, 4), "| density", mask.mean())
print("the dense W alone is 2:4:", is_nm(w_dense, 2, 4), "(SR-STE keeps the pruned weights, only the mask zeroes them)")

# %% [markdown]
# ## 2. cuSPARSELt's shape rules, checked on the CPU
# Casting to fp16 keeps every zero, so the 2:4 structure survives. The hidden layer `(256, 256)` meets
# the multiple-of-16 rule; the first layer `(256, 40)` does not, and the fix is to pad `in` with zero
# columns (zeros never break 2:4) and the input with zero features.

# %%
w16 = w_tilde.astype(np.float16)
print("fp16 copy still 2:4:", is_nm(w16, 2, 4))
check_weight_shape(w16.shape, "float16")
print("3.weight (256, 256) fp16: ok for cuSPARSELt")
w_first = ckpt["param/1.weight"] * ckpt["mask/1.weight"]        # (256, 40)
try:
    check_weight_shape(w_first.shape, "float16")
except ValueError as err:
    print("1.weight:", err)
w_first_padded = np.pad(w_first, ((0, 0), (0, 8))).astype(np.float16)   # (256, 48)
check_weight_shape(w_first_padded.shape, "float16")
print("padded to", w_first_padded.shape, "| still 2:4:", is_nm(w_first_padded, 2, 4))
try:
    check_batch(100, "float16")
except ValueError as err:
    print("batch 100:", err)

# %% [markdown]
# ## 3. The compressed format and a reference matmul from it
# `compress_nm` gives the kept values `(out, in/2)` and their positions in each group of 4 (what
# cuSPARSELt packs as 2-bit metadata). A matmul straight from that format must equal the dense product
# with $\tilde W$.

# %%
values, indices = compress_nm(w_tilde, 2, 4, mask=mask)  # (256, 128), (256, 128) uint8 in [0, 4)
assert np.array_equal(decompress_nm(values, indices, 2, 4, w_tilde.shape), w_tilde)
hidden_in = rng.normal(size=(64, 256)).astype(np.float32)         # (batch, in) a stand-in activation
cols = 4 * (np.arange(values.shape[1]) // 2) + indices.astype(np.int64)   # (out, in/2) input index
y_compressed = np.einsum("ok,bok->bo", values, hidden_in[:, cols])        # (batch, out)
y_dense = hidden_in @ w_tilde.T                                            # (batch, out)
rel = np.linalg.norm(y_compressed - y_dense) / np.linalg.norm(y_dense)
print(f"matmul from values + indices vs dense: relative error {rel:.1e}")
bytes_dense = w_tilde.size * 2
bytes_sparse = values.size * 2 + values.size * 2 / 8
print(f"fp16 bytes: dense {bytes_dense}, values + 2-bit indices {bytes_sparse:.0f} ({bytes_sparse / bytes_dense:.4f} of dense)")
assert rel < 1e-6

# %% [markdown]
# What the GPU computes is fp16 inputs with fp32 accumulation and an fp16 output. Emulating that on the
# CPU tells us which error to expect from cuSPARSELt (and from cuBLAS dense fp16): of the order of fp16's
# rounding, $2^{-11} \approx 5 \times 10^{-4}$ relative, whatever the sparse format.

# %%
x16 = hidden_in.astype(np.float16)
y_fp16_emulated = (x16.astype(np.float32) @ w16.astype(np.float32).T).astype(np.float16)   # (batch, out)
rel16 = np.linalg.norm(y_fp16_emulated.astype(np.float64) - y_dense) / np.linalg.norm(y_dense)
print(f"fp16 in / fp32 accumulate / fp16 out vs the fp32 product: relative error {rel16:.1e}")

fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), layout="constrained")
rows = slice(0, 16)
limit = np.abs(w_tilde[rows, :32]).max()
axes[0].imshow(w_tilde[rows, :32], cmap="RdBu_r", vmin=-limit, vmax=limit)
axes[0].set_title("W~ rows 0-15, inputs 0-31 (2:4)")
axes[0].set_xlabel("input feature")
shown = axes[1].imshow(values[rows, :16], cmap="RdBu_r", vmin=-limit, vmax=limit)
axes[1].set_title("kept values (out, in/2)")
axes[1].set_xlabel("compressed column")
fig.colorbar(shown, ax=axes[:2], label="weight value (0 = pruned, white)", shrink=0.9)
im = axes[2].imshow(indices[rows, :16], cmap="viridis", vmin=0, vmax=3)
axes[2].set_title("position in the group (2-bit metadata)")
axes[2].set_xlabel("compressed column")
fig.colorbar(im, ax=axes[2], label="index in group of 4", ticks=range(4))
for ax in axes:
    ax.set_ylabel("output row")
fig.suptitle("A trained 2:4 weight and the two arrays cuSPARSELt stores instead of it")
plt.show()

# %% [markdown]
# ## 4. On the GPU: cuSPARSELt vs dense
# With CuPy, nvmath-python and libcusparseLt installed (`pip install -e '.[gpu]'`) and an Ampere or newer
# GPU, `nmref.cusparselt.SparseMatmul(w)` runs the library's prune check on $\tilde W$, compresses it once,
# and on each call reuses a plan (with its algorithm search) cached for the batch size. For batches up to 64
# it also times nmref's own kernel on the sparse tensor cores (`nmref/kernels/sparse_mma.py`: one `mma.sp`
# instruction per 16x8x32 tile, on a weight packed once in the instruction's fragment order) and keeps
# whichever is faster; `plan_info(batch)["engine"]` says which. The cell below then
# 1. checks the trained layer's output against the fp32 CPU product (expect the fp16 error above),
# 2. times `SparseMatmul` against CuPy's dense fp16 matmul (cuBLAS) with `cupyx.profiler.benchmark` (each
#    call timed alone, its launch included) on the trained `(256, 256)` weight, where both times are mostly
#    the cost of launching a call (the products themselves take 4-6 us), and on a `4096 x 4096` 2:4 weight
#    at several batch sizes, where the sparse tensor cores can approach their 2x.
#
# Without a GPU it only says so.

# %%
timings = []
if ON_GPU:
    try:
        import cupy
        from cupyx.profiler import benchmark

        from nmref.cusparselt import SparseMatmul

        w_gpu = cupy.asarray(w16)
        with SparseMatmul(w_gpu) as sparse_mm:
            y_gpu = sparse_mm(cupy.asarray(x16)).get().astype(np.float64)
        rel_gpu = np.linalg.norm(y_gpu - y_dense) / np.linalg.norm(y_dense)
        print(f"cuSPARSELt fp16 vs fp32 CPU product: relative error {rel_gpu:.1e}")
        assert rel_gpu < 1e-2

        big = rng.normal(size=(4096, 4096)).astype(np.float32)
        big16 = cupy.asarray(big * nmref.nm_mask(big, 2, 4)).astype(cupy.float16)
        for name, weight in [("trained 256x256", w_gpu), ("4096x4096", big16)]:
            with SparseMatmul(weight) as sparse_mm:
                for batch in ([16, 64, 1024] if name.startswith("trained") else [16, 64, 1024, 8192]):
                    xb = cupy.asarray(rng.normal(size=(batch, weight.shape[1])).astype(np.float16))
                    dense_t = benchmark(lambda: xb @ weight.T, n_repeat=50, n_warmup=10).gpu_times.mean()
                    sparse_t = benchmark(lambda: sparse_mm(xb), n_repeat=50, n_warmup=10).gpu_times.mean()
                    engine = sparse_mm.plan_info(batch)["engine"]
                    timings.append((f"{name}, batch {batch}", dense_t * 1e6, sparse_t * 1e6, engine))
        print(f"{'shape':<28}{'dense (us)':>12}{'2:4 (us)':>12}{'speed-up':>10}  engine")
        for label, d, s, engine in timings:
            print(f"{label:<28}{d:>12.1f}{s:>12.1f}{d / s:>10.2f}  {engine}")
    except RuntimeError as err:
        print("GPU found, but the cuSPARSELt path is unavailable:", err)
else:
    print("No GPU here: skipped. On a GPU this cell checks the cuSPARSELt output and prints a timing table.")

# %%
if timings:
    labels = [t[0] for t in timings]
    speedup = [t[1] / t[2] for t in timings]                        # dense time / 2:4 time
    pos = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(9, 3.6), layout="constrained")
    colors = ["tab:green" if s >= 1 else "tab:red" for s in speedup]
    ax.scatter(pos, speedup, c=colors, s=50, zorder=3)
    ax.axhline(1.0, color="black", lw=1, label="no gain (2:4 as fast as dense)")
    ax.axhline(2.0, color="gray", lw=1, ls="--", label="the sparse tensor cores' limit, 2x")
    ax.set_xticks(pos, labels, rotation=20, ha="right")
    ax.set_ylim(0, 2.6)
    ax.set_ylabel("speed-up: dense time / 2:4 time")
    ax.set_title("y = x @ W~.T on the GPU: CuPy dense fp16 (cuBLAS) vs nmref SparseMatmul 2:4\n"
                 "(each call timed alone, launch included; the times are in the table above)")
    ax.legend(loc="upper left", ncols=2)
    plt.show()
else:
    print("no GPU timings to plot (CPU run)")

# %% [markdown]
# ## Summary
# * A weight trained with SR-STE (or STE, or LBC after its last removal) is deployable as $\tilde W = W
#   \odot E$; check it with `check_nm` before anything else, and remember it is 2:4 only along `in`.
# * fp16 keeps the zeros, so the 2:4 structure survives the cast; dimensions must be multiples of 16
#   (pad with zeros otherwise) and the batch a multiple of 8.
# * The compressed format is the kept values as a dense half-width matrix plus 2-bit positions (9/16 of
#   the fp16 bytes); a matmul from it equals the dense product with $\tilde W$.
# * On a GPU, `nmref.cusparselt.SparseMatmul` compresses once and caches a plan per batch size; expect
#   fp16-level agreement (a few 1e-4) with an fp32 product. On tiny layers most of the time is launch cost:
#   on the 256 x 256 layer the kernels alone take 5.2 us dense and 4.4 us 2:4 at batch 16-64 (1.2x, nmref's
#   mma.sp kernel) and are level at batch 1024, where the table's gain is nmref's cheaper launch
#   (H200, benchmarks/results/gpu_notes.md, round 8). Launch-included times move with the host: the same
#   cell on two H200 machines timed the small layer at 17-19 us and at 34 us a call. On the 4096-wide layer,
#   on an H200, this cell's timing gives 1.2-1.4x at batch 16-64 and 1.3x at 1024-8192
#   (`benchmarks/bench_cusparselt.py`, which times the kernels alone, 1.36x at batch 16 in docs/gpu.md's
#   table); 16384^3 and LLaMA-sized products gain 1.54-1.77x there. The sparse tensor
#   cores' 2x is a ceiling no library reached, and some shapes (batch 256 at 4096 x 4096) gain nothing
#   (docs/gpu.md says why, and how much the timing method moves these ratios).
#
# *Which path made the outputs you read: see the "GPU visible" line of the first code cell; on a GPU
# machine section 4 prints and plots the measured timings.*
#
# ## Exercises
# 1. The first layer of the MLP is `(256, 40)`. Pad it for cuSPARSELt, then show that the padded layer
#    applied to inputs padded with zero features gives exactly the unpadded product.
# 2. Why can a conv layer trained with `layout="nchw_flatten"` not be handed to cuSPARSELt as an implicit
#    GEMM over NHWC activations, even when every group keeps 2 of 4? Check it on a random weight with
#    `is_nm(..., layout="conv")`.
# 3. How many bytes does the compressed `(4096, 4096)` fp16 weight take, and what speed-up does that
#    allow for a batch-16 product, which only reads the weight?

# %% [markdown]
# ## Solutions

# %% [markdown]
# **1.** Zero columns in $\tilde W$ meet zero features in $x$: they add nothing, exactly.

# %%
x40 = rng.normal(size=(8, 40)).astype(np.float32)
x48 = np.pad(x40, ((0, 0), (0, 8)))
print("padded == unpadded:", np.array_equal(x48 @ w_first_padded.astype(np.float32).T,
                                             x40 @ w_first.astype(np.float16).astype(np.float32).T))

# %% [markdown]
# **2.** An implicit GEMM over NHWC activations reduces over `(kh, kw, Cin)` with `Cin` fastest, so the
# hardware groups 4 consecutive input channels at one kernel position (`layout="conv"`). The
# `nchw_flatten` groups run along kernel positions instead, so the same weight generally has more than 2
# non-zeros in some NHWC group.

# %%
w_conv = rng.normal(size=(32, 16, 3, 3)).astype(np.float32)
w_flat = w_conv * nmref.nm_mask(w_conv, 2, 4, layout="nchw_flatten")
print("nchw_flatten-trained weight is 2:4 in the conv (NHWC) layout:", is_nm(w_flat, 2, 4, layout="conv"))

# %% [markdown]
# **3.** Values $4096 \cdot 2048 \cdot 2$ bytes plus 2 bits for each of them: 18.9 MB against 33.6 MB
# dense. A batch-16 product is memory-bound (reading the weight dominates), so at best $16/9 \approx 1.8$x.

# %%
n_values = 4096 * 2048
sparse_bytes = n_values * 2 + n_values * 2 / 8
print(f"compressed {sparse_bytes / 1e6:.1f} MB vs dense {4096 * 4096 * 2 / 1e6:.1f} MB: "
      f"at most {4096 * 4096 * 2 / sparse_bytes:.2f}x when reading the weight dominates")
