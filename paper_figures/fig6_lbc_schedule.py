"""Figure 6: LBC removal-schedule ablation at 2:4: t_f (the epoch removal ends, as a fraction of the run) and
the schedule's power p: final accuracy, mean forward density, alive combinations over training."""
import sys

import numpy as np

from . import common

NAME = "fig6_lbc_schedule"
TITLE = "Figure 6: LBC (2:4) removal schedule ablation: end of removal t_f and power p"
PATTERN = "2:4"
T_F_FRACTIONS = (0.25, 0.5, 0.75)
POWERS = (1, 3)
COLUMNS = ("t_f_fraction", "t_f_epoch", "power", "seed", "final_test_acc", "mean_forward_density",
           "first_nm_epoch")
CURVE_COLUMNS = ("t_f_fraction", "power", "seed", "epoch", "alive_per_group", "density", "test_acc")


def settings():
    return [(f, p) for f in T_F_FRACTIONS for p in POWERS]


def t_f_epoch(frac, mode):
    """t_f for a fraction of the run, at most the last epoch (epochs - 1): a later t_f would end the run before
    one combination per group is left, which nmref.train refuses (only the tiny mode's 0.75 x 2 epochs hits it)."""
    return min(frac * mode.epochs, float(mode.epochs - 1))


def configs(mode):
    out = {}
    for frac, power in settings():
        options = {} if (frac, power) == (0.5, 3) else {"t_f": t_f_epoch(frac, mode), "power": power}
        out[(frac, power)] = [common.spec(mode, "lbc", PATTERN, seed=s, **options) for s in mode.sweep_seeds]
    return out


def runs(mode):
    return [c for cs in configs(mode).values() for c in cs] + reference(mode)


def reference(mode):
    return [common.spec(mode, "srste", PATTERN, seed=s) for s in mode.sweep_seeds]


def first_nm_epoch(run):
    hits = [i + 1 for i, v in enumerate(run.column("is_nm")) if v == 1]
    return hits[0] if hits else -1


def make(mode, results, out_dir):
    plt = common.setup_matplotlib()
    groups = {key: [results(c) for c in cs] for key, cs in configs(mode).items()}
    srste = [results(c) for c in reference(mode)]
    rows, curves = [], []
    for (frac, power), runs_ in groups.items():
        for run in runs_:
            rows.append({"t_f_fraction": frac, "t_f_epoch": t_f_epoch(frac, mode), "power": power,
                         "seed": run.config["seed"], "final_test_acc": run.final("test_acc"),
                         "mean_forward_density": float(np.nanmean(run.column("density"))),
                         "first_nm_epoch": first_nm_epoch(run)})
            curves += [{"t_f_fraction": frac, "power": power, "seed": run.config["seed"], "epoch": i + 1,
                        "alive_per_group": r["alive_per_group"], "density": r["density"],
                        "test_acc": r["test_acc"]} for i, r in enumerate(run.history)]
    csv = common.write_csv(out_dir / f"{NAME}.csv", rows, COLUMNS)
    csv_curves = common.write_csv(out_dir / f"{NAME}_curves.csv", curves, CURVE_COLUMNS)
    stats = {key: {s: common.mean_std([r[key] for r in rows if (r["t_f_fraction"], r["power"]) == s])
                   for s in settings()} for key in ("final_test_acc", "mean_forward_density")}
    srste_acc = common.mean_std([r.final("test_acc") for r in srste])

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = np.arange(len(T_F_FRACTIONS))
    width = 0.38
    for j, power in enumerate(POWERS):
        color = ("tab:olive", "tab:green", "darkgreen")[j % 3]
        for ax, key in ((axes[0], "final_test_acc"), (axes[1], "mean_forward_density")):
            mean = np.array([stats[key][(f, power)][0] for f in T_F_FRACTIONS]) * 100
            std = np.nan_to_num(np.array([stats[key][(f, power)][1] for f in T_F_FRACTIONS])) * 100
            if key == "final_test_acc":          # points: the accuracy axis is zoomed, bars would misstate ratios
                ax.errorbar(x + (j - 0.5) * width / 2, mean, yerr=std, fmt="o", ms=6, capsize=3, color=color,
                            label=f"LBC, p = {power}")
            else:
                ax.bar(x + (j - 0.5) * width, mean, width, yerr=std, capsize=3, color=color,
                       label=f"LBC, p = {power}")
    axes[0].axhline(100 * srste_acc[0], color=common.COLORS["srste"], lw=1.5, label="SR-STE 2:4 (mean)")
    axes[0].margins(x=0.15, y=0.25)
    axes[1].axhline(50, color="black", ls=":", label="N/M = 50 %")
    for ax, title, ylabel in ((axes[0], "(a) final test accuracy", "final test accuracy (%)"),
                              (axes[1], "(b) mean forward density over training (cost)",
                               "mean forward density (%)")):
        ax.set_xticks(x, [f"{f:g} x epochs" for f in T_F_FRACTIONS])
        ax.set(title=title, xlabel="end of removal t_f (fraction of the run)", ylabel=ylabel)
        ax.legend(loc="best" if ax is axes[0] else "lower right")
    styles = {1: ":", 3: "-"}
    for (frac, power), runs_ in groups.items():
        epochs = np.arange(1, len(runs_[0].history) + 1)
        color = {0.25: "tab:red", 0.5: "tab:green", 0.75: "tab:blue"}[frac]
        axes[2].plot(epochs, common.stack(runs_, "alive_per_group").mean(axis=0), styles.get(power, "--"),
                     color=color, label=f"t_f = {frac:g}, p = {power}")
    axes[2].set(title="(c) alive combinations per group", xlabel="epoch", ylabel="alive combinations (mean)")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"LBC {PATTERN} removal schedule on MNIST-1D cnn1d, {mode.epochs} epochs, "
                 f"{len(mode.sweep_seeds)} seed(s): mean ± std", fontsize=10)
    fig.tight_layout()
    png = common.save_png(fig, out_dir / f"{NAME}.png")
    common.write_fragment(out_dir, NAME, TITLE, [png], [csv, csv_curves], caption(mode, groups, stats, srste_acc))
    return [png, csv, csv_curves]


def caption(mode, groups, stats, srste_acc):
    acc, dens = stats["final_test_acc"], stats["mean_forward_density"]
    best = max(settings(), key=lambda s: acc[s][0])
    cheapest = min(settings(), key=lambda s: dens[s][0])
    spread = max(a[0] for a in acc.values()) - min(a[0] for a in acc.values())
    stds = [a[1] for a in acc.values() if not np.isnan(a[1])]
    return (
        f"{common.runs_note(mode, [r for rs in groups.values() for r in rs])} LBC {PATTERN} with removal "
        f"from epoch 0 to t_f in {{{', '.join(f'{f:g}' for f in T_F_FRACTIONS)}}} x {mode.epochs} epochs and "
        f"power p in {list(POWERS)} (default t_f = 0.5, p = 3). Final accuracy: "
        + "; ".join(f"t_f={f:g}, p={p}: {common.pm(*acc[(f, p)], scale=100)} % (density "
                    f"{dens[(f, p)][0]:.2f})" for f, p in settings()) +
        f". SR-STE 2:4 on the same seeds: {common.pm(*srste_acc, scale=100)} %. Best mean: t_f = {best[0]:g}, "
        f"p = {best[1]} ({_within(acc, best)}); lowest training density: t_f = {cheapest[0]:g}, "
        f"p = {cheapest[1]}. Spread of the means across settings {100 * spread:.2f} points"
        + (f" vs a typical std over seeds of {100 * float(np.mean(stds)):.2f}" if stds else "") +
        ". The LBC paper's default is t_f = half the run with a cubic schedule (p = 3); this ablation asks how "
        "sensitive the result is at small scale. By construction a larger p removes combinations earlier (lower "
        "density, cheaper training) and a later t_f keeps the network denser for longer (panel c). Differences below "
        "the std over seeds are not meaningful.")


def _within(acc, best):
    """Which settings' means are within the larger std over seeds of the best one's."""
    close = [s for s in settings() if s != best
             and acc[best][0] - acc[s][0] <= common.noise(acc[best][1], acc[s][1])]
    if not close:
        return "beyond the std over seeds of every other setting"
    return "within the std over seeds of " + ", ".join(f"t_f = {f:g}, p = {p}" for f, p in close)


def main(argv=None):
    from .run_all import main as run_all_main
    return run_all_main([*(sys.argv[1:] if argv is None else argv), "--only", NAME])


if __name__ == "__main__":
    sys.exit(main())
