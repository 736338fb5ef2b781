"""The figure pipeline end to end in the tiny mode (NMREF_FAST=1): files, CSV columns, cache, --only."""
import csv
import math

import pytest

from paper_figures import FIGURES, common, run_all, runner

EXPECTED_CSV = {
    "fig1_nm_illustration.csv": ["row", "col", "group", "pos_in_group", "weight", "kept", "value_col", "index"],
    "fig2_sad.csv": ["method", "pattern", "lam", "seed", "epoch", "sad_step", "sad_step_frac", "sad_final",
                     "sad_final_frac", "test_acc"],
    "fig2_sad_summary.csv": ["method", "seed", "step_sad_frac_last_half", "final_test_acc"],
    "fig3_lambda.csv": ["lam", "seed", "final_test_acc", "step_sad_frac_last_half", "sad_final_frac_mid"],
    "fig3_lambda_curves.csv": ["lam", "seed", "epoch", "sad_step_frac", "test_acc"],
    "fig4_accuracy.csv": ["method", "pattern", "seeds", "test_acc_mean", "test_acc_std", "drop_vs_dense",
                          "mean_forward_density", "paper_srste_r50_top1"],
    "fig4_accuracy_seeds.csv": ["method", "pattern", "seed", "final_test_acc", "mean_forward_density"],
    "fig5_lbc_removal.csv": ["epochs_done", "scheduled_alive", "alive_per_group", "forward_density", "is_nm",
                             "final_matches_topn_of_weights_now", "final_matches_topn_of_weights_now_by_chance"],
    "fig5_lbc_removal_scores.csv": ["group", "combination", "kept_positions", "epochs_done", "score",
                                    "alive_at_end"],
    "fig6_lbc_schedule.csv": ["t_f_fraction", "t_f_epoch", "power", "seed", "final_test_acc",
                              "mean_forward_density", "first_nm_epoch"],
    "fig6_lbc_schedule_curves.csv": ["t_f_fraction", "power", "seed", "epoch", "alive_per_group", "density",
                                     "test_acc"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    argv = ["--out", str(root / "out"), "--cache", str(root / "cache"), "--jobs", "1", "--no-progress"]
    return root, argv, run_all.run(argv)


def test_tiny_mode_is_used_under_pytest(first_run):
    assert first_run[2].mode == "tiny"


def test_every_expected_file_exists_with_its_columns(first_run):
    root, _, report = first_run
    out = root / "out"
    assert report.figures == list(FIGURES)
    assert report.trained == report.runs > 0
    for name in FIGURES:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000, png
    for file, columns in EXPECTED_CSV.items():
        header, rows = read_csv(out / file)
        assert header == columns, file
        assert rows, f"{file} has no rows"
    index = (out / "index.md").read_text()
    for name in FIGURES:
        assert f"({name}.png)" in index
        assert "Mode `tiny`" in index
    assert "nan" not in index.replace("nanosecond", "")


def test_accuracies_are_probabilities_and_sad_is_consistent(first_run):
    out = first_run[0] / "out"
    _, seeds = read_csv(out / "fig4_accuracy_seeds.csv")
    assert all(0.0 <= float(r["final_test_acc"]) <= 1.0 for r in seeds)
    _, table = read_csv(out / "fig4_accuracy.csv")
    assert {(r["method"], r["pattern"]) for r in table} == {("dense", "dense")} | {
        (m, p) for m in ("ste", "srste", "lbc") for p in common.PATTERNS}
    for row in table:                                       # STE / SR-STE train at exactly n/m density
        if row["method"] in ("ste", "srste"):
            n, m = (int(v) for v in row["pattern"].split(":"))
            assert math.isclose(float(row["mean_forward_density"]), n / m)
    _, rows = read_csv(out / "fig2_sad.csv")
    for r in rows:
        assert int(r["sad_step"]) >= 0 and 0.0 <= float(r["sad_step_frac"]) <= 1.0
        assert 0.0 <= float(r["sad_final_frac"]) <= 1.0
    last = [r for r in rows if int(r["epoch"]) == max(int(x["epoch"]) for x in rows)]
    assert all(int(r["sad_final"]) == 0 for r in last)      # the last epoch's mask is the final mask


def test_figure1_masks_keep_n_of_m(first_run):
    _, rows = read_csv(first_run[0] / "out" / "fig1_nm_illustration.csv")
    kept = {}
    for r in rows:
        kept.setdefault((r["row"], r["group"]), []).append(int(r["kept"]))
    assert all(sum(v) == 2 and len(v) == 4 for v in kept.values())


def test_second_run_trains_nothing_and_gives_the_same_numbers(first_run):
    root, argv, _ = first_run
    before = {f: (root / "out" / f).read_text() for f in EXPECTED_CSV}
    again = run_all.run(argv)
    assert again.trained == 0 and again.runs == first_run[2].runs
    assert {f: (root / "out" / f).read_text() for f in EXPECTED_CSV} == before


def test_only_draws_one_figure_from_the_cache(first_run, tmp_path):
    root, _, _ = first_run
    report = run_all.run(["--only", "fig2_sad", "--out", str(tmp_path), "--cache", str(root / "cache"),
                          "--no-progress"])
    assert report.figures == ["fig2_sad"] and report.trained == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["fig2_sad.csv", "fig2_sad.md", "fig2_sad.png", "fig2_sad_summary.csv", "index.md"]


def test_identical_runs_are_shared_across_figures():
    import paper_figures.fig2_sad as fig2
    import paper_figures.fig3_lambda as fig3
    import paper_figures.fig4_accuracy as fig4
    mode = common.pick_mode()
    srste = runner.run_key(common.spec(mode, "srste", "2:4", seed=0))
    for module in (fig2, fig3, fig4):
        assert srste in {runner.run_key(s) for s in module.runs(mode)}
    assert runner.run_key(common.spec(mode, "srste", "2:4", seed=0, lam=0.0)) == \
        runner.run_key(common.spec(mode, "ste", "2:4", seed=0))
    assert runner.run_key(common.spec(mode, "srste", "2:4", seed=1)) != srste
    assert runner.run_key(common.spec(mode, "srste", "2:4", seed=0, lam=2e-5)) != srste


def test_parallel_workers_give_the_serial_results(first_run, tmp_path):
    root, _, _ = first_run
    report = run_all.run(["--only", "fig2_sad", "--out", str(tmp_path), "--cache", str(tmp_path / "cache"),
                          "--jobs", "2", "--no-progress"])
    assert report.trained == report.runs > 1
    assert (tmp_path / "fig2_sad.csv").read_text() == (root / "out" / "fig2_sad.csv").read_text()


def test_bad_arguments_fail_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_all.run(["--jobs", "0", "--out", str(tmp_path)])
    assert "--jobs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_all.run(["--only", "fig9_nothing", "--out", str(tmp_path)])
    assert "fig9_nothing" in capsys.readouterr().err


def test_nmref_figures_cli_runs_the_package(first_run, tmp_path):
    from nmref import cli
    root, _, _ = first_run
    assert cli.main(["figures", "--only", "fig1_nm_illustration", "--out", str(tmp_path), "--cache",
                     str(root / "cache"), "--no-progress"]) == 0
    assert (tmp_path / "fig1_nm_illustration.png").read_bytes()[:8] == PNG_MAGIC


def test_nmref_figures_says_clearly_when_the_package_is_missing(monkeypatch, capsys):
    import sys
    from nmref import cli
    monkeypatch.setitem(sys.modules, "paper_figures.run_all", None)         # import fails
    assert cli.main(["figures"]) == 2
    err = capsys.readouterr().err
    assert "paper_figures" in err and "pip install -e" in err
