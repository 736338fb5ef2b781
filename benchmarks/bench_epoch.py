"""One training epoch of the MNIST-1D 1D CNN (cnn1d, 40k samples, batch 128): nmref's training loop
(nmref.train.train, the train_time column: no evaluation) vs the same model and loop in PyTorch eager, both on
2 threads, alternating in one process, the same initial weights and batch order; dense and SR-STE 2:4.

    python benchmarks/bench_epoch.py [--repeats 3] [--threads 2] [--methods dense,srste] [--no-save]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP threads for both libraries")
parser.add_argument("--methods", default="dense,srste", help="comma-separated: dense, srste")
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--no-save", action="store_true")
ARGS = parser.parse_args() if __name__ == "__main__" else parser.parse_args([])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)                 # before NumPy / torch / Numba start their thread pools
os.environ["NMREF_FAST"] = "0"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save, table  # noqa: E402

from nmref.data import load  # noqa: E402
from nmref.optim import warmup_cosine  # noqa: E402
from nmref.train import TrainConfig, model_for, train  # noqa: E402

TARGET = 2.0
LAM = 2e-4


class SRSTEWeight(torch.autograd.Function):
    """W~ = E * W with the 2:4 magnitude mask along Cin (NHWC groups); dW = g + lam (1 - E) W."""

    @staticmethod
    def forward(ctx, w, n, m):
        cout, cin, k = w.shape
        groups = w.detach().permute(0, 2, 1).reshape(-1, m)                     # (Cout*k*Cin/m, m)
        pruned = torch.argsort(groups.abs(), dim=1, stable=True)[:, : m - n]
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(1, pruned, False)
        mask = keep.reshape(cout, k, cin).permute(0, 2, 1)                     # (Cout, Cin, k)
        ctx.save_for_backward(w, mask)
        return w * mask

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        return g + LAM * (~mask) * w, None, None


class SparseConv1d(torch.nn.Conv1d):
    def forward(self, x):
        return F.conv1d(x, SRSTEWeight.apply(self.weight, 2, 4), None, self.stride, self.padding)


def torch_cnn1d(sparse):
    """cnn1d in PyTorch: the convs nmref makes sparse (Cin divisible by 4) get SR-STE when ``sparse``."""
    nn = torch.nn
    conv = SparseConv1d if sparse else nn.Conv1d
    return nn.Sequential(
        nn.Conv1d(1, 32, 5, 1, 2, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
        conv(32, 64, 3, 2, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
        conv(64, 64, 3, 2, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Flatten(), nn.Linear(640, 10))


def torch_epoch(config, data, order):
    """One epoch of the nmref loop in PyTorch: same initial weights, batch order, SGD and lr schedule."""
    model = model_for(config, data.x_train.shape[1:])
    net = torch_cnn1d(config.method == "srste")
    net.load_state_dict({k: torch.from_numpy(p.value.copy()) for k, p in model.named_params().items()}, strict=False)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    total = -(-len(y) // config.batch_size)
    warmup = round(config.warmup_frac * total)
    loss_sum = 0.0
    start = time.perf_counter()
    for step, begin in enumerate(range(0, len(y), config.batch_size)):
        for group in opt.param_groups:
            group["lr"] = config.lr * warmup_cosine(step, total, warmup)
        idx = torch.from_numpy(order[begin: begin + config.batch_size])
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(idx)
    return time.perf_counter() - start, loss_sum / len(y)


def nmref_epoch(config):
    with tempfile.TemporaryDirectory() as out:
        row = train(config, out=out, overwrite=True)["final"]
    return row["train_time"], row["train_loss"]


def main(args=ARGS):
    torch.set_num_threads(args.threads)
    data = load("mnist1d")
    rows = []
    for method in args.methods.split(","):
        config = TrainConfig(method=method, epochs=1, batch_size=args.batch_size, progress=False).resolved()
        order = np.random.default_rng([config.seed, 1]).permutation(len(data.y_train))   # nmref's first epoch
        nmref_epoch(config)                                                              # warm-up (JIT, caches)
        times = {"nmref": [], "torch": []}
        losses = {}
        for _ in range(args.repeats):
            seconds, losses["nmref"] = nmref_epoch(config)
            times["nmref"].append(seconds)
            seconds, losses["torch"] = torch_epoch(config, data, order)
            times["torch"].append(seconds)
        ours, theirs = statistics.median(times["nmref"]), statistics.median(times["torch"])
        name = "dense" if method == "dense" else f"{method} 2:4"
        rows.append((name, ours, theirs, ours / theirs, TARGET, "yes" if ours / theirs <= TARGET else "NO",
                     f"{losses['nmref']:.4f} / {losses['torch']:.4f}"))
        print(f"{name}: nmref {ours:.2f} s, torch {theirs:.2f} s, ratio {ours / theirs:.2f}", flush=True)
    body = table(("cnn1d on MNIST-1D, 1 epoch (40k samples, batch 128)", "nmref s", "torch s", "nmref / torch",
                  "target", "within", "epoch train loss nmref / torch"), rows)
    notes = (f"Training part of one epoch (no evaluation): nmref.train.train (SAD tracking included for sparse "
             f"methods) vs the same loop in PyTorch eager (same initial weights, batch order, SGD momentum 0.9, "
             f"weight decay 5e-5, per-iteration warm-up + cosine lr). {args.threads} threads each "
             f"(torch.set_num_threads, OPENBLAS/OMP/NUMBA_NUM_THREADS); median of {args.repeats} alternating runs "
             "after one warm-up run. PyTorch's SR-STE: argsort mask per 4 along Cin + straight-through backward. "
             "The float32 losses differ by rounding amplified over the epoch (PyTorch's CPU BatchNorm reduces in "
             "float64); in float64 the two loops give the same weights to 1e-11 "
             "(tests/test_train.py::test_loop_matches_pytorch_in_float64).")
    print(body)
    if not args.no_save:
        print(save("epoch", "One training epoch: nmref vs PyTorch eager (CPU)", body, notes))


if __name__ == "__main__":
    main()
