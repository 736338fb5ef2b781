"""Figure 2: STE vs SR-STE at 2:4: SAD over training (step-to-step flips, and vs the final mask) and test
accuracy over training (SR-STE Zhou et al. 2021, the SAD figure)."""
import sys

import numpy as np

from . import common

NAME = "fig2_sad"
TITLE = "Figure 2: STE vs SR-STE (2:4): sparse architecture divergence and accuracy over training"
METHODS = ("ste", "srste")
COLUMNS = ("method", "pattern", "lam", "seed", "epoch", "sad_step", "sad_step_frac", "sad_final", "sad_final_frac",
           "test_acc")
SUMMARY_COLUMNS = ("method", "seed", "step_sad_frac_last_half", "final_test_acc")


def configs(mode):
    return {method: [common.spec(mode, method, "2:4", seed=s) for s in mode.seeds] for method in METHODS}


def runs(mode):
    return [c for cs in configs(mode).values() for c in cs]


def make(mode, results, out_dir):
    plt = common.setup_matplotlib()
    groups = {method: [results(c) for c in cs] for method, cs in configs(mode).items()}
    rows, summary = [], []
    for method, runs_ in groups.items():
        for run in runs_:
            for i, row in enumerate(run.history):
                rows.append({"method": method, "pattern": "2:4", "lam": run.config["lam"] if method == "srste" else 0.0,
                             "seed": run.config["seed"], "epoch": i + 1,
                             **{k: row[k] for k in COLUMNS[5:]}})
            summary.append({"method": method, "seed": run.config["seed"],
                            "step_sad_frac_last_half": common.last_half(run.column("sad_step_frac")),
                            "final_test_acc": run.final("test_acc")})
    csv = common.write_csv(out_dir / f"{NAME}.csv", rows, COLUMNS)
    csv_summary = common.write_csv(out_dir / f"{NAME}_summary.csv", summary, SUMMARY_COLUMNS)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method, runs_ in groups.items():
        epochs = np.arange(1, len(runs_[0].history) + 1)
        color, lab = common.COLORS[method], common.LABELS[method]
        common.band(axes[0], epochs, 100 * common.stack(runs_, "sad_step_frac"), color, lab, log=True)
        common.band(axes[1], epochs, 100 * common.stack(runs_, "sad_final_frac"), color, lab)
        common.band(axes[2], epochs, 100 * common.stack(runs_, "test_acc"), color, lab)
    axes[0].axvspan(len(epochs) / 2 + 0.5, len(epochs) + 0.5, color="grey", alpha=0.08, label="last half")
    axes[0].set(title="(a) step-to-step SAD: mean weights flipping per step", xlabel="epoch",
                ylabel="flips per step (% of sparse weights, log)")
    axes[1].set(title="(b) SAD vs the final mask (end of each epoch)", xlabel="epoch",
                ylabel="weights differing from final mask (%)")
    axes[2].set(title="(c) test accuracy", xlabel="epoch", ylabel="test accuracy (%)")
    for ax in axes:
        ax.legend()
    fig.suptitle(f"STE vs SR-STE (lambda_W = 2e-4), 2:4, MNIST-1D cnn1d: mean (line) and min-max (band) over "
                 f"{len(mode.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    png = common.save_png(fig, out_dir / f"{NAME}.png")
    common.write_fragment(out_dir, NAME, TITLE, [png], [csv, csv_summary], caption(mode, groups, summary))
    return [png, csv, csv_summary]


def caption(mode, groups, summary):
    late = {m: np.array([s["step_sad_frac_last_half"] for s in summary if s["method"] == m]) for m in METHODS}
    acc = {m: np.array([s["final_test_acc"] for s in summary if s["method"] == m]) for m in METHODS}
    ratio = late["srste"].mean() / late["ste"].mean()
    per_seed = int((late["srste"] < late["ste"]).sum())
    holds = ratio < 1 and per_seed == len(late["ste"])
    verdict = ("reproduces for SAD: SR-STE's step-to-step SAD is below STE's in the last half of training in every "
               "seed" if holds else "does NOT reproduce cleanly for SAD at this scale: SR-STE's step-to-step SAD is "
               f"below STE's in only {per_seed} of {len(late['ste'])} seeds")
    diff = acc["srste"].mean() - acc["ste"].mean()
    noise = common.noise(common.mean_std(acc["ste"])[1], common.mean_std(acc["srste"])[1])
    acc_verdict = ("reproduces" if diff > noise else "does not reproduce here (SR-STE is lower)" if diff < -noise
                   else "is not shown at this scale")
    return (
        f"{common.runs_note(mode, [r for rs in groups.values() for r in rs])} "
        f"(a) step-to-step SAD (`sad_step_frac`): flips between the masks of consecutive steps, summed over each "
        f"epoch and divided by weights x steps; (b) SAD of each epoch's last mask vs the final mask; (c) test "
        f"accuracy. Mean over the last half of training, step-to-step SAD is "
        f"{_pct(late['ste'])} "
        f"of the sparse weights per step for STE and {_pct(late['srste'])} for SR-STE (ratio SR-STE/STE "
        f"{ratio:.2f}). The paper's claim (SR-STE lowers SAD, i.e. a more stable mask, and improves accuracy) "
        f"{verdict}. Final test accuracy: STE {common.pm(*common.mean_std(acc['ste']), scale=100)} %, SR-STE "
        f"{common.pm(*common.mean_std(acc['srste']), scale=100)} %; "
        f"{common.versus(acc['srste'], acc['ste'], 'SR-STE', 'STE')}: the accuracy half of the claim "
        f"{acc_verdict}. "
        f"{common.decay_note(groups['srste'][0], groups['srste'][0].config['lam'])}")


def _pct(values):
    return common.pm(*common.mean_std(values), digits=3, scale=100) + " %"


def main(argv=None):
    from .run_all import main as run_all_main
    return run_all_main([*(sys.argv[1:] if argv is None else argv), "--only", NAME])


if __name__ == "__main__":
    sys.exit(main())
