# %% [markdown]
# # 04 · LBC: learning the best combination of kept weights
#
# **Goal.** Understand LBC (Zhang et al. 2022): instead of choosing the N kept weights of a group by
# magnitude at every step, give every possible choice (a *combination*) a learned score, train the scores
# with the weights, and remove the worst combinations on a schedule until one per group is left.
#
# **The math in a few lines** (docs/algorithms.md, section 5).
# * **Combinations**: all $N$-subsets of the $M$ positions, as a 0/1 table $I$ of shape $(C, M)$,
#   $C = \binom{M}{N}$, rows in lexicographic order.
# * **Scores** $\alpha$ of shape $(G, C)$, one per group and combination, initialised to
#   $1/\binom{M-1}{N-1}$ so that $\alpha I = 1$ at every position: training starts dense.
# * **Mask**: a combination is alive while its score is non-zero; position $j$ is kept when the alive
#   combinations containing it have a non-zero sum: $E = \big((\alpha \odot \mathrm{alive})\, I \ne 0\big)$.
# * **Gradients** ($g = \partial L / \partial \tilde W$, the mask's backward taken as the identity):
#   $\partial L/\partial \alpha_{k} = \mathrm{alive}_k \sum_{j \in \theta_k} g_j W_j$, and
#   $\partial L/\partial W = E \odot g$ (no STE: a weight no alive combination covers gets no loss gradient).
# * **Removal**: before every step the $k$ lowest scores of each group are set to 0 (dead), with
#   $k = C - \mathrm{card}(e)$, $\mathrm{card}(e) = 1 + \lceil (C-1)(1 - (e - t_i)/(t_f - t_i))^p \rceil$,
#   $p = 3$; from epoch $t_f$ on exactly one combination per group is left and the network is N:M.

# %%
import itertools
import math
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from nmref import LBC, from_groups, lbc, nm_mask, to_groups
from nmref.data import fast_mode
from nmref.layers import Linear
from nmref.masks import check_nm
from nmref.train import TrainConfig, train

FAST = fast_mode()
scratch = tempfile.TemporaryDirectory(prefix="nmref_nb04_")   # removed when the kernel exits
work = Path(scratch.name)
np.set_printoptions(precision=3, suppress=True, linewidth=110)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Combinations as a table

# %%
table = lbc.combinations(2, 4)                                       # (C, M) = (6, 4)
print("2:4 combinations (rows of I, 1 = kept):")
for k, row in enumerate(table):
    print(f"  k={k}: {row}  keeps positions {tuple(np.flatnonzero(row).tolist())}")
print("\nC per pattern:", {f"{n}:{m}": len(lbc.combinations(n, m)) for n, m in [(1, 4), (2, 4), (2, 8), (4, 8)]},
      "| 8:16:", math.comb(16, 8))
assert [tuple(np.flatnonzero(r).tolist()) for r in table] == list(itertools.combinations(range(4), 2))

# %% [markdown]
# ## 2. Scores, and the mask they define
# Every position belongs to $\binom{3}{1} = 3$ of the six 2:4 combinations, so scores of $1/3$ give
# $\alpha I = 1$ everywhere. Removing combinations changes the mask only once no alive combination covers
# a position, so **a group stays dense for a long time**: even two disjoint survivors cover all four
# positions.

# %%
alpha = lbc.init_scores(5, 2, 4)                                     # (G, C) = (5, 6), all 1/3
print("initial scores:", alpha[0], "-> alpha @ I =", alpha[0] @ table)
alive = np.ones_like(alpha, dtype=bool)
examples = {0: [], 1: [1, 2, 3, 4], 2: [2, 3, 4, 5], 3: [1, 2, 3, 4, 5], 4: [0, 1, 2, 3, 4]}   # removed per group
for g, removed in examples.items():
    alive[g, removed] = False
    alpha[g, removed] = 0.0
mask = lbc.mask_from_scores(alpha, alive, table)                    # (G, M)
for g in examples:
    survivors = [tuple(np.flatnonzero(table[k]).tolist()) for k in np.flatnonzero(alive[g])]
    print(f"group {g}: alive {survivors} -> kept {mask[g].astype(int)} (density {mask[g].mean():.2f})")
assert mask[1].all() and mask[2].sum() == 3 and mask[3].sum() == 2 and mask[4].sum() == 2

# %% [markdown]
# ## 3. How the gradient reaches the scores (derived, then checked)
# The forward weight is $\tilde W = W \odot E$ with $E$ the non-zero pattern of $S = (\alpha\odot\mathrm{alive})I$.
# Taking the backward of the binarisation as the identity means differentiating $\tilde W = W \odot S$:
#
# $$\frac{\partial L}{\partial \alpha_k} = \sum_j \frac{\partial L}{\partial \tilde W_j}\, W_j\,
#   \frac{\partial S_j}{\partial \alpha_k} = \mathrm{alive}_k \sum_{j} g_j W_j I_{kj}, \qquad
#   \text{i.e.}\quad \nabla_\alpha = \mathrm{alive} \odot \big((g \odot W)\, I^\top\big).$$
#
# Each combination sums $g_j W_j$ over its members; removing weight $j$ changes the loss by about
# $-g_j W_j$ (to first order). A combination whose weights the loss wants to keep therefore gets a negative
# gradient, and SGD raises its score. **Check 1, finite differences**: at the initial scores $S = 1 = E$, so the soft
# forward $W \odot S$ *is* the network's forward; perturbing one score by $\pm\epsilon$ and differencing
# the loss must give the gradient of an nmref `Linear` layer with an `LBC` method.

# %%
layer = Linear(8, 3, bias=False, method=lambda: LBC(2, 4), rng=0, dtype=np.float64)
x = rng.normal(size=(5, 8))                                          # (B, in)
target = rng.normal(size=(5, 3))                                     # (B, out)
y = layer.forward(x)
layer.backward(y - target)                                           # loss 0.5 ||y - t||^2
score_grad = layer.method.scores.grad                                # (G, C) = (6, 6)


def soft_loss(scores):
    s = from_groups(scores @ table.astype(np.float64), layer.weight.value.shape)   # (out, in) soft mask
    return 0.5 * ((x @ (layer.weight.value * s).T - target) ** 2).sum()


eps = 1e-6
fd = np.zeros_like(score_grad)
base = layer.method.scores.value.copy()
for idx in np.ndindex(*base.shape):
    step = np.zeros_like(base)
    step[idx] = eps
    fd[idx] = (soft_loss(base + step) - soft_loss(base - step)) / (2 * eps)
err = np.linalg.norm(fd - score_grad) / np.linalg.norm(fd)
print("score gradient of group 0, nmref:", score_grad[0])
print("finite differences             :", fd[0])
print(f"relative difference over all scores: {err:.1e}")
assert err < 1e-7

# %% [markdown]
# **Check 2, PyTorch autograd**, after some removals (where $S \ne E$): the straight-through form
# $E + S - \mathrm{sg}(S)$ has the value $E$ and the gradient of $S$; autograd through
# $\tilde W = W \odot (E + S - \mathrm{sg}(S))$ must give nmref's score and weight gradients.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed: skipping the PyTorch check (pip install torch to run it)")

if torch is not None:
    layer = Linear(8, 3, bias=False, method=lambda: LBC(2, 4), rng=1, dtype=np.float64)
    scores = layer.method.scores.value                               # (G, C), written in place below
    scores[...] = rng.normal(size=scores.shape)
    lbc.remove_lowest(scores, layer.method.alive, 3)                 # 3 of 6 removed per group
    y = layer.forward(x)
    layer.backward(y - target)

    w_t = torch.tensor(layer.weight.value, requires_grad=True)
    a_t = torch.tensor(scores, requires_grad=True)
    alive_t = torch.from_numpy(layer.method.alive).double()
    soft = (a_t * alive_t) @ torch.tensor(table, dtype=torch.float64)        # (G, M) S
    hard = (soft != 0).double()                                      # (G, M) E
    mask_t = (hard + soft - soft.detach()).reshape(3, 8)             # value E, gradient of S
    loss = 0.5 * ((torch.from_numpy(x) @ (w_t * mask_t).T - torch.from_numpy(target)) ** 2).sum()
    loss.backward()
    err_scores = np.linalg.norm(a_t.grad.numpy() - layer.method.scores.grad) / np.linalg.norm(a_t.grad.numpy())
    err_weight = np.linalg.norm(w_t.grad.numpy() - layer.weight.grad) / np.linalg.norm(w_t.grad.numpy())
    print(f"density of the mask after removing 3 of 6: {layer.method.mask.mean():.3f}")
    print(f"score gradient vs PyTorch: {err_scores:.1e} | weight gradient E * g vs PyTorch: {err_weight:.1e}")
    assert err_scores < 1e-12 and err_weight < 1e-12

# %% [markdown]
# ## 4. The removal schedule
# $k(e)$ combinations removed per group at epoch $e$, for a 120-epoch run with $t_f = 60$ (the paper's
# setting). Check it by hand first: for 2:4, $k = 0, 1, 2, 3, 4, 5$ starting at epochs 0, 5, 10, 16, 25, 60.

# %%
def by_hand(e, c, t_i=0, t_f=60, p=3):
    if e >= t_f:
        return c - 1
    return c - (1 + math.ceil((c - 1) * (1 - (e - t_i) / (t_f - t_i)) ** p))

epochs = np.arange(121)
k_24 = [lbc.removal_schedule(int(e), 6, 0, 60) for e in epochs]
assert k_24 == [by_hand(int(e), 6) for e in epochs]
starts = [int(np.argmax(np.array(k_24) == k)) for k in range(6)]
print("2:4 removal: k = 0..5 starts at epochs", starts)
assert starts == [0, 5, 10, 16, 25, 60]

fig, ax = plt.subplots(figsize=(8, 3.8), layout="constrained")
for (n, m), p in [((2, 4), 3), ((2, 4), 4), ((2, 8), 3), ((4, 8), 3)]:
    c = len(lbc.combinations(n, m))
    alive_frac = [(c - lbc.removal_schedule(int(e), c, 0, 60, p)) / c for e in epochs]
    ax.step(epochs, alive_frac, where="post", label=f"{n}:{m} (C = {c}), p = {p}")
ax.axvline(60, color="0.5", ls="--", lw=0.8)
ax.text(61, 0.9, "t_f = 60: one combination left", fontsize=8)
ax.set_xlabel("epoch")
ax.set_ylabel("alive combinations per group / C")
ax.set_title("LBC's removal schedule over a 120-epoch run")
ax.legend()
plt.show()

# %% [markdown]
# ## 5. A small run: scores, survivors and density during training
# The MLP (40 → 256 → 256 → 10) on MNIST-1D with LBC 2:4 on its two hidden layers, trained by
# `nmref.train` one epoch per call (`stop_after=1`, then `resume=True`), so that after every epoch the
# checkpoint shows the scores (`param/3.weight.scores`) and the alive flags. $t_f$ is half the run. Fast
# mode (CI): 4 epochs on 2000 samples; the full run shown here: 20 epochs on the 40 000 training samples.

# %%
EPOCHS = 4 if FAST else 20
config = TrainConfig(dataset="mnist1d", model="mlp", method="lbc", pattern="2:4",
                     epochs=EPOCHS, out=str(work / "lbc"), progress=False, stop_after=1)
snapshots = []                                                       # per epoch: scores, alive of layer 3
for epoch in range(EPOCHS):
    result = train(config, resume=epoch > 0)
    ckpt = np.load(result["checkpoint"])
    snapshots.append({"scores": ckpt["param/3.weight.scores"], "alive": ckpt["method/3/alive"],
                      "k": int(ckpt["method/3/k"])})
history = result["history"]
print(f"{'epoch':>5}{'k':>4}{'alive/group':>13}{'density':>9}{'test acc':>10}")
for row, snap in zip(history, snapshots):
    print(f"{row['epoch']:>5}{snap['k']:>4}{row['alive_per_group']:>13.2f}{row['density']:>9.3f}{row['test_acc']:>10.3f}")
assert history[-1]["is_nm"]

# %% [markdown]
# After the last removal the network is exactly 2:4: check the final masked weights, and see how the
# surviving combinations are spread over the 16 384 groups of layer 3. Then compare the learned choice with
# the magnitude rule SR-STE would apply to the same final weights. In the figure after it, the left panel
# follows a single group, the one whose surviving score ended highest: an extreme group, picked because its
# curves separate clearly, not a typical one.

# %%
w_final = ckpt["param/3.weight"]
mask_final = ckpt["mask/3.weight"]
check_nm(w_final * mask_final, 2, 4, name="3.weight")
survivor = snapshots[-1]["alive"].argmax(axis=1)                     # (G,) index of the surviving combination
assert (snapshots[-1]["alive"].sum(axis=1) == 1).all()
same_as_magnitude = (to_groups(mask_final, 4) == to_groups(nm_mask(w_final, 2, 4), 4)).all(axis=1).mean()
print("final 3.weight * mask is 2:4; one combination alive in every group")
print(f"groups whose learned combination is also the magnitude top-2 of the final W: {same_as_magnitude:.3f} "
      f"(chance: 1/6 = {1 / 6:.3f})")

# %%
g_show = int(np.argmax(np.ptp(snapshots[-2 if EPOCHS > 1 else -1]["scores"], axis=1)))   # the highest final survivor
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
ep = np.arange(EPOCHS)
trajectories = np.array([s["scores"][g_show] for s in snapshots])    # (epochs, C)
for k in range(len(table)):
    label = f"k={k} keeps {tuple(np.flatnonzero(table[k]).tolist())}" + (" (survives)" if k == survivor[g_show] else "")
    axes[0].plot(ep, trajectories[:, k], "o-", label=label, lw=2.5 if k == survivor[g_show] else 1)
axes[0].set_xlabel("epoch (scores at the end of it)")
axes[0].set_ylabel("score alpha (0 = removed)")
axes[0].set_title(f"Scores of group {g_show} of layer 3")
axes[0].legend(fontsize=7)
counts = np.bincount(survivor, minlength=len(table))
axes[1].bar(range(len(table)), counts / counts.sum())
axes[1].set_xticks(range(len(table)), [str(tuple(np.flatnonzero(r).tolist())) for r in table])
axes[1].set_xlabel("surviving combination (kept positions)")
axes[1].set_ylabel("fraction of the groups")
axes[1].set_title("Which combination survives, layer 3")
axes[2].plot(ep, [h["density"] for h in history], "o-", label="forward density of the sparse layers")
axes[2].plot(ep, [h["alive_per_group"] / len(table) for h in history], "s--", label="alive combinations / C")
axes[2].axhline(0.5, color="k", lw=0.8, label="2:4 density")
axes[2].set_xlabel("epoch")
axes[2].set_ylabel("fraction")
axes[2].set_ylim(0, 1.05)
axes[2].set_title("LBC density stays high until the last removals")
axes[2].legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Summary
# * LBC scores every $N$-of-$M$ combination of every group: $(G, C)$ scores with $C = \binom{M}{N}$
#   (6 for 2:4, 70 for 4:8, 12 870 for 8:16), initialised so that training starts dense.
# * The mask is "covered by an alive combination"; the scores learn from $\sum_{j\in\theta_k} g_j W_j$
#   through an identity backward of the mask (checked by finite differences and PyTorch), the weights from
#   $E\odot g$.
# * A cubic schedule removes the lowest-scored combinations until one per group is left at $t_f$; then the
#   scores freeze and the network is exactly N:M.
# * Its forward stays denser than N/M for most of the removal phase: a 2:4 group is dense while 4 or more
#   combinations are alive, usually with 3 (16 of the 20 possible triples cover all four positions), and
#   even with 2 when they are disjoint. Count that when comparing training cost with SR-STE.
#
# ## Exercises
# 1. For 4:8, what are the initial scores, and why is $\alpha I = 1$? Check with `lbc.init_scores`.
# 2. Of the $\binom{6}{2} = 15$ ways to keep two alive 2:4 combinations, how many leave the group fully
#    dense, and how many give 3 of 4? Enumerate with `lbc.mask_from_scores`.
# 3. Plot $k(e)$ for 2:4 with $t_i = 10$, $t_f = 60$. What does the public code's formula give before
#    $t_i$, and what does nmref do there?

# %% [markdown]
# ## Solutions

# %% [markdown]
# **1.** Each position is in $\binom{7}{3} = 35$ of the 70 combinations, so scores of $1/35$ sum to 1.

# %%
a48 = lbc.init_scores(1, 4, 8)
print("initial 4:8 score:", a48[0, 0], "= 1/35:", np.isclose(a48[0, 0], 1 / 35), "| alpha @ I:", a48[0] @ lbc.combinations(4, 8))

# %% [markdown]
# **2.** Two combinations cover all four positions only when they are disjoint (3 pairs); otherwise they
# share one position and cover 3 (12 pairs). Two identical combinations cannot both be in the pair.

# %%
density_counts = {}
for pair in itertools.combinations(range(6), 2):
    alive_pair = np.zeros((1, 6), dtype=bool)
    alive_pair[0, list(pair)] = True
    kept = int(lbc.mask_from_scores(np.full((1, 6), 1 / 3), alive_pair, table).sum())
    density_counts[kept] = density_counts.get(kept, 0) + 1
print("kept positions -> number of alive pairs:", density_counts)

# %% [markdown]
# **3.** Before $t_i$ the formula gives $\mathrm{card}(e) > C$, i.e. $k < 0$, which breaks the public code's
# top-k; nmref clamps it to $k = 0$ (nothing removed) and removal starts at $t_i$.

# %%
raw_k = [6 - (1 + math.ceil(5 * (1 - (e - 10) / 50) ** 3)) for e in range(0, 12)]
print("formula k(e), e = 0..11:", raw_k)
print("nmref   k(e), e = 0..11:", [lbc.removal_schedule(e, 6, 10, 60) for e in range(0, 12)])
fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
ax.step(epochs, [lbc.removal_schedule(int(e), 6, 10, 60) for e in epochs], where="post")
ax.set_xlabel("epoch")
ax.set_ylabel("k removed per group")
ax.set_title("2:4, t_i = 10, t_f = 60")
plt.show()
