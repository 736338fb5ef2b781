"""Figure 5: LBC's combination-removal process at 2:4 (Zhang et al. 2022, Fig. 2): alive combinations and
forward density over training, score trajectories of a few groups, the final combination vs the magnitude
top-N of the weights."""
import math
import sys

import numpy as np

from nmref.groups import to_groups
from nmref.lbc import combinations, removal_schedule
from nmref.masks import nm_mask

from . import common

NAME = "fig5_lbc_removal"
TITLE = "Figure 5: LBC (2:4) combination removal: alive combinations, density, scores, final choice vs magnitude"
PATTERN = "2:4"
SHOW_GROUPS = 3
COLUMNS = ("epochs_done", "scheduled_alive", "alive_per_group", "forward_density", "is_nm",
           "final_matches_topn_of_weights_now", "final_matches_topn_of_weights_now_by_chance")
SCORE_COLUMNS = ("group", "combination", "kept_positions", "epochs_done", "score", "alive_at_end")


def runs(mode):
    return [common.spec(mode, "lbc", PATTERN, seed=mode.seeds[0])]


def schedule(run, epochs, c):
    t_f = run.config.get("t_f") or epochs / 2
    return [c - removal_schedule(e, c, run.config.get("t_i") or 0, t_f, run.config.get("power") or 3)
            for e in range(epochs)]


def agreement(final_groups, weights, n, m, layout):
    """Per snapshot: fraction of groups whose final kept set equals the magnitude top-n of that snapshot's W."""
    return np.array([(to_groups(nm_mask(w, n, m, layout), m, layout) == final_groups).all(axis=1).mean()
                     for w in weights])


def make(mode, results, out_dir):
    plt = common.setup_matplotlib()
    config = runs(mode)[0]
    run = results(config)
    n, m = (int(v) for v in PATTERN.split(":"))
    table = combinations(n, m)                                                     # (C, M)
    c = len(table)
    layer, info = next(iter(run.layers.items()))
    layout = info["layout"]
    alive = run.arrays[f"lbc/{layer}/alive"].mean(axis=1)                         # (E + 1,)
    scores = run.arrays[f"lbc/{layer}/scores"]                                     # (E + 1, g, C)
    weights = run.arrays[f"lbc/{layer}/weight"]                                    # (E + 1, *w.shape)
    epochs = len(run.history)
    final_groups = to_groups(run.arrays[f"mask/{layer}"], m, layout)               # (G, M) bool
    agree = agreement(final_groups, weights, n, m, layout)                         # (E + 1,)
    scheduled = [c] + schedule(run, epochs, c)                                     # (E + 1,)
    density = np.concatenate([[1.0], run.column("density")])
    is_nm = np.concatenate([[0.0], run.column("is_nm")])
    done = np.arange(epochs + 1)
    rows = [{"epochs_done": int(e), "scheduled_alive": scheduled[e], "alive_per_group": alive[e],
             "forward_density": density[e], "is_nm": int(is_nm[e]) if np.isfinite(is_nm[e]) else "",
             "final_matches_topn_of_weights_now": agree[e],
             "final_matches_topn_of_weights_now_by_chance": 1 / c} for e in done]
    csv = common.write_csv(out_dir / f"{NAME}.csv", rows, COLUMNS)
    names = ["{" + ",".join(str(j) for j in np.flatnonzero(t)) + "}" for t in table]
    shown = pick_groups(scores)
    score_rows = [{"group": int(g), "combination": k, "kept_positions": names[k], "epochs_done": int(e),
                   "score": float(scores[e, g, k]), "alive_at_end": int(scores[-1, g, k] != 0)}
                  for g in shown for k in range(c) for e in done]
    csv_scores = common.write_csv(out_dir / f"{NAME}_scores.csv", score_rows, SCORE_COLUMNS)

    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[0, 0])
    ax.plot(done, scheduled, "s--", color="grey", ms=6, mfc="none", label="schedule: C - k(epoch)")
    ax.plot(done, alive, "o-", color=common.COLORS["lbc"], ms=3, label=f"alive per group, layer {layer}")
    ax.set(title=f"(a) alive combinations per group (C = {c})", xlabel="epochs completed",
           ylabel="alive combinations per group (mean)")
    ax.legend()
    ax = fig.add_subplot(grid[0, 1])
    ax.plot(done, 100 * density, "o-", color=common.COLORS["lbc"], ms=3, label="LBC forward density")
    ax.axhline(100 * n / m, color="black", ls=":", label=f"N/M = {n}/{m}")
    ax.set(title="(b) forward density (kept fraction of sparse weights)", xlabel="epochs completed",
           ylabel="forward density (%)")
    ax.legend()
    ax = fig.add_subplot(grid[0, 2])
    ax.plot(done, 100 * agree, "o-", color=common.COLORS["lbc"], ms=3,
            label="final LBC choice = top-N |W| now")
    ax.axhline(100 / c, color="grey", ls=":", label=f"chance (1/C = {100 / c:.0f} %)")
    ax.set(title="(c) final combination vs magnitude top-N of W", xlabel="epochs completed (W taken then)",
           ylabel="groups agreeing (%)", ylim=(0, 105))
    ax.legend()
    init = 1 / math.comb(m - 1, n - 1)
    for i, g in enumerate(shown):
        ax = fig.add_subplot(grid[1, i])
        for k in range(c):
            final = scores[-1, g, k] != 0
            alive_k = scores[:, g, k] != 0                                         # (E + 1,)
            last = int(np.flatnonzero(alive_k)[-1]) if alive_k.any() else 0
            change = np.where(alive_k, scores[:, g, k] - init, np.nan)             # (E + 1,)
            line, = ax.plot(done, 1e3 * change, "o-" if final else "-", ms=3, lw=2.2 if final else 1,
                            label=f"{names[k]}{' (kept)' if final else ''}")
            if not final:
                ax.plot([last], [1e3 * change[last]], "x", color=line.get_color(), ms=7)
        ax.set(title=f"({'def'[i]}) group {g} of layer {layer}: scores while alive (x: removed)",
               xlabel="epochs completed", ylabel=f"score - initial 1/{math.comb(m - 1, n - 1)} (x 1e-3)")
        ax.legend(fontsize=7, title="kept positions")
    fig.suptitle(f"LBC {PATTERN} on MNIST-1D cnn1d (seed {config['seed']}, {epochs} epochs, removal until epoch "
                 f"{run.config.get('t_f') or epochs / 2:g}): how the combinations are removed", fontsize=10)
    fig.tight_layout()
    png = common.save_png(fig, out_dir / f"{NAME}.png")
    common.write_fragment(out_dir, NAME, TITLE, [png], [csv, csv_scores],
                          caption(mode, run, layer, alive, density, agree, c, n, m, scheduled, scores))
    return [png, csv, csv_scores]


def pick_groups(scores):
    """The first groups whose surviving combination is not the highest-scored at the first snapshot after the
    start (interesting trajectories), padded with the first groups."""
    final = np.argmax(scores[-1] != 0, axis=1)                                     # (g,)
    early = np.argmax(scores[min(1, len(scores) - 1)], axis=1)                     # (g,)
    changed = [int(g) for g in np.flatnonzero(final != early)]
    return (changed + [g for g in range(scores.shape[1]) if g not in changed])[:SHOW_GROUPS]


def caption(mode, run, layer, alive, density, agree, c, n, m, scheduled, scores):
    epochs = len(run.history)
    init = 1 / math.comb(m - 1, n - 1)
    drift = float(np.abs(np.where(scores != 0, scores - init, 0)).max() / init)
    follows = bool(np.allclose(alive, scheduled)) and alive[-1] == 1 and run.final("is_nm") == 1
    nm_epoch = next((i + 1 for i, v in enumerate(run.column("is_nm")) if v == 1), None)
    mean_density = float(np.nanmean(run.column("density")))
    return (
        f"{common.runs_note(mode, [run])} LBC {n}:{m} (C = {c} combinations per group, scores initialised "
        f"to 1/C(M-1,N-1), strict removal, schedule power {run.config.get('power') or 3}, removal from epoch "
        f"{run.config.get('t_i') or 0} to t_f = {run.config.get('t_f') or epochs / 2:g}). (a) mean alive "
        f"combinations per group of layer `{layer}` against the schedule: {alive[0]:.2f} at the start, "
        f"{alive[-1]:.2f} at the end. (b) forward density: the network is dense until few combinations "
        f"survive; its mean over training is {mean_density:.3f} (N/M = {n / m:.2f}), and the network is exactly "
        f"N:M {f'from the end of epoch {nm_epoch} on' if nm_epoch is not None else 'at no epoch end (a failure)'}. (c) fraction of groups whose final "
        f"(learned) combination equals the magnitude top-{n} of the dense weight at each moment: "
        f"{100 * agree[0]:.1f} % with the initial weights, {100 * agree[len(agree) // 2]:.1f} % at "
        f"mid-training and {100 * agree[-1]:.1f} % with the final weights (chance: {100 / c:.1f} %). A removed "
        f"position gets no loss gradient any more (only weight decay), so it keeps roughly its value while the "
        f"kept weights train on: agreement with the final weights measures how often LBC kept the largest "
        f"weights, agreement with the early weights how much of its choice a magnitude rule at that time "
        f"would have made. (d-f) score trajectories of {SHOW_GROUPS} groups (the first whose final "
        f"choice differs from their top-scored combination after one epoch, when there are such), as the change "
        f"from the initial score while the combination is alive; a removed combination's score is set to 0 and "
        f"stays dead (strict removal). Alive scores of the first {scores.shape[1]} groups move by at most "
        f"{100 * drift:.2g} % of their initial value: the ranking, not the size, decides. The paper's Fig. 2 shows the same process (scores learned, "
        f"low-scored combinations removed gradually until one per group remains): "
        + ("reproduced qualitatively, the alive count follows the schedule exactly and the network ends exactly "
           "N:M." if follows else "NOT reproduced: the alive count departs from the schedule or the network does "
           "not end N:M (see the CSV)."))


def main(argv=None):
    from .run_all import main as run_all_main
    return run_all_main([*(sys.argv[1:] if argv is None else argv), "--only", NAME])


if __name__ == "__main__":
    sys.exit(main())
