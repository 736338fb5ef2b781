"""Final test accuracy and wall time of `nmref train` with its defaults: the 1D CNN on MNIST-1D (40k training
samples, 10k test), default epochs and recipe; dense by default, other methods with --methods.

    python benchmarks/bench_accuracy_cnn1d.py [--methods dense,srste] [--seeds 0] [--epochs N] [--no-save]
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--methods", default="dense", help="comma-separated methods (2:4 for the sparse ones)")
parser.add_argument("--seeds", default="0", help="comma-separated seeds")
parser.add_argument("--epochs", type=int, default=None, help="default: nmref train's (10)")
parser.add_argument("--no-save", action="store_true")
ARGS = parser.parse_args() if __name__ == "__main__" else parser.parse_args([])
os.environ["NMREF_FAST"] = "0"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, save, table  # noqa: E402

from nmref.train import TrainConfig, train  # noqa: E402

TARGET = 0.95


def main(args=ARGS):
    rows = []
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            config = TrainConfig(method=method, seed=seed, epochs=args.epochs, progress=False)
            load_before = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as out:
                start = time.perf_counter()
                result = train(config, out=out)
                wall = time.perf_counter() - start
            c, final = result["config"], result["final"]
            epoch_times = [row["epoch_time"] for row in result["history"]]
            name = method if method == "dense" else f"{method} {c['pattern']}"
            best = max(r["test_acc"] for r in result["history"])
            rows.append((name, seed, c["epochs"], c["batch_size"], f"{100 * final['test_acc']:.2f}",
                         f"{100 * best:.2f}",
                         "yes" if final["test_acc"] >= TARGET else "NO", f"{wall:.0f}", f"{min(epoch_times):.1f}",
                         f"{load_before:.1f} -> {os.getloadavg()[0]:.1f}"))
            print(rows[-1], flush=True)
    body = table(("method", "seed", "epochs", "batch", "final test acc %", "best epoch %", ">= 95%", "wall s",
                  "fastest epoch s", "load average (1 min) before -> after"), rows)
    notes = ("`nmref train` defaults (cnn1d, SGD lr 0.1 momentum 0.9 weight decay 5e-5, 5/120 linear warm-up then "
             "cosine per iteration); wall time includes data loading (cached), evaluation each epoch and checkpoints. "
             f"Machine: {machine()}. The machine is shared: the load average column says how busy it was.")
    print(body)
    if not args.no_save:
        print(save("accuracy_cnn1d", "1D CNN on MNIST-1D: test accuracy and wall time of `nmref train`", body, notes))


if __name__ == "__main__":
    main()
