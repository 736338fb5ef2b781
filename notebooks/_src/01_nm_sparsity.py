# %% [markdown]
# # 01 · N:M sparsity: what it means, how weights are grouped, and why hardware likes it
#
# **Goal.** Understand exactly which weights an N:M mask keeps: how a weight tensor is cut into groups
# (linear vs conv vs the paper-era flatten), the magnitude rule and its tie rule, what the mask looks
# like, how an N:M weight is stored (values + indices), and one naming pitfall that silently changes
# the density.
#
# **The math in a few lines.**
# * Cut the weight into groups of $M$ consecutive weights along the **input** (reduction) axis.
# * In every group keep the $N$ weights of largest $|w|$ and set the other $M-N$ to zero:
#   $E_{g,j} = 1$ iff $w_{g,j}$ is among the $N$ largest $|w_{g,\cdot}|$, and $\tilde W = E \odot W$.
# * Ties: sort $|w|$ ascending with a *stable* sort and prune the first $M-N$, so among equal $|w|$ the
#   **lower index is pruned first**.
# * Every group keeps exactly $N$: the density is $N/M$ in every row, which is what makes the format
#   regular enough for hardware.
#
# N always counts **kept** weights in nmref (as in SR-STE, LBC and NVIDIA's "2:4"). Masks are boolean,
# `True` = kept.

# %%
import math

import matplotlib.pyplot as plt
import numpy as np

import nmref
from nmref import from_groups, nm_mask, to_groups
from nmref.masks import check_nm, compress_nm, decompress_nm, is_nm, parse_pattern

np.set_printoptions(precision=2, suppress=True, linewidth=110)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Groups along the input axis of a Linear weight
#
# A Linear weight is `(out, in)` and computes `y = x @ W.T`: each output row is a dot product over the
# input features, so groups are $M$ consecutive input features of one output row. `to_groups` shows the
# `(G, M)` view every method works on.

# %%
w = rng.normal(size=(3, 8)).astype(np.float32)          # (out, in)
groups = to_groups(w, 4, layout="linear")               # (G, M) = (3 * 8 / 4, 4)
mask = nm_mask(w, 2, 4)                                 # (out, in) bool, True = kept
print("W (3, 8):\n", w)
print("\nthe same weights as (G, M) groups:\n", groups)
print("\n2:4 mask (1 = kept):\n", mask.astype(int))
print("\nW~ = E * W:\n", w * mask + 0.0)                  # + 0.0 prints -0.0 as 0.0

# %% [markdown]
# ### Check it by hand
# Group 0 is `W[0, 0:4]`. Sorting its magnitudes and keeping the two largest must give the mask's first
# four entries, and every group must keep exactly two.

# %%
g0 = w[0, :4]
order = np.argsort(np.abs(g0), kind="stable")          # ascending |w|
hand = np.ones(4, dtype=bool)
hand[order[:2]] = False                                 # prune the M - N = 2 smallest
print("group 0:", g0, "-> |w| ascending order", order, "-> keep", hand.astype(int))
assert np.array_equal(hand, mask[0, :4])
assert (to_groups(mask, 4).sum(axis=1) == 2).all()
print("hand calculation matches nm_mask; every group keeps exactly 2")

# %% [markdown]
# ### Ties: the lower index is pruned first
# With $|w| = (3, 3, 1, 3)$ the smallest is position 2; then three positions tie at 3. The stable
# ascending sort lists them as 0, 1, 3, so position 0 is pruned next: the mask keeps positions 1 and 3.
# A different tie rule keeps a different set, and a bit-exact comparison between two implementations
# fails only on tied groups; that is why nmref fixes the rule and tests it.

# %%
tied = np.array([[3.0, -3.0, 1.0, 3.0]])
print("w =", tied[0], "-> 2:4 mask", nm_mask(tied, 2, 4)[0].astype(int))
assert nm_mask(tied, 2, 4)[0].tolist() == [False, True, False, True]

# %% [markdown]
# ### Check against PyTorch
# The same rule written with PyTorch's stable sort must give the identical mask, here on random
# weights with some ties added on purpose. (`torch.topk` picks the same *set* when there are no ties,
# but its choice among equal values is unspecified.)

# %%
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed: skipping the PyTorch check (pip install torch to run it)")

if torch is not None:
    def nm_mask_torch(w, n, m):
        """Keep the n largest |w| of every m consecutive inputs; ties: lower index pruned first."""
        groups = w.reshape(-1, m)
        pruned = torch.sort(groups.abs(), dim=1, stable=True).indices[:, : m - n]
        return torch.ones_like(groups, dtype=torch.bool).scatter(1, pruned, False).reshape(w.shape)

    w_check = np.round(rng.normal(size=(64, 32)), 1).astype(np.float32)     # rounding makes ties
    for n, m in [(1, 4), (2, 4), (2, 8), (4, 8)]:
        same = np.array_equal(nm_mask(w_check, n, m), nm_mask_torch(torch.from_numpy(w_check), n, m).numpy())
        print(f"{n}:{m}  nmref == PyTorch stable sort: {same}")
        assert same

# %% [markdown]
# ## 2. A picture: a weight matrix before and after 2:4
# Each row keeps exactly half of its weights, and within every block of 4 columns exactly two.

# %%
w_big = rng.normal(size=(16, 32)).astype(np.float32)    # (out, in)
mask_big = nm_mask(w_big, 2, 4)
limit = np.abs(w_big).max()
fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), layout="constrained")
for ax, (title, img, cmap) in zip(axes, [("dense W", w_big, "RdBu_r"), ("2:4 mask E (white = kept)", mask_big, "gray"),
                                          ("W~ = E * W", w_big * mask_big, "RdBu_r")]):
    im = ax.imshow(img, cmap=cmap, vmin=-limit if cmap != "gray" else 0, vmax=limit if cmap != "gray" else 1)
    ax.set_title(title)
    ax.set_xlabel("input feature")
    ax.set_ylabel("output row")
    for x in range(4, 32, 4):
        ax.axvline(x - 0.5, color="0.6", lw=0.6)
fig.colorbar(im, ax=axes[2], label="weight value (W, W~)", shrink=0.8)
fig.suptitle("A (16, 32) Linear weight before and after its 2:4 magnitude mask (grey lines: groups of 4)")
plt.show()
print("density of every row:", mask_big.mean(axis=1))

# %% [markdown]
# ## 3. Conv weights: which M weights form a group?
# A conv weight is `(Cout, Cin, kh, kw)`. As a matmul (im2col), each output channel reduces over
# `Cin * kh * kw` inputs, so there are two natural orders of that reduction axis:
#
# * **`layout="conv"`** (nmref's default for conv layers; NVIDIA ASP and cuSPARSELt): M consecutive
#   **input channels** at a fixed `(cout, kh, kw)`, i.e. the weight viewed as NHWC `(Cout, kh, kw, Cin)`.
# * **`layout="nchw_flatten"`** (the SR-STE paper-era runs): M consecutive entries of the plain C-order
#   flatten of `w[cout]`, which mostly runs along the kernel positions of one channel and crosses from one
#   channel to the next.
#
# Colouring every position of one output channel by its group number shows the difference.

# %%
shape = (1, 8, 3, 3)                                    # (Cout, Cin, kh, kw)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for ax, layout in zip(axes, ["conv", "nchw_flatten"]):
    n_groups = math.prod(shape) // 4
    ids = np.repeat(np.arange(n_groups, dtype=np.float64)[:, None], 4, axis=1)   # (G, M) group numbers
    id_map = from_groups(ids, shape, layout)[0].reshape(8, 9)                    # (Cin, kh*kw)
    ax.imshow(id_map, cmap="tab20", aspect="auto")
    for (c, k), gid in np.ndenumerate(id_map):
        ax.text(k, c, int(gid), ha="center", va="center", fontsize=7)
    ax.set_xlabel("kernel position kh*3 + kw")
    ax.set_ylabel("input channel Cin")
    ax.set_title(f'layout="{layout}": group number of each weight')
fig.suptitle("Groups of 4 in a (1, 8, 3, 3) conv weight: along Cin (left) vs along the flatten (right)")
plt.show()

# %% [markdown]
# On the left each group is a vertical run of 4 channels at one kernel position; on the right a group
# is 4 consecutive kernel positions and some groups straddle two channels (e.g. positions 8 of channel 0
# and 0..2 of channel 1). The two layouts give different masks for the same weight, so a checkpoint is
# only N:M *in a given layout*:

# %%
w_conv = rng.normal(size=(4, 8, 3, 3)).astype(np.float32)
m_conv = nm_mask(w_conv, 2, 4, layout="conv")
m_flat = nm_mask(w_conv, 2, 4, layout="nchw_flatten")
print("masks equal:", np.array_equal(m_conv, m_flat), "| positions that differ:", int((m_conv != m_flat).sum()),
      "of", m_conv.size)
print("conv mask is 2:4 in layout conv:", is_nm(w_conv * m_conv, 2, 4, layout="conv"),
      "| in layout nchw_flatten:", is_nm(w_conv * m_conv, 2, 4, layout="nchw_flatten"))

# %% [markdown]
# When the grouped axis is not divisible by M (a first conv with `Cin = 3`), nmref raises and says what
# to do, instead of silently letting groups cross kernel positions (the public SR-STE code does that;
# nmref offers it only as `straddle=True`):

# %%
try:
    nm_mask(rng.normal(size=(16, 3, 3, 3)).astype(np.float32), 2, 4, layout="conv")
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## 4. Storage: values + indices, and why hardware likes it
# Because every group keeps exactly N, the kept values of an `(out, in)` weight form a **dense**
# `(out, in * N / M)` matrix, and each value needs only its position inside its group:
# $\lceil \log_2 M \rceil$ bits (2 bits for 2:4). That is SR-STE's Fig. 1 and the format NVIDIA's Sparse
# Tensor Cores read. `compress_nm` / `decompress_nm` convert exactly.

# %%
small = w[:2]                                            # (2, 8)
values, indices = compress_nm(small, 2, 4)
print("W~:\n", small * nm_mask(small, 2, 4) + 0.0)
print("values (2, 4):\n", values)
print("indices in the group (2, 4):\n", indices)
back = decompress_nm(values, indices, 2, 4, small.shape)
assert np.array_equal(back, small * nm_mask(small, 2, 4))
print("decompress(compress(W)) == W~ exactly")

# %% [markdown]
# A matmul straight from the compressed format: output `o` multiplies its kept values with the inputs
# their indices select, $y_{b,o} = \sum_k \mathrm{values}_{o,k}\, x_{b,\,\mathrm{col}_{o,k}}$ with
# $\mathrm{col} = M \lfloor k/N \rfloor + \mathrm{index}$. Half the multiply-adds of the dense product,
# and the hardware does the selection with a small multiplexer, because it knows there are exactly N
# values per group. Check it against the dense product with the masked weight:

# %%
x = rng.normal(size=(5, 32)).astype(np.float32)          # (B, in)
values, indices = compress_nm(w_big, 2, 4)               # (16, 16), (16, 16)
k = np.arange(values.shape[1])
cols = 4 * (k // 2) + indices.astype(np.int64)           # (out, in/2) absolute input index
y_sparse = np.einsum("ok,bok->bo", values, x[:, cols])   # (B, out)
y_dense = x @ (w_big * mask_big).T                       # (B, out)
rel = np.linalg.norm(y_sparse - y_dense) / np.linalg.norm(y_dense)
print(f"compressed-format matmul vs dense masked matmul: relative error {rel:.1e}")
assert rel < 1e-6

# %% [markdown]
# What the format costs in memory, per weight of the dense matrix, for fp16 values. Unstructured 50%
# sparsity in CSR needs a 32-bit column index per kept value and has a different number of values per
# row, which is why it rarely runs faster than dense on matrix hardware.

# %%
def bits_per_weight(n, m, value_bits=16):
    return n / m * (value_bits + math.ceil(math.log2(m)))

print(f"{'format':<28}{'bits / weight':>14}{'vs dense fp16':>15}")
for name, bits in [("dense fp16", 16.0), ("2:4 values + 2-bit index", bits_per_weight(2, 4)),
                   ("4:8 values + 3-bit index", bits_per_weight(4, 8)), ("1:4 values + 2-bit index", bits_per_weight(1, 4)),
                   ("50% CSR (int32 columns)", 0.5 * (16 + 32))]:
    print(f"{name:<28}{bits:>14.2f}{bits / 16:>15.2f}")

# %% [markdown]
# ## 5. The keep-vs-prune naming pitfall
# Some libraries (SparseGPT, Wanda, llm-compressor, Paddle) write N:M with N the number of weights
# **zeroed**. 2:4 reads the same both ways, so the difference goes unnoticed, until someone asks for
# "1:4": in nmref that keeps 1 of 4 (density 0.25), in those libraries it keeps 3 of 4 (density 0.75).
# nmref takes `n` = kept everywhere and converts explicitly with `parse_pattern(..., semantics="prune")`.

# %%
for spec in ["2:4", "1:4", "2:8"]:
    keep = parse_pattern(spec)
    prune = parse_pattern(spec, semantics="prune")
    d_keep = nm_mask(w_big, keep.n_keep, keep.m).mean()
    d_prune = nm_mask(w_big, prune.n_keep, prune.m).mean()
    print(f'"{spec}": read as keep -> {keep}, density {d_keep:.2f} | read as prune -> {prune}, density {d_prune:.2f}')

# %% [markdown]
# The validators answer "is this tensor N:M?" (at most N non-zeros per group) and, when not, say where:

# %%
broken = (w_big * mask_big).copy()
broken[3, 8:12] = 1.0                                    # four non-zeros in one group
print("is_nm(W~):", is_nm(w_big * mask_big, 2, 4), "| is_nm(broken):", is_nm(broken, 2, 4))
try:
    check_nm(broken, 2, 4, name="layer1.weight")
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## Summary
# * N:M keeps the N largest-magnitude weights of every M consecutive weights **along the input axis**;
#   nmref's `n` counts kept weights, and masks are `True` = kept.
# * Linear weights group along `in`; conv weights along `Cin` at each kernel position (`layout="conv"`,
#   NHWC, what cuSPARSELt needs) or, for reproducing the SR-STE paper, along the flatten
#   (`"nchw_flatten"`). Same weight, different masks: a checkpoint is N:M only in a stated layout.
# * Ties go to the higher index (lower index pruned first); a bit-exact cross-check needs the same rule.
# * Exactly N per group makes the kept values a dense matrix of half width plus 2-bit indices: regular
#   memory, half the math, the format of Sparse Tensor Cores.
# * "1:4" means density 0.25 here and 0.75 in libraries that count zeros: check the convention.
#
# ## Exercises
# 1. Work out the 1:4 and the 3:4 masks of the group $w = (0.2, -0.7, 0.7, 0.1)$ by hand, then check
#    them with `nm_mask`.
# 2. A conv layer has weight shape `(64, 6, 3, 3)`. Which of 2:4, 2:8 and 1:2 can nmref apply with
#    `layout="conv"`, and what does `nm_mask` say for the others?
# 3. Is a 2:4 weight also 4:8? Is a 4:8 weight also 2:4? Answer, then test both with `is_nm` on random
#    weights.

# %% [markdown]
# ## Solutions

# %% [markdown]
# **1.** Ascending $|w|$: 0.1 (pos 3), 0.2 (pos 0), 0.7 (pos 1), 0.7 (pos 2); the two 0.7 tie and the
# stable sort lists position 1 first. 1:4 prunes the first three: keeps position 2 only. 3:4 prunes only
# position 3.

# %%
ex = np.array([[0.2, -0.7, 0.7, 0.1]])
print("1:4:", nm_mask(ex, 1, 4)[0].astype(int), " 3:4:", nm_mask(ex, 3, 4)[0].astype(int))
assert nm_mask(ex, 1, 4)[0].tolist() == [False, False, True, False]
assert nm_mask(ex, 3, 4)[0].tolist() == [True, True, True, False]

# %% [markdown]
# **2.** Groups run along `Cin = 6`: m must divide 6. 1:2 works (3 groups per kernel position); 2:4 and
# 2:8 raise, and the message lists the m that would work.

# %%
w_ex = rng.normal(size=(64, 6, 3, 3)).astype(np.float32)
for n, m in [(2, 4), (2, 8), (1, 2)]:
    try:
        print(f"{n}:{m} ok, density {nm_mask(w_ex, n, m, layout='conv').mean():.2f}")
    except ValueError as err:
        print(f"{n}:{m} ValueError: {err}")

# %% [markdown]
# **3.** A 2:4 weight has at most 2 non-zeros in each half of every 8, so at most 4 in the 8: it is
# always 4:8. The converse fails: 4:8 allows all 4 kept weights in one half.

# %%
w_ex = rng.normal(size=(32, 64)).astype(np.float32)
print("2:4 weight is 4:8:", is_nm(w_ex * nm_mask(w_ex, 2, 4), 4, 8))
print("4:8 weight is 2:4:", is_nm(w_ex * nm_mask(w_ex, 4, 8), 2, 4))
