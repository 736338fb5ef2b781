"""The nmref command: help, fail-fast errors with exit code 2, a tiny train + resume, figures, check."""
import dataclasses
import json
import sys
import types

import pytest

from nmref.cli import main
from nmref.train import ConfigError, TrainConfig

TINY = ["--model", "mlp", "--epochs", "1", "--batch-size", "500", "--no-progress"]


def exit_code(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_help_has_examples(capsys):
    assert exit_code(["--help"]) == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "nmref train --method srste --pattern 2:4" in out
    for command in ("train", "figures", "check", "golden", "export"):
        assert command in out
    assert exit_code(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "checkpoint.npz" in out and "N kept of every M" in out


@pytest.mark.parametrize("argv, message", [
    (["train", "--model", "vgg"], "argument --model: invalid choice: 'vgg'"),
    (["train", "--method", "srste", "--pattern", "5:4"], "keeping N=5 of M=4 is impossible"),
    (["train", "--method", "srste", "--pattern", "2-4"], "is not of the form 'N:M'"),
    (["train", "--dataset", "cifar10"], "give --data-path"),
    (["train", "--dataset", "mnist", "--data-path", "/no/such/dir"], "data_path='/no/such/dir': no such file"),
    (["train", "--lam", "1e-3"], "--lam applies to --method srste, not dense"),
    (["train", "--pattern", "2:4"], "--pattern has no effect with --method dense"),
    (["train", "--method", "lbc", "--t-f", "-1"], "t_f=-1.0 must be > t_i=0"),
    (["train", "--epochs", "0"], "argument --epochs: 0 must be an integer >= 1"),
    (["train", "--method", "srste", "--strict-sparse", "--describe"], "cannot be made 2:4"),
    (["train", "--method", "ste", "--pattern", "2:3", "--describe"], "no layer can take the pattern 2:3"),
    (["train", "--method", "lbc", "--t-i", "5", "--epochs", "2", "--describe"], "t_i=5: must be < t_f"),
    (["train", "--method", "lbc", "--t-f", "1000", "--epochs", "2", "--describe"], "t_f=1000.0: must be <= epochs - 1"),
    (["train", "--method", "fixed", "--fix-at", "100", "--epochs", "2", "--describe"], "fix_at=100: must be < epochs"),
    (["train", "--seed", "-1", "--describe"], "seed=-1: must be an integer >= 0"),
    (["train", "--lr", "inf", "--describe"], "lr=inf: must be a finite number"),
    (["train", "--weight-decay", "inf", "--describe"], "weight_decay=inf: must be a finite number"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv, message):
    assert exit_code(argv) == 2
    assert message in capsys.readouterr().err


def test_diverging_run_is_one_line_exit_2(tmp_path, capsys):
    assert exit_code(["train", "--method", "srste", "--pattern", "2:4", "--lr", "1e6", "--no-progress", "--out",
                      str(tmp_path / "x")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("nmref train: error: training diverged at epoch 1, step ")
    assert captured.err.rstrip().endswith("lower --lr (lr=1e+06)") and captured.err.count("\n") == 1


def test_gpu_device_without_a_gpu_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    from nmref import train as train_mod
    monkeypatch.setattr(train_mod, "gpu_available", lambda: False)
    assert exit_code(["train", "--device", "gpu", "--no-progress", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmref train: error: device='gpu': no CUDA GPU") and "--device cpu" in err
    assert err.count("\n") == 1 and not (tmp_path / "x").exists()
    assert exit_code(["train", "--device", "gpu", "--describe"]) == 0      # the layer table needs no GPU
    assert capsys.readouterr().out.startswith("layer")


def test_missing_data_files_exit_2(tmp_path, capsys):
    (tmp_path / "mnist").mkdir()
    assert exit_code(["train", "--dataset", "mnist", "--data-path", str(tmp_path / "mnist"), "--out",
                      str(tmp_path / "run")]) == 2
    assert "train-images-idx3-ubyte.gz: no such file" in capsys.readouterr().err


def test_describe_needs_no_data_files(capsys):
    assert exit_code(["train", "--dataset", "mnist", "--model", "cnn2d", "--method", "srste", "--describe"]) == 0
    out = capsys.readouterr().out
    assert "conv" in out.lower() and " 32x1x3x3 " in out                       # MNIST: one input channel
    assert exit_code(["train", "--dataset", "cifar10", "--describe"]) == 0
    assert " 32x3x3x3 " in capsys.readouterr().out
    assert exit_code(["train", "--dataset", "mnist", "--model", "cnn2d", "--epochs", "1"]) == 2   # training does
    assert "--data-path" in capsys.readouterr().err


def test_describe_prints_the_layer_table(capsys):
    assert exit_code(["train", "--method", "lbc", "--pattern", "4:8", "--describe"]) == 0
    out = capsys.readouterr().out
    assert "LBC(4, 8" in out and "dense: Cin=1 is not divisible by m=8" in out


def test_train_resume_and_run_directory_errors(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert exit_code(["train", "--method", "srste", "--pattern", "2:4", "--epochs", "2", "--stop-after", "1",
                      "--out", out, *TINY[:2], *TINY[4:]]) == 0
    assert "test accuracy" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rows) == 1 and rows[0]["density"] == 0.5
    assert exit_code(["train", "--out", out, *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert exit_code(["train", "--resume", "--out", out, "--lr", "0.3"]) == 2
    assert "other settings (lr: 0.1 -> 0.3)" in capsys.readouterr().err
    assert exit_code(["train", "--resume", "--out", out, "--no-progress"]) == 0      # settings from the checkpoint
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert exit_code(["check", str(tmp_path / "run" / "checkpoint.npz"), "--pattern", "2:4"]) == 0
    assert exit_code(["train", "--resume", "--out", str(tmp_path / "nothing"), *TINY]) == 2
    assert "does not exist; run without --resume first" in capsys.readouterr().err


def test_figures_passes_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("paper_figures.run_all")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "paper_figures.run_all", fake)
    assert exit_code(["figures", "--only", "fig2_sad", "--help"]) == 0
    assert seen == [["--only", "fig2_sad", "--help"]]


def test_figures_outside_a_checkout_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "paper_figures", None)
    monkeypatch.setitem(sys.modules, "paper_figures.run_all", None)
    assert exit_code(["figures"]) == 2
    assert "pip install -e ." in capsys.readouterr().err


def test_progress_bar_and_epoch_lines(tmp_path, capsys):
    assert exit_code(["train", "--model", "mlp", "--method", "ste", "--pattern", "2:4", "--epochs", "1",
                      "--batch-size", "500", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert "mlp ste 2:4" in text and "lr=" in text and "acc=" in text
    assert "epoch 1/1: train loss" in text and "SAD epoch" in text


def test_closed_stdout_is_not_a_traceback(tmp_path):
    """`nmref check ... | head`: the reader leaving early must not end in a BrokenPipeError traceback."""
    import subprocess
    import sys
    from nmref.golden import write_golden
    write_golden(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "nmref.cli", "check", str(tmp_path / "masks.npz"),
                             "--pattern", "2:4", "--all-weights", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_train_and_test_sample_options(tmp_path, capsys):
    out = tmp_path / "subset"
    assert exit_code(["train", *TINY, "--train-samples", "600", "--test-samples", "100", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 2                                  # 600 samples in batches of 500
    assert exit_code(["train", *TINY, "--train-samples", "-3", "--out", str(tmp_path / "bad")]) == 2
    assert "train_samples=-3" in capsys.readouterr().err


def test_every_train_option_reaches_the_config():
    from nmref.cli import build_parser, config_from_args
    argv = ["train", "--dataset", "mnist", "--data-path", "d", "--train-samples", "300", "--test-samples", "50",
            "--model", "mlp", "--method", "lbc", "--pattern", "4:8", "--layout", "nchw_flatten", "--sparse-last",
            "--strict-sparse", "--init-from", "c.npz", "--t-i", "1", "--t-f", "2.5", "--power", "4", "--removal",
            "faithful", "--score-weight-decay", "0.01", "--epochs", "7", "--batch-size", "32", "--lr", "0.05",
            "--momentum", "0.8", "--nesterov", "--weight-decay", "1e-4", "--warmup-frac", "0.1", "--schedule",
            "step", "--label-smoothing", "0.1", "--dtype", "float64", "--seed", "3", "--out", "o", "--device",
            "gpu", "--overwrite", "--checkpoint-every", "2", "--stop-after", "3", "--no-progress"]
    config = config_from_args(build_parser().parse_args(argv))
    assert dataclasses.asdict(config) == {**dataclasses.asdict(TrainConfig()), **{
        "dataset": "mnist", "data_path": "d", "train_samples": 300, "test_samples": 50, "model": "mlp",
        "method": "lbc", "pattern": "4:8", "layout": "nchw_flatten", "sparse_last": True, "strict_sparse": True,
        "init_from": "c.npz", "t_i": 1, "t_f": 2.5, "power": 4.0, "removal": "faithful", "score_weight_decay": 0.01,
        "epochs": 7, "batch_size": 32, "lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 1e-4,
        "warmup_frac": 0.1, "schedule": "step", "label_smoothing": 0.1, "dtype": "float64", "seed": 3, "out": "o",
        "device": "gpu", "overwrite": True, "checkpoint_every": 2, "stop_after": 3, "progress": False}}
    for method, option, field, value in (("srste", "--lam", "lam", 1e-3), ("fixed", "--fix-at", "fix_at", 2)):
        args = build_parser().parse_args(["train", "--method", method, option, str(value)])
        assert getattr(config_from_args(args), field) == value
    for option, value in (("--score-weight-decay", "0.01"), ("--t-f", "2"), ("--lam", "1e-3")):
        with pytest.raises(ConfigError, match=option):                       # a method option of another method
            config_from_args(build_parser().parse_args(["train", "--method", "fixed", option, value]))


def test_resume_takes_every_setting_from_the_checkpoint(tmp_path):
    from nmref.cli import build_parser, config_from_args
    out = str(tmp_path / "run")
    assert exit_code(["train", "--model", "mlp", "--method", "ste", "--pattern", "1:4", "--epochs", "3",
                      "--stop-after", "1", "--batch-size", "500", "--lr", "0.05", "--no-progress", "--out", out]) == 0
    config = config_from_args(build_parser().parse_args(["train", "--resume", "--out", out]))
    assert (config.epochs, config.lr, config.method, config.pattern, config.model, config.batch_size) == \
        (3, 0.05, "ste", "1:4", "mlp", 500)
