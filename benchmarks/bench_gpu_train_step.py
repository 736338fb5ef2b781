"""One SR-STE 2:4 training step on the GPU: nmref on CuPy vs PyTorch CUDA eager doing the same.

Model: MLP 4096 -> 4096 -> 4096 -> 4096 (three SR-STE 2:4 Linear + ReLU) -> 10 (dense), batch 1024, float32
(no TF32 on either side), softmax cross-entropy, SGD(lr 0.01, momentum 0.9, weight decay 5e-5). PyTorch
recomputes the mask every step with a sort over groups of 4, as the public SR-STE code does, in a custom
autograd Function whose backward is g + lam * (1 - mask) * W. Both start from the same weights and batch;
the first steps are checked to give the same masks and losses before anything is timed.

    python benchmarks/bench_gpu_train_step.py [--steps 20] [--windows 5] [--markdown FILE]
"""
import argparse
import datetime
import statistics

import numpy as np

WIDTH, DEPTH, BATCH, CLASSES, LAM = 4096, 3, 1024, 10, 2e-4
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-5


def nmref_model(seed):
    from nmref.layers import Linear, ReLU, Sequential
    from nmref.sparsity import SRSTE
    rng = np.random.default_rng(seed)
    linears = [Linear(WIDTH, WIDTH, method=lambda: SRSTE(2, 4, lam=LAM), rng=rng) for _ in range(DEPTH)]
    linears.append(Linear(WIDTH, CLASSES, rng=rng))
    layers = [layer for lin in linears[:-1] for layer in (lin, ReLU())] + linears[-1:]
    return Sequential(*layers), linears


def torch_model(torch, host_weights):
    """nn.Sequential with the same weights; SR-STE through a custom autograd Function."""
    nn, F = torch.nn, torch.nn.functional

    class SRSTEWeight(torch.autograd.Function):
        masks = {}                                                                 # last mask per weight

        @staticmethod
        def forward(ctx, w):
            groups = w.abs().reshape(-1, 4)                                        # (G, 4)
            index = torch.argsort(groups, dim=1)[:, :2]                            # the 2 smallest |w| of each 4
            mask = torch.ones_like(groups, dtype=torch.bool).scatter_(1, index, False).reshape(w.shape)
            SRSTEWeight.masks[w.data_ptr()] = mask
            ctx.save_for_backward(w, mask)
            return w * mask

        @staticmethod
        def backward(ctx, g):
            w, mask = ctx.saved_tensors
            return g + LAM * (~mask) * w

    class SparseLinear(nn.Linear):
        def forward(self, x):
            return F.linear(x, SRSTEWeight.apply(self.weight), self.bias)

    layers = []
    for i in range(DEPTH):
        layers += [SparseLinear(WIDTH, WIDTH), nn.ReLU()]
    layers.append(nn.Linear(WIDTH, CLASSES))
    model = nn.Sequential(*layers).cuda()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, (w, b) in zip(linears, host_weights):
            lin.weight.copy_(torch.from_numpy(w))
            lin.bias.copy_(torch.from_numpy(b))
    return model, SRSTEWeight


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--markdown", default=None)
    args = p.parse_args(argv)

    import cupy as cp
    import torch
    from nmref import nm_mask, to_host
    from nmref.losses import softmax_cross_entropy
    from nmref.optim import SGD
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    model, linears = nmref_model(seed=0)
    host_weights = [(lin.weight.value.copy(), lin.bias.value.copy()) for lin in linears]
    model.to_device("gpu")
    opt = SGD(model.params(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    tmodel, srste_fn = torch_model(torch, host_weights)
    topt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    rng = np.random.default_rng(1)
    x_host = rng.standard_normal((BATCH, WIDTH)).astype(np.float32)                # (B, 4096)
    y_host = rng.integers(0, CLASSES, BATCH)
    x, y = cp.asarray(x_host), cp.asarray(y_host)
    xt, yt = torch.from_numpy(x_host).cuda(), torch.from_numpy(y_host).cuda()

    def nmref_step():
        logits = model.forward(x, train=True)                                      # (B, 10)
        loss, dlogits = softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        opt.step()
        return loss

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tmodel(xt), yt)                    # (,)
        loss.backward()
        topt.step()
        return loss

    # same computation: masks and losses of the first steps
    tlinears = [m for m in tmodel if isinstance(m, torch.nn.Linear)]
    check = []
    for step in range(3):
        before = [np.abs(to_host(lin.weight.value)) for lin in linears[:DEPTH]]     # |W| the masks are built from
        loss_n, loss_t = float(nmref_step()), float(torch_step().detach())
        differ = ties = 0
        for lin, tl, a in zip(linears[:DEPTH], tlinears[:DEPTH], before):
            bad = (to_host(lin.method.mask) != srste_fn.masks[tl.weight.data_ptr()].cpu().numpy()).reshape(-1, 4)
            groups = np.sort(a.reshape(-1, 4), axis=1)[bad.any(axis=1)]            # (groups that differ, 4)
            differ += int(bad.any(axis=1).sum())
            ties += int((groups[:, 1] == groups[:, 2]).sum())                       # kept/pruned boundary tie
        check.append((step, loss_n, loss_t, abs(loss_n - loss_t) / abs(loss_t), differ, ties))
    weight_rel = max(float(np.linalg.norm(to_host(lin.weight.value) - tl.weight.detach().cpu().numpy())
                           / np.linalg.norm(tl.weight.detach().cpu().numpy())) for lin, tl in zip(linears, tlinears))

    def timed(step, n):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        cp.cuda.Device().synchronize()
        torch.cuda.synchronize()
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        torch.cuda.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / n                             # ms per step

    for _ in range(3):
        nmref_step()
        torch_step()
    times = {"nmref": [], "torch": []}
    for _ in range(args.windows):                                                  # alternate the contenders
        times["nmref"].append(timed(nmref_step, args.steps))
        times["torch"].append(timed(torch_step, args.steps))

    w = cp.asarray(host_weights[0][0])
    mask_ms = []
    for _ in range(3):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(20):
            nm_mask(w, 2, 4)
        end.record()
        end.synchronize()
        mask_ms.append(cp.cuda.get_elapsed_time(start, end) / 20)

    med = {k: statistics.median(v) for k, v in times.items()}
    spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
    flop = DEPTH * 3 * 2 * BATCH * WIDTH * WIDTH + 3 * 2 * BATCH * WIDTH * CLASSES
    gpu = torch.cuda.get_device_name()
    lines = [f"# GPU training step, SR-STE 2:4 MLP: {gpu}, {datetime.datetime.now().isoformat(timespec='seconds')}", "",
             f"MLP {WIDTH}x{DEPTH} sparse + {CLASSES}-way dense head, batch {BATCH}, float32 without TF32, "
             f"SGD(momentum {MOMENTUM}, weight decay {WEIGHT_DECAY}); CuPy {cp.__version__}, PyTorch {torch.__version__}. "
             f"Median of {args.windows} windows of {args.steps} steps (CUDA events), alternating.", "",
             "| implementation | ms / step | spread | TFLOP/s (fp32) | vs PyTorch |", "| --- | ---: | ---: | ---: | ---: |"]
    for k in ("nmref", "torch"):
        lines.append(f"| {'nmref (CuPy)' if k == 'nmref' else 'PyTorch eager'} | {med[k]:.2f} | {100 * spread[k]:.1f}% | "
                     f"{flop / (med[k] * 1e-3) / 1e12:.1f} | {med['torch'] / med[k]:.2f}x |")
    lines += ["", f"nmref's 2:4 mask of one 4096x4096 weight (CuPy kernel): {statistics.median(mask_ms) * 1e3:.0f} us.",
              "", "Same computation (first 3 steps from the same weights and batch): step, loss nmref, loss PyTorch, "
              "relative difference, groups of 4 whose masks differ (of 12.6M), of them exact |w| ties at the "
              "kept/pruned boundary (PyTorch's GPU argsort does not promise nmref's tie rule):"]
    lines += [f"- {s}: {a:.6f} {b:.6f} {r:.1e} {d} {t}" for s, a, b, r, d, t in check]
    lines += [f"- largest relative weight difference after all steps: {weight_rel:.1e}",
              f"- target: nmref within 1.5x of PyTorch: {'met' if med['nmref'] <= 1.5 * med['torch'] else 'NOT met'} "
              f"({med['nmref'] / med['torch']:.2f}x the PyTorch time)"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
