"""The figure pipeline end to end in the tiny mode (NMREF_FAST=1): files, CSV columns, cache, --only."""
import csv
import json
import math

import numpy as np
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


# ---- the numbers in the CSVs, recomputed from the cached runs (mutation audit, round 2) ---------------------------
def _cached(first_run, spec):
    return runner.load(runner.run_key(spec), first_run[0] / "cache")


def test_statistics_helpers():
    assert common.last_half([1.0, 2.0, 3.0, 4.0]) == 3.5                      # the last half, not the first
    assert common.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)                    # sample std (ddof=1) over seeds
    assert math.isnan(common.mean_std([0.5])[1])
    # the larger of the two stds is the noise: a difference of 0.1 is within a std of 0.2
    assert "within" in common.versus([0.8, 1.2], [1.1, 1.1], "a", "b")
    assert "beyond" in common.versus([1.0, 1.0], [0.5, 0.5], "a", "b")


def test_lr_sum_counts_the_last_partial_batch():
    # 1000 samples in batches of 256: 4 steps per epoch (the last one of 232 samples), 8 in 2 epochs
    assert common.lr_sum(1000, 256, 2, 0.0, 0.1, "constant") == pytest.approx(0.8)


def test_run_specs_carry_the_mode_and_the_method_options():
    import paper_figures.fig6_lbc_schedule as fig6
    tiny = common.MODES["tiny"]
    s = common.spec(tiny, "srste", "2:4")
    assert s["lam"] == 2e-4                                                   # SR-STE's paper value by default
    assert (s["train_samples"], s["test_samples"], s["epochs"]) == (256, 256, 2)
    for (frac, power), specs in fig6.configs(tiny).items():                   # every ablation setting reaches the run
        config = runner.full_config(specs[0])
        assert config["power"] == power and config["t_f"] in (None, fig6.t_f_epoch(frac, tiny))


def test_the_cache_key_depends_on_the_data_mode(monkeypatch):
    s = common.spec(common.MODES["quick"], "ste", "2:4")
    monkeypatch.setenv("NMREF_FAST", "1")
    tiny_data = runner.run_key(s)
    monkeypatch.setenv("NMREF_FAST", "0")
    assert runner.run_key(s) != tiny_data                                     # tiny data is not the real data


def test_final_is_the_last_epoch_not_the_best(tmp_path):
    history = [{"test_acc": 0.5}, {"test_acc": 0.9}, {"test_acc": 0.7}]
    (tmp_path / "run.json").write_text(json.dumps({
        "config": {}, "history": history, "seconds": 1.0, "cpu_seconds": 1.0, "layers": {}, "n_train": 1,
        "n_test": 1}))
    np.savez(tmp_path / "arrays.npz", x=np.zeros(1))
    run = runner.RunResult(tmp_path)
    assert run.final("test_acc") == 0.7 and list(run.column("test_acc")) == [0.5, 0.9, 0.7]


def test_figure1_table_positions_and_the_pruned_to_kept_ratio(first_run):
    import paper_figures.fig1_nm_illustration as fig1
    _, rows = read_csv(first_run[0] / "out" / "fig1_nm_illustration.csv")
    for r in rows:
        col, kept = int(r["col"]), int(r["kept"])
        assert (int(r["group"]), int(r["pos_in_group"])) == (col // 4, col % 4)
        assert int(r["index"]) == (int(r["pos_in_group"]) if kept else -1)
        if kept:                                                              # its slot among the row's kept values
            before = sum(int(x["kept"]) for x in rows if x["row"] == r["row"] and int(x["col"]) < col)
            assert int(r["value_col"]) == before

    class Run:
        layers = {"fc": {"weight": "fc.weight", "layout": "linear"}}
        arrays = {"param/fc.weight": np.array([[4.0, 1.0, 2.0, 8.0]])}       # kept 4, 8; pruned 1, 2
    assert fig1.pruned_to_kept(Run(), "fc", 2, 4) == pytest.approx(1.5 / 6.0)


def test_figure2_and_3_rows_are_the_runs_histories(first_run):
    import paper_figures.fig2_sad as fig2
    import paper_figures.fig3_lambda as fig3
    mode = common.pick_mode()
    out = first_run[0] / "out"
    _, rows = read_csv(out / "fig2_sad.csv")
    _, summary = read_csv(out / "fig2_sad_summary.csv")
    for method, specs in fig2.configs(mode).items():
        for s in specs:
            run = _cached(first_run, s)
            mine = [r for r in rows if r["method"] == method and int(r["seed"]) == s["seed"]]
            assert [int(r["epoch"]) for r in mine] == list(range(1, len(run.history) + 1))
            assert all(float(r["lam"]) == (2e-4 if method == "srste" else 0.0) for r in mine)
            for r, h in zip(mine, run.history):
                assert int(r["sad_step"]) == h["sad_step"] and float(r["test_acc"]) == h["test_acc"]
            row = next(r for r in summary if r["method"] == method and int(r["seed"]) == s["seed"])
            late = run.column("sad_step_frac")[len(run.history) // 2:]
            assert float(row["step_sad_frac_last_half"]) == pytest.approx(late.mean())
            assert float(row["final_test_acc"]) == run.history[-1]["test_acc"]
    _, rows = read_csv(out / "fig3_lambda.csv")
    for lam, specs in fig3.configs(mode).items():
        for s in specs:
            run = _cached(first_run, s)
            row = next(r for r in rows if float(r["lam"]) == lam and int(r["seed"]) == s["seed"])
            half = len(run.history) // 2                                     # after epoch E/2 (1-based)
            assert float(row["sad_final_frac_mid"]) == run.history[half - 1]["sad_final_frac"]


def test_figure4_table_is_in_fractions_with_the_drop_signed(first_run):
    import paper_figures.fig4_accuracy as fig4
    out = first_run[0] / "out"
    _, table = read_csv(out / "fig4_accuracy.csv")
    by = {(r["method"], r["pattern"]): r for r in table}
    dense = float(by[("dense", "dense")]["test_acc_mean"])
    for (method, pattern), specs in fig4.configs(common.pick_mode()).items():
        row, runs = by[(method, pattern)], [_cached(first_run, s) for s in specs]
        assert float(row["drop_vs_dense"]) == pytest.approx(float(row["test_acc_mean"]) - dense)
        assert float(row["paper_srste_r50_top1"]) == fig4.PAPER_SRSTE_R50[pattern] / 100
        densities = [np.nanmean(r.column("density")) if method != "dense" else 1.0 for r in runs]
        assert float(row["mean_forward_density"]) == pytest.approx(np.mean(densities))
    md = (out / "fig4_accuracy_table.md").read_text()
    for pattern, sparsity in (("2:4", 50), ("4:8", 50), ("1:4", 75), ("2:8", 75)):
        assert f"| {pattern} | {sparsity} % |" in md


def test_figure5_schedule_alive_counts_and_agreement(first_run):
    import paper_figures.fig5_lbc_removal as fig5
    from nmref.groups import to_groups
    from nmref.lbc import removal_schedule
    from nmref.masks import nm_mask
    run = _cached(first_run, fig5.runs(common.pick_mode())[0])
    _, rows = read_csv(first_run[0] / "out" / "fig5_lbc_removal.csv")
    epochs, c = len(run.history), 6
    t_f = run.config["t_f"] or epochs / 2
    assert [int(r["epochs_done"]) for r in rows] == list(range(epochs + 1))
    # after e epochs the removal of epoch e - 1 is the last applied: C - k(e - 1) alive (C before any)
    want = [c] + [c - removal_schedule(e, c, 0, t_f, 3) for e in range(epochs)]
    assert [int(r["scheduled_alive"]) for r in rows] == want
    assert [float(r["alive_per_group"]) for r in rows] == want                 # strict removal follows it exactly
    layer, info = next(iter(run.layers.items()))
    final = to_groups(run.arrays[f"mask/{layer}"], 4, info["layout"])
    for r, w in zip(rows, run.arrays[f"lbc/{layer}/weight"]):                  # fraction of GROUPS agreeing
        agree = (to_groups(nm_mask(w, 2, 4, info["layout"]), 4, info["layout"]) == final).all(axis=1).mean()
        assert float(r["final_matches_topn_of_weights_now"]) == pytest.approx(agree)
    _, scores = read_csv(first_run[0] / "out" / "fig5_lbc_removal_scores.csv")
    for r in scores:
        if int(r["epochs_done"]) == epochs:
            assert int(r["alive_at_end"]) == (float(r["score"]) != 0)
    for g in {r["group"] for r in scores}:
        assert sum(int(r["alive_at_end"]) for r in scores if r["group"] == g and int(r["epochs_done"]) == 0) == 1


def test_figure6_first_nm_epoch_is_one_based(first_run):
    import paper_figures.fig6_lbc_schedule as fig6
    _, rows = read_csv(first_run[0] / "out" / "fig6_lbc_schedule.csv")
    for (frac, power), specs in fig6.configs(common.pick_mode()).items():
        for s in specs:
            run = _cached(first_run, s)
            row = next(r for r in rows if (float(r["t_f_fraction"]), int(r["power"]), int(r["seed"]))
                       == (frac, power, s["seed"]))
            first = int(row["first_nm_epoch"])
            assert run.history[first - 1]["is_nm"] == 1
            assert all(h["is_nm"] != 1 for h in run.history[:first - 1])
