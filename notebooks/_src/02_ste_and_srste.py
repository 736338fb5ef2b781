# %% [markdown]
# # 02 · STE and SR-STE: training through a hard N:M mask
#
# **Goal.** See why the gradient of a hard mask is useless for learning *which* weights to keep, how the
# straight-through estimator (STE) fixes that, what goes wrong with STE, and how SR-STE's extra term
# $\lambda_W (1-E) \odot W$ corrects it, on a toy problem small enough to watch every weight.
#
# **The math in a few lines** (Zhou et al. 2021). The forward uses $\tilde W = E(W) \odot W$, with
# $E(W)$ the N:M magnitude mask, and $g = \partial L / \partial \tilde W$.
# * $E(W)$ is piecewise constant, so wherever it does not jump, $\partial L/\partial W = E \odot g$:
#   **pruned weights get exactly zero gradient**. They never move, so the mask can only change when a kept
#   weight shrinks below a pruned one: the network cannot learn to revive a pruned weight.
# * **STE** passes $g$ through the mask as if it were the identity: $\partial L/\partial W := g$, pruned
#   weights included. They now move, but with a gradient computed for the sparse network $\tilde W$, not
#   for themselves: a pruned weight that the sparse network "would like" keeps growing, overtakes a kept
#   one, swaps in, and the one swapped out starts growing in turn. The mask keeps flipping.
# * **SR-STE** adds a decay on the pruned weights only: $\partial L/\partial W := g + \lambda_W (1-E)\odot W$,
#   before the optimizer (so it goes through momentum). Pruned weights are pulled towards zero unless the
#   gradient pushes them hard enough, so the mask settles. $\lambda_W = 0$ is exactly STE; the paper uses
#   $\lambda_W = 2 \times 10^{-4}$.

# %%
import matplotlib.pyplot as plt
import numpy as np

from nmref import SRSTE, STE, masked_grad, nm_mask, srste_grad, ste_grad
from nmref.data import fast_mode
from nmref.layers import Linear
from nmref.losses import mse_loss
from nmref.optim import SGD

np.set_printoptions(precision=3, suppress=True, linewidth=110)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The three weight-gradient rules side by side
# nmref keeps them next to each other (`nmref.sparsity`): given the same `g`, `w` and `mask`, they differ
# only on the pruned positions.

# %%
w = rng.normal(size=(2, 8))                              # (out, in)
g = rng.normal(size=(2, 8))                              # dL/dW~
mask = nm_mask(w, 2, 4)
lam = 0.5                                                # large, so the difference shows in print
print("mask:\n", mask.astype(int))
print("hard mask (true gradient)  E * g:\n", masked_grad(g, w, mask))
print("STE                        g:\n", ste_grad(g, w, mask))
print(f"SR-STE (lam={lam})          g + lam (1-E) W:\n", srste_grad(g, w, mask, lam))

# %% [markdown]
# ## 2. Check: the hard mask's gradient really is $E \odot g$
# Central finite differences of $L(W) = \tfrac12\|x\,(E(W)\odot W)^\top - y\|^2$, perturbing one weight at
# a time by $\pm 10^{-6}$ (small enough not to change the mask), against $E \odot g$ computed by an nmref
# `Linear` layer's backward.

# %%
x = rng.normal(size=(6, 8))                              # (B, in)
y = rng.normal(size=(6, 2))                              # (B, out)

def loss_of(w_dense):
    w_tilde = nm_mask(w_dense, 2, 4) * w_dense
    return 0.5 * ((x @ w_tilde.T - y) ** 2).sum()

eps = 1e-6
fd = np.zeros_like(w)
for idx in np.ndindex(*w.shape):
    step = np.zeros_like(w)
    step[idx] = eps
    fd[idx] = (loss_of(w + step) - loss_of(w - step)) / (2 * eps)

layer = Linear(8, 2, bias=False, method=lambda: STE(2, 4), rng=0, dtype=np.float64)
layer.weight.value[...] = w
out = layer.forward(x)
layer.backward(out - y)                                  # dL/dy of 0.5 ||y_hat - y||^2
g_layer = layer.weight.grad                              # STE: dL/dW~, pruned positions included
print("finite differences (true gradient):\n", fd)
print("E * g from the layer:\n", masked_grad(g_layer, w, layer.method.mask))
rel = np.linalg.norm(fd - masked_grad(g_layer, w, layer.method.mask)) / np.linalg.norm(fd)
print(f"relative difference {rel:.1e}; pruned positions of the true gradient: all zero =",
      bool((fd[~mask] == 0).all()))
assert rel < 1e-6 and (fd[~mask] == 0).all()

# %% [markdown]
# ## 3. Check: an nmref SR-STE layer against PyTorch autograd
# A PyTorch version of SR-STE is a custom autograd function: forward $W \odot E$, backward
# $g + \lambda (1 - E) \odot W$. Through a Linear layer with a random upstream gradient, the weight
# gradients must agree to float64 rounding.

# %%
try:
    import torch
except ImportError:
    torch = None
    print("PyTorch is not installed: skipping the PyTorch check (pip install torch to run it)")

if torch is not None:
    class SRSTEFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, w, mask, lam):
            ctx.save_for_backward(w, mask)
            ctx.lam = lam
            return w * mask

        @staticmethod
        def backward(ctx, g):
            w, mask = ctx.saved_tensors
            return g + ctx.lam * (~mask).to(w.dtype) * w, None, None

    lam_check = 2e-4
    layer = Linear(16, 4, method=lambda: SRSTE(2, 4, lam=lam_check), rng=1, dtype=np.float64)
    xb = rng.normal(size=(5, 16))
    dy = rng.normal(size=(5, 4))
    layer.forward(xb)
    layer.backward(dy)

    w_t = torch.tensor(layer.weight.value, requires_grad=True)
    b_t = torch.tensor(layer.bias.value, requires_grad=True)
    mask_t = torch.from_numpy(nm_mask(layer.weight.value, 2, 4))
    y_t = torch.from_numpy(xb) @ SRSTEFunction.apply(w_t, mask_t, lam_check).T + b_t
    (y_t * torch.from_numpy(dy)).sum().backward()
    rel = np.linalg.norm(layer.weight.grad - w_t.grad.numpy()) / np.linalg.norm(w_t.grad.numpy())
    print(f"SR-STE weight gradient, nmref vs PyTorch: relative error {rel:.1e}")
    assert rel < 1e-12

# %% [markdown]
# ## 4. A toy problem where the difference is visible
# One output, eight inputs (two groups of four), trained with 2:4 by plain SGD on fresh mini-batches of
# whitened inputs $x \sim \mathcal N(0, I)$, targets $y = x\,w^{*\top} + 0.1\,\varepsilon$ with
#
# $$w^* = (1.0,\ 0.9,\ 0.8,\ 0.1 \;|\; 0.6,\ -0.55,\ 0.3,\ 0.05).$$
#
# The best 2:4 model keeps $(1.0, 0.9)$ and $(0.6, -0.55)$; its expected loss is the energy of the
# dropped weights plus the noise, $0.8^2 + 0.1^2 + 0.3^2 + 0.05^2 + 0.1^2 = 0.7525$.
#
# Why a particular $\lambda$ matters here: with whitened inputs and the loss $\mathrm{mean}((\hat y - y)^2)$,
# a pruned weight gets $g_j = -2 w^*_j$ (its input is simply missing from the prediction). Under SR-STE it
# stops where $g_j + \lambda w_j = 0$, at $w_j = 2 w^*_j / \lambda$, while a kept weight converges to
# $w^*_j$. The mask is stable once every pruned weight rests below the kept ones:
# $\lambda > 2 \cdot 0.8 / 0.9 \approx 1.78$ for the first group. A toy gradient is $O(1)$; in a deep
# network the gradients reaching single weights are far smaller and noisier, which is why the paper's
# $2 \times 10^{-4}$ is enough there. What matters is $\lambda |w|$ against $|g|$ on the pruned weights.
#
# In the table below, *mask flips* counts the positions whose kept/pruned state changes from one step to
# the next (one swap inside a group is 2 flips), and the loss is the mean mini-batch loss of the last
# quarter of the steps.

# %%
W_STAR = np.array([[1.0, 0.9, 0.8, 0.1, 0.6, -0.55, 0.3, 0.05]])    # (1, 8)
BEST_LOSS = 0.8**2 + 0.1**2 + 0.3**2 + 0.05**2 + 0.1**2
STEPS = 600 if fast_mode() else 2000


class HardMask(STE):
    """The true gradient of the hard mask, dW = E * g, with the mask recomputed every step."""

    def weight_grad(self, g, w):
        return masked_grad(g, w, self.mask)


def train_toy(method, steps=STEPS, lr=0.02, batch=32, seed=0):
    """Weights (steps, 8), masks (steps, 8) and losses (steps,) of one toy run."""
    layer = Linear(8, 1, bias=False, method=method, rng=0, dtype=np.float64)
    opt = SGD([layer.weight], lr=lr)
    data_rng = np.random.default_rng(seed)
    weights, masks, losses = [], [], []
    for _ in range(steps):
        x = data_rng.normal(size=(batch, 8))                          # (B, 8)
        y = x @ W_STAR.T + 0.1 * data_rng.normal(size=(batch, 1))     # (B, 1)
        loss, dy = mse_loss(layer.forward(x), y)
        layer.backward(dy)
        opt.step()
        weights.append(layer.weight.value[0].copy())
        masks.append(layer.method.mask[0].copy())
        losses.append(float(loss))
    return np.array(weights), np.array(masks), np.array(losses)


runs = {"hard mask (E * g)": train_toy(lambda: HardMask(2, 4)),
        "STE": train_toy(lambda: STE(2, 4)),
        "SR-STE, lambda = 2": train_toy(lambda: SRSTE(2, 4, lam=2.0))}
tail = STEPS // 4
print(f"{'method':<20}{'mask flips':>11}{'final mask':>28}{'loss, last quarter':>20}")
for name, (ws, ms, ls) in runs.items():
    flips = int((ms[1:] != ms[:-1]).sum())
    print(f"{name:<20}{flips:>11}{str(ms[-1].astype(int)):>28}{ls[-tail:].mean():>20.3f}")
print(f"best possible 2:4 loss: {BEST_LOSS:.4f}")

# %% [markdown]
# ### The weights of the first group, step by step
# Solid lines while a weight is kept, dots while it is pruned.

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True, layout="constrained")
colors = plt.cm.viridis(np.linspace(0, 0.9, 4))
steps = np.arange(1, STEPS + 1)
for ax, (name, (ws, ms, _)) in zip(axes, runs.items()):
    for j in range(4):
        ax.plot(steps, np.where(ms[:, j], ws[:, j], np.nan), color=colors[j], lw=1.5, label=f"w{j} (w* = {W_STAR[0, j]})")
        ax.plot(steps, np.where(ms[:, j], np.nan, ws[:, j]), ".", color=colors[j], ms=1.5)
    flips = int((ms[1:, :4] != ms[:-1, :4]).sum())
    ax.set_title(f"{name}: {flips} flips in group 1")
    ax.set_xlabel("SGD step")
axes[0].set_ylabel("weight value")
axes[0].legend(loc="upper left", fontsize=8)
fig.suptitle("Group 1 of the toy: the hard mask never revives w2; STE chases its tail; SR-STE settles on w0, w1")
plt.show()

# %% [markdown]
# * **Hard mask**: the pruned weights never move; the mask depends on the initialisation, and the loss
#   stays above the best 2:4 loss whenever the initial mask was wrong.
# * **STE**: pruned weights grow, overtake, swap in; the swapped-out weight then grows. All weights of
#   the group drift to a common magnitude and the mask flips for ever.
# * **SR-STE**: the pruned weights settle at $2w^*_j/\lambda$, below the kept ones; the mask stops
#   flipping and the loss reaches the best 2:4 value (0.743 against 0.7525: a mean of 32-sample mini-batch
#   losses scatters by about 0.01 around its expectation, so it can land a little below it).
#
# ### How much decay is enough? A sweep of $\lambda$
# Same data, same initial weights; flips counted over the whole run, loss averaged over the last quarter.
# The dashed line is the stability threshold derived above. $\lambda = 0$ is STE, and a negative
# $\lambda$ (which the SR-STE paper also tries) pushes pruned weights *up* and makes things worse.

# %%
lams = [-0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
sweep = [train_toy(lambda lam=lam: SRSTE(2, 4, lam=lam)) for lam in lams]
flips = [int((ms[1:] != ms[:-1]).sum()) for _, ms, _ in sweep]
final_loss = [ls[-tail:].mean() for _, _, ls in sweep]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
ax1.plot(lams, flips, "o-")
ax1.set_xlabel("lambda_W")
ax1.set_ylabel(f"mask flips in {STEPS} steps")
ax1.set_title("Topology changes vs the SR-STE decay")
ax2.plot(lams, final_loss, "o-", label="SR-STE")
ax2.axhline(BEST_LOSS, color="k", lw=0.8, label="best 2:4 loss")
ax2.set_xlabel("lambda_W")
ax2.set_ylabel("training loss (MSE), last quarter")
ax2.set_title("Loss vs the SR-STE decay")
for ax in (ax1, ax2):
    ax.axvline(2 * 0.8 / 0.9, ls="--", color="0.5", label="threshold 2 * 0.8 / 0.9")
ax1.legend()
ax2.legend()
plt.show()
for lam, f, l in zip(lams, flips, final_loss):
    print(f"lambda {lam:>5}: {f:>5} flips, loss {l:.3f}")

# %% [markdown]
# ## Summary
# * The exact gradient through a hard mask is $E\odot g$: pruned weights get zero and can never come
#   back (checked by finite differences).
# * STE hands $g$ to every weight. Pruned weights move, but along the gradient of the *sparse* network,
#   so they overshoot and the mask keeps flipping.
# * SR-STE adds $\lambda_W (1-E)\odot W$ to the gradient of pruned weights, before the optimizer. It
#   shrinks them until the gradient and the decay balance; large enough $\lambda$ freezes the
#   topology on the better weights. nmref's `SRSTE` matches a PyTorch autograd implementation to float64
#   rounding.
# * In the toy we could compute the $\lambda$ it needs; in a network, SAD (notebook 03) measures the
#   effect.
#
# ## Exercises
# 1. Show that `SRSTE(2, 4, lam=0)` trains the toy **bit for bit** like `STE(2, 4)`.
# 2. Change $w^*_2$ from 0.8 to 0.85 and predict the new stability threshold, then find the smallest
#    $\lambda$ from the sweep values that stops the flipping in the last half of the run.
# 3. Add momentum 0.9 to the toy optimizer (with lr 0.005). Does SR-STE with $\lambda = 2$ still settle?
#    Why does the threshold not depend on the learning rate or the momentum?

# %% [markdown]
# ## Solutions

# %% [markdown]
# **1.** With $\lambda = 0$ the added term is exactly zero, so every gradient, and every step, is the
# same floating-point computation.

# %%
ws_ste, ms_ste, ls_ste = train_toy(lambda: STE(2, 4), steps=200)
ws_0, ms_0, ls_0 = train_toy(lambda: SRSTE(2, 4, lam=0.0), steps=200)
print("bit-identical weights:", np.array_equal(ws_ste, ws_0), "| masks:", np.array_equal(ms_ste, ms_0))
assert np.array_equal(ws_ste, ws_0)

# %% [markdown]
# **2.** Threshold $2 \cdot 0.85 / 0.9 \approx 1.89$: the pruned $w_2$ rests at $1.7/\lambda$ and must stay
# below $w_1 \approx 0.9$. $\lambda = 2$ is only just above it, so the mini-batch noise still carries $w_2$
# across now and then; $\lambda = 3$ leaves a margin and the flips stop.

# %%
W_STAR[0, 2] = 0.85
for lam in [1.5, 2.0, 3.0]:
    _, ms, _ = train_toy(lambda lam=lam: SRSTE(2, 4, lam=lam))
    late = int((ms[STEPS // 2 + 1:] != ms[STEPS // 2:-1]).sum())
    print(f"lambda {lam}: {late} flips in the second half")
W_STAR[0, 2] = 0.8

# %% [markdown]
# **3.** The balance point $g_j + \lambda w_j = 0$ is where the update is zero whatever the step size or
# momentum, so the threshold is unchanged and SR-STE settles on the same mask. Momentum does change the
# noise: its effective step is $\mathrm{lr}/(1-\mu)$, so with $\lambda = 2$, just above the threshold, an
# occasional flip remains, while STE keeps flipping all the time.

# %%
def train_toy_momentum(method, steps=STEPS, lr=0.005, seed=0):
    layer = Linear(8, 1, bias=False, method=method, rng=0, dtype=np.float64)
    opt = SGD([layer.weight], lr=lr, momentum=0.9)
    data_rng = np.random.default_rng(seed)
    masks = []
    for _ in range(steps):
        x = data_rng.normal(size=(32, 8))
        y = x @ W_STAR.T + 0.1 * data_rng.normal(size=(32, 1))
        layer.backward(mse_loss(layer.forward(x), y)[1])
        opt.step()
        masks.append(layer.method.mask[0].copy())
    masks = np.array(masks)
    return int((masks[steps // 2 + 1:] != masks[steps // 2:-1]).sum()), masks[-1].astype(int)

for name, method in [("STE", lambda: STE(2, 4)), ("SR-STE lambda 2", lambda: SRSTE(2, 4, lam=2.0))]:
    late, final = train_toy_momentum(method)
    print(f"{name}: {late} flips in the second half, final mask {final}")
