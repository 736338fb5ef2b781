"""One full training step (forward, cross-entropy, backward, SGD momentum step), nmref vs PyTorch eager on
the CPU, both on the same number of threads (2 by default), alternating in one process; median of several runs.

    python benchmarks/bench_train_step.py [--repeats 15] [--threads 2] [--no-save]
"""
import argparse
import os
import sys
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=15)
parser.add_argument("--warmup", type=int, default=3)
parser.add_argument("--threads", type=int, default=2, help="BLAS / OpenMP threads for both libraries")
parser.add_argument("--no-save", action="store_true")
ARGS = parser.parse_args() if __name__ == "__main__" else parser.parse_args([])
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)                 # before NumPy / torch start their thread pools

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import alternate, save, table  # noqa: E402

from nmref.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential  # noqa: E402
from nmref.losses import softmax_cross_entropy  # noqa: E402
from nmref.optim import SGD  # noqa: E402

BATCH = 128
TARGETS = {"MLP 784-512-512-10": 1.3, "CNN 32x32x3 (conv32-pool-conv64-pool-fc10)": 2.5}


def mlp(rng):
    ours = Sequential(Linear(784, 512, rng=rng), ReLU(), Linear(512, 512, rng=rng), ReLU(), Linear(512, 10, rng=rng))
    theirs = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512),
                                 torch.nn.ReLU(), torch.nn.Linear(512, 10))
    return ours, theirs, (BATCH, 784)


def cnn(rng):
    ours = Sequential(Conv2d(3, 32, 3, padding=1, rng=rng), ReLU(), MaxPool2d(2),
                      Conv2d(32, 64, 3, padding=1, rng=rng), ReLU(), MaxPool2d(2), Flatten(),
                      Linear(64 * 8 * 8, 10, rng=rng))
    nn = torch.nn
    theirs = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(64 * 8 * 8, 10))
    return ours, theirs, (BATCH, 3, 32, 32)


def steps(ours, theirs, x, labels):
    """The two training-step closures, starting from the same weights."""
    torch_params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, p in ours.named_params().items():
            torch_params[name].copy_(torch.from_numpy(p.value))
    opt = SGD(ours.params(), lr=0.01, momentum=0.9)
    torch_opt = torch.optim.SGD(theirs.parameters(), lr=0.01, momentum=0.9)
    xt, labels_t = torch.from_numpy(x), torch.from_numpy(labels)
    losses = {}

    def ours_step():
        loss, dlogits = softmax_cross_entropy(ours.forward(x), labels)
        ours.backward(dlogits, input_grad=False)      # torch skips dL/dx too: x needs no grad
        opt.step()
        losses.setdefault("nmref", float(loss))

    def torch_step():
        torch_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(theirs(xt), labels_t)
        loss.backward()
        torch_opt.step()
        losses.setdefault("torch", loss.item())

    return ours_step, torch_step, losses


def main(args=ARGS):
    torch.set_num_threads(args.threads)
    rows = []
    for (name, target), build in zip(TARGETS.items(), (mlp, cnn)):
        rng = np.random.default_rng(0)
        ours, theirs, shape = build(rng)
        x = rng.standard_normal(shape).astype(np.float32)
        labels = rng.integers(0, 10, BATCH)
        ours_step, torch_step, losses = steps(ours, theirs, x, labels)
        median = alternate({"nmref": ours_step, "torch": torch_step}, args.repeats, args.warmup)
        first_loss_gap = abs(losses["nmref"] - losses["torch"]) / abs(losses["torch"])
        ratio = median["nmref"] / median["torch"]
        rows.append([name, median["nmref"] * 1e3, median["torch"] * 1e3, ratio, target,
                     "yes" if ratio <= target else "no", f"{first_loss_gap:.1e}"])
    body = table(["model (batch 128, float32)", "nmref ms", "torch ms", "nmref / torch", "target",
                  "within", "first-step loss rel. diff"], rows)
    print(body)
    if not args.no_save:
        notes = (f"One step = forward, softmax cross-entropy, backward, SGD(momentum 0.9) step. Both on "
                 f"{args.threads} thread(s) (torch.set_num_threads, OPENBLAS/OMP_NUM_THREADS), runs alternating "
                 f"in one process, median of {args.repeats} after {args.warmup} warm-up steps each.")
        name = "train_step" if args.threads == 2 else f"train_step_{args.threads}threads"
        print("saved", save(name, f"Training step: nmref vs PyTorch eager (CPU, {args.threads} threads)", body, notes))


if __name__ == "__main__":
    main()
