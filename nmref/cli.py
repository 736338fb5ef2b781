"""The ``nmref`` command: train, figures, and check / golden / export (from nmref.check)."""
import argparse
import dataclasses
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  nmref train                                       dense 1D CNN on MNIST-1D (generated locally, cached)
  nmref train --method srste --pattern 2:4          SR-STE, 2 of every 4 weights kept
  nmref train --method lbc --pattern 2:4 --label-smoothing 0.1
  nmref train --method ste --pattern 1:4 --epochs 20 --seed 1 --out runs/ste_1-4
  nmref train --out runs/dense && nmref train --method fixed --init-from runs/dense/checkpoint.npz
  nmref train --resume --out runs/ste_1-4           continue an interrupted run exactly
  nmref train --method srste --describe             which layers are sparse, then exit
  nmref train --dataset mnist --data-path ~/data/mnist --model cnn2d
  nmref check runs/ste_1-4/checkpoint.npz --pattern 1:4
  nmref figures                                     the paper figures, < 10 minutes on 2 cores

N:M means N weights kept of every M consecutive weights along the input axis (2:4 = 50% sparse).
"""

TRAIN_EPILOG = """\
run directory (--out, default runs/<dataset>_<model>_<method>[_n-m]_seed<seed>):
  metrics.jsonl, metrics.csv   one row per epoch: loss, accuracy, lr, density, SAD, LBC columns
  checkpoint.npz               the whole state after the last epoch; --resume continues bit for bit
  config.json, model.txt       the settings and the model's layer table

examples:
  nmref train --method srste --pattern 2:4 --lam 2e-4
  nmref train --method lbc --pattern 4:8 --t-f 5 --removal faithful
  nmref train --out runs/dense && nmref train --method fixed --init-from runs/dense/checkpoint.npz
  nmref train --resume --out runs/x
"""

METHOD_OPTIONS = {"lam": ("srste",), "fix_at": ("fixed",), "t_i": ("lbc",), "t_f": ("lbc",), "power": ("lbc",),
                  "removal": ("lbc",), "score_weight_decay": ("lbc",)}


def _pattern(text):
    from .masks import parse_pattern
    try:
        parsed = parse_pattern(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return f"{parsed.n_keep}:{parsed.m}"


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be an integer >= 1")
    return value


def add_train_parser(subparsers):
    from .data import DATASETS
    from .models import MODELS
    from .sparsity import METHODS
    from .train import SCHEDULES, TrainConfig
    d = TrainConfig()
    p = subparsers.add_parser(
        "train", help="train one model with a sparsity method; progress bar, metrics log, checkpoint",
        description="Train a model with dense weights or an N:M sparsity method (STE, SR-STE, fixed mask, LBC). "
                    "Unset options take the defaults shown (with --resume: the checkpoint's settings).",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS)
    what = p.add_argument_group("what to train")
    what.add_argument("--dataset", choices=DATASETS,
                      help=f"default {d.dataset} (generated locally; the others need --data-path)")
    what.add_argument("--data-path", metavar="PATH", help="MNIST: folder of the 4 IDX .gz files or mnist.npz; "
                                                          "CIFAR-10: the cifar-10-batches-py folder")
    what.add_argument("--train-samples", type=int, metavar="N", help="use the first N training samples (default all)")
    what.add_argument("--test-samples", type=int, metavar="N", help="use the first N test samples (default all)")
    what.add_argument("--model", choices=MODELS, help="default cnn1d for mnist1d, cnn2d otherwise")
    what.add_argument("--describe", action="store_true", help="print the model's layer table (which layers are "
                                                              "sparse, layout, method) and exit")
    sparse = p.add_argument_group("sparsity")
    sparse.add_argument("--method", choices=METHODS, help=f"default {d.method}")
    sparse.add_argument("--pattern", type=_pattern, metavar="N:M", help=f"N kept of every M (default {d.pattern})")
    sparse.add_argument("--lam", type=float, metavar="LAMBDA",
                        help=f"SR-STE decay lambda_W on pruned weights (default {d.lam:g})")
    sparse.add_argument("--layout", choices=("conv", "nchw_flatten"),
                        help="conv weight grouping: conv = along Cin at each kernel position (NHWC, default), "
                             "nchw_flatten = the SR-STE paper-era flatten")
    sparse.add_argument("--sparse-last", action="store_true", help="make the last Linear sparse too")
    sparse.add_argument("--strict-sparse", action="store_true",
                        help="fail when a layer cannot take the pattern instead of keeping it dense")
    sparse.add_argument("--fix-at", type=int, metavar="EPOCH",
                        help=f"fixed: epoch whose start fixes the mask, < epochs (default {d.fix_at})")
    sparse.add_argument("--init-from", metavar="CHECKPOINT", help="start from this checkpoint's weights "
                                                                  "(e.g. a dense run, for --method fixed)")
    sparse.add_argument("--t-i", type=int, metavar="EPOCH", help=f"LBC: first removal epoch (default {d.t_i})")
    sparse.add_argument("--t-f", type=float, metavar="EPOCH", help="LBC: epoch from which one combination per "
                                                                   "group is left, <= epochs - 1 (default half "
                                                                   "the run)")
    sparse.add_argument("--power", type=float, metavar="P",
                        help=f"LBC: removal schedule exponent (default {d.power:g})")
    sparse.add_argument("--removal", choices=("strict", "faithful"),
                        help="LBC: strict = removed combinations stay dead (default); faithful = the public code")
    sparse.add_argument("--score-weight-decay", type=float, metavar="WD", help="LBC: weight decay of the scores "
                                                                 f"(default {d.score_weight_decay:g})")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=_positive_int, metavar="N", help="default 10 (2 with NMREF_FAST=1)")
    opt.add_argument("--batch-size", type=_positive_int, metavar="N", help=f"default {d.batch_size}")
    opt.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr:g})")
    opt.add_argument("--momentum", type=float, metavar="MU", help=f"default {d.momentum:g}")
    opt.add_argument("--nesterov", action="store_true")
    opt.add_argument("--weight-decay", type=float, metavar="WD",
                     help=f"on all weights (default {d.weight_decay:g})")
    opt.add_argument("--warmup-frac", type=float, metavar="FRAC",
                     help="linear warm-up as a fraction of the steps (default 5/120)")
    opt.add_argument("--schedule", choices=SCHEDULES, help="after the warm-up, per iteration (default cosine)")
    opt.add_argument("--label-smoothing", type=float, metavar="EPS", help=f"default {d.label_smoothing:g}")
    opt.add_argument("--dtype", choices=("float32", "float64"), help="default float32; float64 to cross-check "
                                                                     "against another implementation")
    opt.add_argument("--seed", type=int, metavar="N", help=f"initial weights and shuffling (default {d.seed})")
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="run directory (default runs/<dataset>_<model>_<method>...)")
    run.add_argument("--device", choices=("cpu", "gpu"), help="gpu needs CuPy (default cpu)")
    run.add_argument("--resume", action="store_true", help="continue DIR/checkpoint.npz exactly")
    run.add_argument("--overwrite", action="store_true", help="start afresh even if DIR holds a run")
    run.add_argument("--checkpoint-every", type=_positive_int, metavar="EPOCHS", help="default 1")
    run.add_argument("--stop-after", type=_positive_int, metavar="EPOCHS",
                     help="stop after this many epochs (resume later with --resume)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run_train)
    return p


def config_from_args(args):
    """TrainConfig from the options given (the checkpoint's settings underneath with --resume)."""
    from .train import ConfigError, TrainConfig, read_checkpoint
    given = {k: v for k, v in vars(args).items() if k in {f.name for f in dataclasses.fields(TrainConfig)}}
    base = {}
    if given.get("resume"):
        out = given.get("out") or TrainConfig(**{k: v for k, v in given.items() if k != "out"}).default_out()
        checkpoint = Path(out) / "checkpoint.npz"
        if checkpoint.is_file():
            _, meta = read_checkpoint(checkpoint)
            base = {k: v for k, v in meta["config"].items() if k not in ("resume", "overwrite", "progress")}
    method = given.get("method", base.get("method", "dense"))
    for option, methods in METHOD_OPTIONS.items():
        if option in given and method not in methods:
            raise ConfigError(f"--{option.replace('_', '-')} applies to --method {'/'.join(methods)}, not {method}")
    if "pattern" in given and method == "dense":
        raise ConfigError("--pattern has no effect with --method dense; choose --method ste, srste, fixed or lbc")
    return TrainConfig(**{**base, **given})


def run_train(args):
    from .data import DataError
    from .train import ConfigError, train
    try:
        describing = getattr(args, "describe", False)
        config = config_from_args(args).resolved(need_data=not describing)
        if describing:
            return describe(config)
        result = train(config)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as exc:
        return _fail("train", exc)
    final = result["final"]
    if final is not None:
        print(f"test accuracy {final['test_acc']:.4f} after {final['epoch'] + 1} epochs; "
              f"run in {result['out']} (metrics.csv, metrics.jsonl, checkpoint.npz)")
    return 0


def describe(config):
    """Print the layer table of the configured model without loading data."""
    from .train import model_for
    shapes = {"mnist1d": (1, 40), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
    print(model_for(config, shapes[config.dataset]).describe())
    return 0


def run_figures(args):
    try:
        from paper_figures.run_all import main as figures_main
    except ImportError as exc:
        print(f"nmref figures: cannot import paper_figures ({exc}). `nmref figures` runs from a checkout of the "
              "repository installed with `pip install -e .` (the figure scripts live in paper_figures/ beside "
              "nmref/).", file=sys.stderr)
        return 2
    return figures_main(args.figure_args) or 0


def _fail(command, exc):
    print(f"nmref {command}: error: {exc}", file=sys.stderr)
    return 2


def build_parser():
    from . import __version__
    parser = argparse.ArgumentParser(
        prog="nmref", description="nmref: N:M structured sparsity training (SR-STE, LBC) in NumPy, the reference "
                                  "implementation. Run `nmref COMMAND --help` for a command's options.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nmref {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_train_parser(subparsers)
    figures = subparsers.add_parser(
        "figures", add_help=False, help="regenerate the small-scale paper figures into paper_figures/out/",
        description="Runs paper_figures.run_all; `nmref figures --help` lists its options.")
    figures.add_argument("figure_args", nargs=argparse.REMAINDER)
    figures.set_defaults(func=run_figures)
    try:
        from . import check
    except ImportError:
        check = None
    if check is not None and hasattr(check, "register_cli"):
        check.register_cli(subparsers)
    return parser


def main(argv=None):
    """Entry point of the ``nmref`` console script; returns the exit code (2 for bad arguments)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["figures"]:
            return run_figures(argparse.Namespace(figure_args=argv[1:]))  # its own options, --help included
        args = build_parser().parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:                     # `nmref check ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
