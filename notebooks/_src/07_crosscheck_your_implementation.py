# %% [markdown]
# # 07 · Cross-check your own N:M implementation against nmref
#
# **Goal.** You have written N:M sparse training in another framework (here: a small PyTorch module).
# Before trusting its results, test it against nmref's **golden vectors** (`nmref golden DIR`: masks,
# gradients, an optimizer step, SAD, with real ties) and ask **`nmref check`** whether the checkpoint it
# writes is really N:M. Along the way, see which golden file catches which typical bug.
#
# **The conventions a cross-check depends on** (docs/crosscheck.md has the full table).
# * `n:m` keeps **n** of every m consecutive weights; masks are boolean, `True` = kept.
# * Groups run along the input axis: Linear `(out, in)` along `in`; conv `(Cout, Cin, kh, kw)` along `Cin`
#   at fixed `(cout, kh, kw)` (NHWC) in `layout="conv"`, or along the flatten in `"nchw_flatten"`.
# * Ties: stable ascending sort of $|w|$, the first $m-n$ pruned (lower index pruned first).
# * SR-STE: $\partial L/\partial W = g + \lambda_W (1-E)\odot W$ **before** the optimizer; PyTorch SGD:
#   $d = \nabla + \mathrm{wd}\,W$, $v \leftarrow \mu v + d$ (the first $v = d$), $W \leftarrow W - \mathrm{lr}\,v$.
# * Compare masks exactly, floats by the norm-wise relative error $\|a-b\|/\|b\|$ (below $10^{-12}$ in
#   float64).

# %%
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from nmref.check import check_file, exit_code, format_report
from nmref.data import fast_mode, load
from nmref.golden import write_golden

FAST = fast_mode()
scratch = tempfile.TemporaryDirectory(prefix="nmref_nb07_")   # removed when the kernel exits
work = Path(scratch.name)
try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
    print("This notebook tests a PyTorch implementation: install PyTorch (pip install torch) to run the "
          "PyTorch cells; without it they print a note and skip their work.")


def rel(a, b):
    """Norm-wise relative error ||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))

# %% [markdown]
# ## 1. The golden vectors
# `write_golden(DIR)` is what `nmref golden DIR` runs. `manifest.json` says, for every file, the exact
# definition it follows and the meaning of every array.

# %%
manifest = write_golden(work / "golden")
golden = {name: np.load(work / "golden" / name) for name in manifest["files"]}
for name, entry in manifest["files"].items():
    print(f"{name:<22} {entry['description']}")
print("\nconventions:", json.dumps(manifest["conventions"]["n"]), "|", manifest["conventions"]["tie_rule"][:80], "...")

# %% [markdown]
# ## 2. The implementation under test
# A typical small PyTorch N:M module: a mask function for the three layouts, SR-STE as a custom autograd
# function, and a Linear layer that uses them. This is the code being tested; nmref only provides the
# reference numbers.

# %%
if torch is not None:
    def nm_mask_torch(w, n, m, layout="linear"):
        """Keep the n largest |w| of every m consecutive weights along the input axis (ties: lower index pruned)."""
        if layout == "conv":                                     # OIHW -> O,H,W,I: groups along Cin
            view = w.permute(0, *range(2, w.dim()), 1)
        else:                                                    # linear, or the C-order flatten
            view = w
        groups = view.reshape(-1, m)
        pruned = torch.sort(groups.abs(), dim=1, stable=True).indices[:, : m - n]
        keep = torch.ones_like(groups, dtype=torch.bool).scatter(1, pruned, False).reshape(view.shape)
        if layout == "conv":
            keep = keep.permute(0, w.dim() - 1, *range(1, w.dim() - 1))
        return keep

    class SRSTEFunction(torch.autograd.Function):
        """Forward W * E; backward g + lam * (1 - E) * W (Zhou et al. 2021, Eq. 5); lam = 0 is STE."""

        @staticmethod
        def forward(ctx, w, mask, lam):
            ctx.save_for_backward(w, mask)
            ctx.lam = lam
            return w * mask

        @staticmethod
        def backward(ctx, g):
            w, mask = ctx.saved_tensors
            return g + ctx.lam * (~mask).to(w.dtype) * w, None, None

    class NMLinear(torch.nn.Linear):
        """A Linear layer trained N:M with SR-STE; ``self.mask`` is the mask of the last forward."""

        def __init__(self, in_features, out_features, n=2, m=4, lam=2e-4):
            super().__init__(in_features, out_features)
            self.n, self.m, self.lam = n, m, lam
            self.mask = None

        def forward(self, x):
            self.mask = nm_mask_torch(self.weight.detach(), self.n, self.m)
            return F.linear(x, SRSTEFunction.apply(self.weight, self.mask, self.lam), self.bias)
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# ## 3. Test it against the golden files
# Every comparison is recorded in `results` (name, measured error, tolerance) and asserted.

# %%
results = []


def record(name, error, tolerance):
    results.append((name, error, tolerance))
    print(f"{'ok  ' if error <= tolerance else 'FAIL'} {name:<44} {error:.1e} (tolerance {tolerance:g})")
    assert error <= tolerance, name


if torch is not None:
    masks = golden["masks.npz"]
    for n, m in [(1, 4), (2, 4), (2, 8), (4, 8)]:
        for layout in ("linear", "conv", "nchw_flatten"):
            source = "linear_weight" if layout == "linear" else "conv_weight"
            mine = nm_mask_torch(torch.from_numpy(masks[source]), n, m, layout).numpy()
            record(f"mask {n}:{m} {layout} (mismatching entries)",
                   int((mine != masks[f"{layout}_mask_{n}to{m}"]).sum()), 0)

    grads = golden["ste_srste_grads.npz"]
    for layout in ("linear", "conv"):
        for rule, lam in (("ste", 0.0), ("srste", float(grads["lam"]))):
            w = torch.tensor(grads[f"{layout}_weight"], requires_grad=True)
            mask = nm_mask_torch(w.detach(), 2, 4, layout)
            SRSTEFunction.apply(w, mask, lam).backward(torch.from_numpy(grads[f"{layout}_grad_masked"]))
            record(f"{rule} gradient {layout}", rel(w.grad, grads[f"{layout}_{rule}_grad"]), 1e-12)

    step = golden["srste_sgd_step.npz"]
    for fresh in (False, True):
        p = torch.nn.Parameter(torch.from_numpy(step["weight0"]).clone())
        opt = torch.optim.SGD([p], lr=float(step["lr"]), momentum=float(step["momentum"]),
                              weight_decay=float(step["weight_decay"]))
        if not fresh:
            opt.state[p]["momentum_buffer"] = torch.from_numpy(step["momentum0"]).clone()
        mask = nm_mask_torch(p.detach(), 2, 4)
        SRSTEFunction.apply(p, mask, float(step["lam"])).backward(torch.from_numpy(step["grad_masked"]))
        opt.step()
        suffix, label = ("_fresh", " (fresh optimizer)") if fresh else ("", "")
        record(f"SR-STE SGD step, weight{label}", rel(p.detach(), step[f"weight1{suffix}"]), 1e-12)
        record(f"SR-STE SGD step, momentum{label}", rel(opt.state[p]["momentum_buffer"], step[f"momentum1{suffix}"]), 1e-12)

    sad = golden["sad.npz"]
    walk = torch.from_numpy(sad["masks"])                                   # (steps + 1, 16, 32)
    pair = (walk[1:] != walk[:-1]).sum(dim=(1, 2)).numpy()
    record("SAD step to step (count difference)", int(np.abs(pair - sad["pair_sad"]).sum()), 0)
    record("SAD vs initial (count difference)", int(np.abs((walk != walk[0]).sum(dim=(1, 2)).numpy() - sad["vs_initial"]).sum()), 0)
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# ## 4. Which golden file catches which bug
# Four mistakes that each look reasonable in isolation, run against the same files:
# * **topk masks**: `torch.topk(|w|, n)` picks the same set when there are no ties, but its choice among
#   equal values is not the stable rule. The golden weights are small integers, full of ties.
# * **conv grouped along the flatten**: a conv mask computed on `w.reshape(-1, m)` (the SR-STE paper's
#   grouping) when the reference layout is NHWC.
# * **decoupled SR-STE**: the $\lambda_W$ term applied to the weights after the optimizer step, outside
#   momentum, instead of being added to the gradient before it.
# * **prune convention**: "1:4" read as 1 weight *zeroed* of 4 (SparseGPT/Wanda style).

# %%
bugs = {}
if torch is not None:
    def topk_mask(w, n, m):
        groups = w.reshape(-1, m)
        kept = torch.topk(groups.abs(), n, dim=1).indices
        return torch.zeros_like(groups, dtype=torch.bool).scatter(1, kept, True).reshape(w.shape)

    lin = torch.from_numpy(masks["linear_weight"])
    bugs["topk masks (2:4 linear)"] = int((topk_mask(lin, 2, 4).numpy() != masks["linear_mask_2to4"]).sum())
    bugs["conv grouped along the flatten"] = int(
        (nm_mask_torch(torch.from_numpy(masks["conv_weight"]), 2, 4, "nchw_flatten").numpy() != masks["conv_mask_2to4"]).sum())
    bugs["prune convention for 1:4"] = int((nm_mask_torch(lin, 4 - 1, 4).numpy() != masks["linear_mask_1to4"]).sum())

    p = torch.nn.Parameter(torch.from_numpy(step["weight0"]).clone())
    opt = torch.optim.SGD([p], lr=float(step["lr"]), momentum=float(step["momentum"]),
                          weight_decay=float(step["weight_decay"]))
    opt.state[p]["momentum_buffer"] = torch.from_numpy(step["momentum0"]).clone()
    mask = nm_mask_torch(p.detach(), 2, 4)
    p.grad = torch.from_numpy(step["grad_masked"]).clone()                  # plain STE gradient ...
    opt.step()
    with torch.no_grad():
        p -= float(step["lr"]) * float(step["lam"]) * (~mask) * torch.from_numpy(step["weight0"])   # ... decay after
    decoupled_weight = rel(p.detach(), step["weight1"])
    decoupled_momentum = rel(opt.state[p]["momentum_buffer"], step["momentum1"])
    print(f"{'bug':<34}{'mismatching mask entries':>26}")
    for name, count in bugs.items():
        print(f"{name:<34}{count:>26}")
    print(f"decoupled SR-STE: weight after one step, relative error {decoupled_weight:.1e}; "
          f"momentum buffer {decoupled_momentum:.1e} (tolerance 1e-12)")
    assert all(count > 0 for count in bugs.values()) and decoupled_momentum > 1e-12
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# The decoupled SR-STE gives **the same weights after one step** (up to rounding): in a single step
# $\mathrm{lr}\,(\mu v + g + \lambda(1-E)W)$ and $\mathrm{lr}\,(\mu v + g) + \mathrm{lr}\,\lambda(1-E)W$ are the
# same number. The difference lives in the momentum buffer, which carries the term into every later step
# in the coupled version only. That is why the golden step file stores the buffer too: compare it.

# %%
if results:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
    float_checks = [(name, err) for name, err, tol in results if tol > 0]
    ax1.barh([n for n, _ in float_checks] + ["bug: decoupled SR-STE, weight", "bug: decoupled SR-STE, momentum"],
             [max(e, 1e-18) for _, e in float_checks] + [decoupled_weight, decoupled_momentum],
             color=["tab:green"] * len(float_checks) + ["tab:orange", "tab:red"])
    ax1.axvline(1e-12, color="k", ls="--", label="tolerance 1e-12")
    ax1.set_xscale("log")
    ax1.set_xlabel("relative error ||mine - golden|| / ||golden|| (float64)")
    ax1.set_title("Gradients and SGD steps vs the golden files (exact: shown at 1e-18)")
    ax1.legend()
    n_mask_checks = sum(1 for name, _, _ in results if name.startswith("mask "))
    ax2.barh(list(bugs), list(bugs.values()), color="tab:red")
    ax2.set_xlabel("mask entries different from masks.npz")
    ax2.set_title(f"Buggy masks (the correct one: 0 differences in {n_mask_checks} exact checks)")
    plt.show()
else:
    print("no PyTorch results to plot")

# %% [markdown]
# ## 5. Train it, save a checkpoint, and ask `nmref check`
# A few epochs of a PyTorch MLP with two `NMLinear` 2:4 layers on MNIST-1D (the same data nmref uses),
# then three ways of saving it:
# 1. masks applied: `W * mask` for the sparse layers (what you should ship);
# 2. the raw `state_dict()`: SR-STE keeps the pruned weights in `W`, so this is **not** 2:4;
# 3. the dense weights with the masks beside them, named like `torch.nn.utils.prune` does
#    (`weight_orig` + `weight_mask`): `nmref check` applies the masks itself.

# %%
if torch is not None:
    data = load("mnist1d")                                               # fast: 2000 samples; full: 40000
    x_train = torch.from_numpy(data.x_train.reshape(len(data.x_train), -1))
    y_train = torch.from_numpy(data.y_train)
    x_test = torch.from_numpy(data.x_test.reshape(len(data.x_test), -1))
    y_test = torch.from_numpy(data.y_test)
    torch.manual_seed(0)
    net = torch.nn.Sequential(NMLinear(40, 256), torch.nn.ReLU(), NMLinear(256, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-5)
    epochs = 2 if FAST else 10
    for epoch in range(epochs):
        order = torch.randperm(len(x_train))
        for start in range(0, len(order), 128):
            idx = order[start:start + 128]
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    print(f"PyTorch 2:4 MLP after {epochs} epochs: test accuracy {accuracy:.3f}")

    sparse_names = [f"{i}.weight" for i, layer in enumerate(net) if isinstance(layer, NMLinear)]
    with torch.no_grad():
        net(x_test[:1])                                                   # masks of the final weights
    state = net.state_dict()
    masked = {k: (v * net[int(k.split(".")[0])].mask if k in sparse_names else v) for k, v in state.items()}
    torch.save(masked, work / "masked.pt")
    torch.save(state, work / "raw.pt")
    pruned_style = {}
    for k, v in state.items():
        if k in sparse_names:
            pruned_style[k + "_orig"] = v
            pruned_style[k.replace("weight", "weight_mask")] = net[int(k.split(".")[0])].mask.float()
        else:
            pruned_style[k] = v
    torch.save(pruned_style, work / "pruned_style.pt")
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# `check_file` is the library call behind `nmref check`; it returns the JSON-ready report that
# `nmref check --json` prints. First the masked file as it is:

# %%
def summary_table(report):
    for t in report["tensors"]:
        first = t["first_violations"][0] if t["first_violations"] else ""
        print(f"  {t['name']:<14}{t['density']:>8.3f}{t['violating_groups']:>8} violating groups  {first}")
    print(f"  -> compliant={report['compliant']}, exit code {exit_code(report)}")


if torch is not None:
    report = check_file(work / "masked.pt", "2:4")
    print("masked.pt, every weight checked:")
    summary_table(report)
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# The dense classifier `4.weight` fails: a file without masks gives `nmref check` no way to know which
# layers were meant to be sparse. Restrict the check to the sparse layers with `include` (`--include` on
# the command line, a regular expression on the tensor names):

# %%
SPARSE = r"^(0|2)\.weight"
if torch is not None:
    reports = {name: check_file(work / name, "2:4", include=SPARSE if name != "pruned_style.pt" else None)
               for name in ("masked.pt", "raw.pt", "pruned_style.pt")}
    print(format_report(reports["masked.pt"]).replace(str(work) + "/", ""))
    for name in ("raw.pt", "pruned_style.pt"):
        print(f"\n{name}:")
        summary_table(reports[name])
    assert exit_code(reports["masked.pt"]) == 0 and exit_code(reports["raw.pt"]) == 1
    assert exit_code(reports["pruned_style.pt"]) == 0
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# In `pruned_style.pt` the masks beside the weights mark the sparse layers, so the dense classifier is
# skipped as such without any `include`. The command line gives the same answers through its exit code,
# which is what a CI job of *your* project would test (`python -m nmref.check` is the `nmref check`
# console command without the script):

# %%
if torch is not None:
    for name in ("masked.pt", "raw.pt"):
        done = subprocess.run([sys.executable, "-m", "nmref.check", "check", str(work / name), "--pattern", "2:4",
                               "--include", SPARSE, "--json"], capture_output=True, text=True)
        report = json.loads(done.stdout)
        print(f"nmref check {name} --pattern 2:4 --include '{SPARSE}': exit {done.returncode}, "
              f"compliant={report['compliant']}, summary {report['summary']}")
    assert done.returncode == 1
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# ## Summary
# * `nmref golden DIR` writes small, byte-stable reference files; compare masks **exactly** (they are
#   full of ties on purpose) and floats by the norm-wise relative error in float64.
# * Each file isolates one part: `masks.npz` the tie rule and the grouping, `ste_srste_grads.npz` the
#   backward rule (feed the file's upstream gradient, do not build a loss), `srste_sgd_step.npz` where the
#   SR-STE term enters the optimizer, `sad.npz` the SAD bookkeeping.
# * Common bugs each show up in one place: `topk` ties and the prune convention in the masks, the wrong
#   conv grouping in the conv masks, a decoupled $\lambda_W$ only in the momentum buffer (the weights after
#   one step agree to rounding).
# * `nmref check` (or `check_file`) answers "is this checkpoint N:M?" from `.pt`, `.safetensors` or
#   `.npz`: the raw state dict of an SR-STE model is **not** (the pruned weights are still in `W`); apply
#   the masks, or save them beside the weights.
#
# ## Exercises
# 1. Test the LBC part of your implementation: compute the mask and the score gradient of
#    `lbc_grads.npz`'s `linear_2to4_*` arrays in PyTorch (`E = ((alpha * alive) @ I) != 0`,
#    `dalpha = alive * ((g * W) @ I.T)`) and compare.
# 2. Save the masked model as `.safetensors` in bfloat16 and check it. Does the bf16 cast keep it 2:4?
# 3. A 1:4 checkpoint is checked by a colleague with `--pattern 3:4 --semantics prune`. Does it pass?
#    And with `--pattern 1:4 --semantics prune`? Try both on a 1:4 copy of the masked weights.

# %% [markdown]
# ## Solutions

# %% [markdown]
# **1.** The table is `itertools.combinations(range(4), 2)` as 0/1 rows; group the weight and gradient as
# `(G, 4)` in the same order as the scores.

# %%
if torch is not None:
    import itertools

    lbc = golden["lbc_grads.npz"]
    table = torch.tensor([[float(j in kept) for j in range(4)] for kept in itertools.combinations(range(4), 2)],
                         dtype=torch.float64)                                # (C, M), lexicographic rows
    w = torch.from_numpy(lbc["linear_2to4_weight"]).reshape(-1, 4)             # (G, M)
    g = torch.from_numpy(lbc["linear_2to4_grad_masked"]).reshape(-1, 4)
    alpha = torch.from_numpy(lbc["linear_2to4_alpha"])                         # (G, C)
    alive = (alpha != 0).double()
    lbc_mask = ((alpha * alive) @ table) != 0
    print("LBC mask mismatches:", int((lbc_mask.numpy().reshape(lbc["linear_2to4_mask"].shape) != lbc["linear_2to4_mask"]).sum()))
    print(f"LBC score gradient relative error: {rel(alive * ((g * w) @ table.T), lbc['linear_2to4_score_grad']):.1e}")
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# **2.** Casting keeps zeros zero (and bf16 never rounds a non-zero to zero at these magnitudes), so the
# file stays 2:4; `nmref check` reads BF16 safetensors directly.

# %%
if torch is not None:
    try:
        from safetensors.torch import save_file
    except ImportError:
        print("skipped: needs the safetensors package (pip install safetensors)")
    else:
        save_file({k: v.to(torch.bfloat16).contiguous() for k, v in masked.items()}, str(work / "masked_bf16.safetensors"))
        report = check_file(work / "masked_bf16.safetensors", "2:4", include=SPARSE)
        print("bf16 safetensors:", report["summary"], "| dtypes:", sorted({t["dtype"] for t in report["tensors"]}))
else:
    print("skipped: needs PyTorch")

# %% [markdown]
# **3.** `3:4` with prune semantics means 1 kept of 4: it passes. `1:4` with prune semantics means 3 kept
# of 4, a looser rule, so it also passes, and says nothing useful: a 2:4 or 3:4 checkpoint would pass it
# too. The convention decides what a check proves.

# %%
if torch is not None:
    one_of_four = {k: (v * nm_mask_torch(v, 1, 4) if k in sparse_names else v) for k, v in masked.items()}
    torch.save(one_of_four, work / "one_of_four.pt")
    for pattern in ("3:4", "1:4"):
        report = check_file(work / "one_of_four.pt", pattern, semantics="prune", include=SPARSE)
        print(f"--pattern {pattern} --semantics prune -> keep {report['pattern']['n_keep']} of 4, "
              f"compliant={report['compliant']}")
    loose = check_file(work / "masked.pt", "1:4", semantics="prune", include=SPARSE)
    print("the 2:4 model with --pattern 1:4 --semantics prune: compliant =", loose["compliant"])
else:
    print("skipped: needs PyTorch")
