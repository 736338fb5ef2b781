"""Figure 1: N:M sparsity on a real trained weight (SR-STE Fig. 1): dense -> groups -> kept / pruned ->
compressed values + indices."""
import sys

import numpy as np

from nmref.groups import grouped_axis_length, to_groups
from nmref.masks import compress_nm, decompress_nm, nm_mask

from . import common

NAME = "fig1_nm_illustration"
TITLE = "Figure 1: N:M (2:4) sparsity of a trained weight, dense to values + indices"
ROWS, COLS = 4, 16
COLUMNS = ("row", "col", "group", "pos_in_group", "weight", "kept", "value_col", "index")


def runs(mode):
    """The SR-STE 2:4 run drawn, and the STE run of the same seed for the magnitude comparison."""
    return [common.spec(mode, method, "2:4", seed=mode.seeds[0]) for method in ("srste", "ste")]


def pruned_to_kept(run, layer, n, m):
    """Mean |w| of the pruned weights over mean |w| of the kept ones, whole layer, final weights."""
    info = run.layers[layer]
    w = run.arrays[f"param/{info['weight']}"]
    mask = nm_mask(w, n, m, info["layout"])
    return float(np.abs(w[~mask]).mean() / np.abs(w[mask]).mean())


def shrink(ratio, ratio_ste):
    """Does SR-STE's decay leave the pruned weights smaller (relative to the kept) than STE does?"""
    change = ratio / ratio_ste - 1
    if change < -0.01:
        return f"SR-STE's term λ_W(1-E)⊙W has pulled the pruned weights {-100 * change:.0f} % further towards zero"
    if change > 0.01:
        return f"SR-STE's pruned weights are NOT smaller than STE's here ({100 * change:+.0f} %)"
    return f"no visible effect of SR-STE's term λ_W(1-E)⊙W on the pruned weights yet ({100 * change:+.1f} %)"


def weight_rows(run):
    """(layer, its layout, final dense weight, the weight as (R, K) rows with the grouped axis last); the first
    sparse Linear layer when there is one (its rows are output neurons), else the first sparse layer."""
    linear = [name for name, info in run.layers.items() if info["layout"] == "linear"]
    layer = linear[0] if linear else next(iter(run.layers))
    info = run.layers[layer]
    w = run.arrays[f"param/{info['weight']}"]
    k = grouped_axis_length(w.shape, info["layout"])
    return layer, info["layout"], w, to_groups(w, k, info["layout"])               # (R, K)


def table(block, mask, values, positions, n, m):
    rows = []
    for r in range(block.shape[0]):
        kept_cols = np.flatnonzero(mask[r])
        for c in range(block.shape[1]):
            kept = bool(mask[r, c])
            slot = int(np.searchsorted(kept_cols, c)) if kept else -1
            rows.append({"row": r, "col": c, "group": c // m, "pos_in_group": c % m, "weight": float(block[r, c]),
                         "kept": int(kept), "value_col": slot, "index": int(positions[r, slot]) if kept else -1})
    return rows


def plot(block, mask, values, positions, n, m, title_note, path, layout):
    plt = common.setup_matplotlib()
    row_name = "output row" if layout == "linear" else "row (output channel, tap)"
    from matplotlib.colors import TwoSlopeNorm
    limit = float(np.abs(block).max()) or 1.0
    norm = TwoSlopeNorm(0.0, -limit, limit)
    fig, axes = plt.subplots(4, 1, figsize=(9, 8.2), gridspec_kw={"height_ratios": [1, 1, 1, 1]})
    panels = [(f"(a) dense trained weight W: {block.shape[0]} rows x {block.shape[1]} inputs", block, None),
              (f"(b) grouped into {m} consecutive inputs; keep the {n} largest |w| per group (pruned: grey)",
               np.where(mask, block, np.nan), mask),
              (f"(c) compressed values: {n} of every {m} kept, {block.shape[1] * n // m} per row", values, None),
              (f"(d) indices: position (0..{m - 1}) of each kept value within its group", positions, None)]
    for ax, (title, data, keep) in zip(axes, panels):
        is_index = data is positions
        cmap = plt.get_cmap("Pastel1" if is_index else "RdBu_r").with_extremes(bad="lightgrey")
        ax.imshow(data, cmap=cmap, norm=None if is_index else norm, aspect="auto",
                  vmin=0 if is_index else None, vmax=8 if is_index else None)
        for (i, j), v in np.ndenumerate(block if keep is not None else data):
            text = f"{int(v)}" if is_index else f"{v:.2f}"
            dark = not is_index and abs(v) > 0.6 * limit and (keep is None or keep[i, j])
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="dimgray" if keep is not None and not keep[i, j] else "white" if dark else "black")
        if data.shape[1] == block.shape[1]:
            for g in range(1, data.shape[1] // m):
                ax.axvline(g * m - 0.5, color="black", lw=1.5 if keep is not None or ax is axes[0] else 0.5)
        else:
            for g in range(1, data.shape[1] // n):
                ax.axvline(g * n - 0.5, color="black", lw=1.0)
        ax.set_title(title, loc="left")
        ax.set_ylabel(row_name)
        ax.set_xlabel("input position (column)" if data.shape[1] == block.shape[1] else "compressed column")
        ax.set_yticks(range(data.shape[0]))
        ax.grid(False)
    fig.suptitle(f"N:M {n}:{m} sparsity on a trained weight: dense -> kept/pruned -> values + indices\n{title_note}",
                 fontsize=10)
    fig.tight_layout()
    return common.save_png(fig, path)


def make(mode, results, out_dir):
    config = runs(mode)[0]
    run = results(config)
    n, m = (int(v) for v in config["pattern"].split(":"))
    layer, layout, w, rows = weight_rows(run)
    cols = min(COLS, rows.shape[1] - rows.shape[1] % m)
    block = rows[:ROWS, :cols]                                                     # (4, 16)
    full_mask = nm_mask(w, n, m, layout)                                           # like w, bool
    mask = to_groups(full_mask, rows.shape[1], layout)[:ROWS, :cols]               # (4, 16) bool
    all_values, all_indices = compress_nm(w, n, m, layout, mask=full_mask)         # (..., K n/m) each
    exact = bool((decompress_nm(all_values, all_indices, n, m, w.shape, layout) == w * full_mask).all())
    k_kept = rows.shape[1] * n // m
    values = all_values.reshape(-1, k_kept)[:ROWS, :cols * n // m]                 # (4, 8)
    positions = all_indices.reshape(-1, k_kept)[:ROWS, :cols * n // m].astype(np.int64)  # (4, 8)
    csv = common.write_csv(out_dir / f"{NAME}.csv", table(block, mask, values, positions, n, m), COLUMNS)
    note = (f"layer '{layer}' {tuple(w.shape)} (layout '{layout}') of {common.label(config)}, seed "
            f"{config['seed']}, after {config['epochs']} epochs")
    png = plot(block, mask, values, positions, n, m, note, out_dir / f"{NAME}.png", layout)
    ratio, ratio_ste = pruned_to_kept(run, layer, n, m), pruned_to_kept(results(runs(mode)[1]), layer, n, m)
    groups_along = "input features" if layout == "linear" else "input channels"
    caption = (
        f"{common.runs_note(mode, [run, results(runs(mode)[1])])} Drawn: the final dense weight of layer `{layer}` "
        f"(shape {tuple(w.shape)}, groups along the {groups_along}, layout `{layout}`) of the SR-STE {n}:{m} run; "
        f"the first {block.shape[0]} rows of its grouped view and their first "
        f"{block.shape[1]} inputs. The mask is `nm_mask(W, {n}, {m})` of that weight, the one the next forward "
        f"would use: every group keeps exactly {n} (whole layer: {int(full_mask.sum())} of {full_mask.size} "
        f"kept = {full_mask.mean():.3f}). In the whole layer the pruned weights' mean |w| is "
        f"{ratio:.4f} of the kept weights' for SR-STE and {ratio_ste:.4f} for STE (same seed): {shrink(ratio, ratio_ste)} (one seed each, so no spread over seeds is measured). "
        f"Panels (c, d) are "
        f"`compress_nm(W, {n}, {m})`; `decompress_nm` of them gives back W⊙E "
        f"{'exactly' if exact else 'NOT exactly (a bug)'} for the whole layer. Storage: {values.shape[1]} values "
        f"+ {values.shape[1]} indices of {int(np.ceil(np.log2(m)))} bits per row of the block shown instead of {block.shape[1]} "
        f"values, the format of SR-STE Fig. 1 (and of NVIDIA's sparse tensor cores for 2:4). This is an "
        f"illustration, not a claim to reproduce.")
    common.write_fragment(out_dir, NAME, TITLE, [png], [csv], caption)
    return [png, csv]


def main(argv=None):
    from .run_all import main as run_all_main
    return run_all_main([*(sys.argv[1:] if argv is None else argv), "--only", NAME])


if __name__ == "__main__":
    sys.exit(main())
