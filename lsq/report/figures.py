"""Figures of one (dataset, profile): one function per figure, each returns the Figure.

Every function takes the page's ``Runs`` (``load_runs(...).select(dataset, profile)``) and builds
a ``matplotlib.figure.Figure`` directly (no pyplot state; PNGs render with Agg); the caller saves
it. Curves are means over seeds with a ±1 std band (drawn when n ≥ 2);
legends give n. Figures built from synthetic runs say "SYNTHETIC DATA" in a red title.
"""

from __future__ import annotations

import functools

import matplotlib
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from lsq.experiments import get_table
from lsq.report.analysis import ablated_rows, settings
from lsq.report.collect import Runs
from lsq.report.tables import diverged_count

VIRIDIS, TAB10 = matplotlib.colormaps["viridis"], matplotlib.colormaps["tab10"]
ROW_COLORS = {0: "#222222", 1: "#1f77b4", 2: "#ff7f0e", 3: "#2ca02c", 4: "#d62728"}
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
    "legend.frameon": False, "figure.dpi": 100,
}


def _styled(function):
    """Run a figure function inside the report's rc style (legends and ticks read rc when they
    are created, so the whole function runs in the context, not just the subplots call)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return function(*args, **kwargs)

    return wrapper


def _figure(nrows: int = 1, ncols: int = 1, size=(6.4, 3.6), **kwargs):
    # Figure(), not pyplot: no global figure registry to leak or close, no GUI backend needed;
    # savefig renders PNGs with Agg, and notebooks display the object inline.
    # Constrained layout is solved once, at draw time: one render per savefig (tight_layout plus
    # bbox="tight" drew every figure three times).
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    for ax in axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    return fig, axes


def _is_synthetic(runs: Runs) -> bool:
    return runs.dataset == "synthetic" or "synthetic" in set(runs.summaries["data_kind"].dropna())


def _finish(fig: Figure, runs: Runs, title: str) -> Figure:
    synthetic = _is_synthetic(runs)
    # The label sits in the title, where no plot element can cover it.
    fig.suptitle(f"{title} — {runs.dataset}, {runs.profile} profile"
                 + (" — SYNTHETIC DATA" if synthetic else ""),
                 fontsize=10, color="#c00000" if synthetic else "black")
    return fig


def _row_label(dataset: str, row: int, n: int) -> str:
    return f"row {row}: {get_table(dataset).row(row).label} (n={n})"


def _mean_band(ax, frame: pd.DataFrame, column: str, label: str, color: str, **style) -> None:
    stats = frame.groupby("epoch")[column].agg(["mean", "std", "count"]).dropna(subset=["mean"])
    if stats.empty:
        return
    ax.plot(stats.index, stats["mean"], color=color, label=label, **style)
    band = stats[stats["count"] >= 2]
    if not band.empty:
        ax.fill_between(band.index, band["mean"] - band["std"], band["mean"] + band["std"],
                        color=color, alpha=0.18, linewidth=0)


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["ablation"] == ""]


def _missing(runs: Runs, row: int) -> str:
    """Legend text of a row with no finished run: still training, or not started."""
    waiting = _plain(runs.in_progress)
    return "in progress" if (waiting["row"] == row).any() else "not run"


@_styled
def accuracy_curves(runs: Runs, rows: tuple[int, ...] = (1, 2),
                    metric: str = "test_top1") -> Figure:
    """Test accuracy vs epoch for ``rows`` (weight-only: 1, 2; full: 3, 4) with the float baseline.

    Quantized rows start at epoch 0 (the converted, initialised model before training). The float
    baseline's own training curve is dashed; its final mean is the dotted line the drops are
    measured against (for a pretrained ImageNet baseline there is only that line).
    """
    fig, axes = _figure()
    ax = axes[0, 0]
    epochs = _plain(runs.epochs)
    base = epochs[epochs["row"] == 0]
    finals = _plain(runs.summaries)
    base_final = finals.loc[finals["row"] == 0, f"final_{metric.removeprefix('test_')}"]
    if base["epoch"].nunique() > 1:
        _mean_band(ax, base, metric, f"row 0: float training (n={base['seed'].nunique()})",
                   ROW_COLORS[0], linestyle="--", linewidth=1.0)
    if len(base_final.dropna()):
        ax.axhline(base_final.mean(), color=ROW_COLORS[0], linestyle=":", linewidth=1.2,
                   label=f"float baseline, final mean (n={len(base_final.dropna())})")
    for row in rows:
        frame = epochs[epochs["row"] == row]
        if frame.empty:
            ax.plot([], [], color=ROW_COLORS[row], label=f"row {row}: {_missing(runs, row)}")
            continue
        _mean_band(ax, frame, metric, _row_label(runs.dataset, row, frame["seed"].nunique()),
                   ROW_COLORS[row], linewidth=1.6, marker="o", markersize=3)
    if epochs[epochs["row"].isin(rows)].empty:
        ax.text(0.5, 0.5, f"rows {', '.join(map(str, rows))}: not run", transform=ax.transAxes,
                ha="center", va="center", color="#777777")
        if base["epoch"].nunique() <= 1:
            ax.set_xticks([])  # nothing trained to put on an epoch axis
    ax.set_xlabel("epoch of the run's own training (0 = after quantizer initialisation)")
    ax.set_ylabel(f"test {metric.removeprefix('test_')} accuracy (%)")
    ax.legend(loc="best")
    kind = "weight-only" if set(rows) <= {1, 2} else "weights + activations"
    return _finish(fig, runs, f"Test accuracy, {kind} (rows {', '.join(map(str, rows))})")


def _representative(layers: list[str], count: int) -> list[str]:
    """Evenly spaced layers in model order (first and last always kept)."""
    if len(layers) <= count:
        return layers
    picks = {round(i * (len(layers) - 1) / (count - 1)) for i in range(count)}
    return [layers[i] for i in sorted(picks)]


@_styled
def step_size_trajectories(runs: Runs, rows: tuple[int, ...] = (1, 2, 3, 4),
                           layers_per_panel: int = 5) -> Figure:
    """Step size vs epoch for a few representative layers: one panel row per table row, weight
    quantizers left, activation (input) quantizers right; mean over seeds, log scale."""
    steps = _plain(runs.step_sizes)
    fig, axes = _figure(len(rows), 2, size=(9.0, 1.9 * len(rows) + 0.6), sharex=True)
    for i, row in enumerate(rows):
        frame = steps[steps["row"] == row]
        order = list(dict.fromkeys(frame.sort_values(["seed", "epoch"])["layer"]))
        for j, (kind, keep) in enumerate((("weights", lambda n: "weight" in n),
                                          ("activations", lambda n: "weight" not in n))):
            ax = axes[i, j]
            chosen = _representative([n for n in order if keep(n)], layers_per_panel)
            for k, layer in enumerate(chosen):
                series = frame[frame["layer"] == layer].groupby("epoch")["mean"].mean()
                ax.plot(series.index, series.values, color=VIRIDIS(k / max(len(chosen), 2)),
                        linewidth=1.2, label=layer.rsplit("_quantizer", 1)[0])
            if chosen:
                ax.set_yscale("log")
                # Beside the panel, not on it: the trajectories fill the axes.
                ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
            else:
                ax.text(0.5, 0.5, "not run" if frame.empty else f"no {kind} quantizers",
                        ha="center", va="center", transform=ax.transAxes, color="#777777")
                ax.set_yticks([])
            ax.set_title(f"row {row}, {kind}", fontsize=9)
            if j == 0:
                ax.set_ylabel("step size s")
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    return _finish(fig, runs, "Step-size trajectories")


@_styled
def weight_sparsity(runs: Runs, rows: tuple[int, ...] = (1, 2, 3, 4)) -> Figure:
    """Fraction of zero ternary weight codes over training, per row (mean ± std over seeds)."""
    fig, axes = _figure()
    ax = axes[0, 0]
    epochs = _plain(runs.epochs)
    for row in rows:
        frame = epochs[epochs["row"] == row].dropna(subset=["weight_sparsity"])
        if frame.empty:
            ax.plot([], [], color=ROW_COLORS[row], label=f"row {row}: {_missing(runs, row)}")
            continue
        frame = frame.assign(zero_percent=100 * frame["weight_sparsity"])
        label = _row_label(runs.dataset, row, frame["seed"].nunique())
        _mean_band(ax, frame, "zero_percent", label, ROW_COLORS[row], linewidth=1.6, marker="o",
                   markersize=3)
    ax.set_xlabel("epoch (0 = after quantizer initialisation)")
    ax.set_ylabel("zero ternary weights (%)")
    ax.legend(loc="best")
    return _finish(fig, runs, "Weight sparsity")


@_styled
def ablation_final_accuracy(runs: Runs, factor: str) -> Figure:
    """Final top-1 per setting of one ablation factor, grouped by row, ±1 std error bars; seeds
    that diverged are written at the foot of their setting."""
    finals = runs.summaries
    rows = ablated_rows(finals, factor)
    options = settings(factor)
    fig, axes = _figure(1, len(rows), size=(3.4 * len(rows), 3.2))
    for ax, row in zip(axes[0], rows):
        for i, (name, value) in enumerate(options):
            values = finals[(finals["row"] == row) & (finals["ablation"] == name)]["final_top1"]
            lost = diverged_count(runs.diverged, row, name)
            if lost:  # no accuracy to draw: said where the bar would stand
                ax.text(i, 0.02, f"{lost} diverged", rotation=90, ha="center", va="bottom",
                        fontsize=7, color="#b00020", transform=ax.get_xaxis_transform())
            if values.empty:
                if not lost:
                    ax.text(i, 0.02, "not run", rotation=90, ha="center", va="bottom",
                            fontsize=7, color="#777777", transform=ax.get_xaxis_transform())
                continue
            std = values.std() if len(values) > 1 else 0.0
            ax.bar(i, values.mean(), yerr=std, color=ROW_COLORS[row] if name else "#999999",
                   alpha=0.85, capsize=3, width=0.6, label=f"{value} (n={len(values)})")
            ax.scatter([i] * len(values), values, color="black", s=8, zorder=3)
        ax.set_xticks(range(len(options)), [v for _, v in options], rotation=25, ha="right")
        ax.set_title(f"row {row}: {get_table(runs.dataset).row(row).label}", fontsize=9)
        ax.set_ylabel("final test top-1 (%)")
        plotted = finals[finals["row"] == row]["final_top1"]
        if len(plotted):
            low, high = plotted.min(), plotted.max()
            pad = max(0.5, 0.15 * (high - low))
            ax.set_ylim(low - 4 * pad, high + pad)  # bars start near the data, not at 0
    return _finish(fig, runs, f"Ablation: {factor.replace('_', ' ')}")


@_styled
def ablation_nonzero_fraction(runs: Runs, factor: str = "step_init") -> Figure:
    """Fraction of nonzero ternary weights over training, one line per setting, panel per row;
    one legend for all panels, n = seeds (a range when the rows differ)."""
    epochs = runs.epochs.dropna(subset=["weight_sparsity"])
    epochs = epochs.assign(nonzero=100 * (1 - epochs["weight_sparsity"]))
    rows = ablated_rows(runs.summaries, factor)
    fig, axes = _figure(1, len(rows), size=(3.4 * len(rows), 3.3), sharey=True)
    handles, names = [], []
    for i, (name, value) in enumerate(settings(factor)):
        color = "#555555" if not name else TAB10(i)
        seeds = []
        for ax, row in zip(axes[0], rows):
            frame = epochs[(epochs["row"] == row) & (epochs["ablation"] == name)]
            if len(frame):
                seeds.append(frame["seed"].nunique())
                _mean_band(ax, frame, "nonzero", value, color, linewidth=1.5, marker="o",
                           markersize=3)
        n = f"n={min(seeds)}" if seeds and min(seeds) == max(seeds) else \
            f"n={min(seeds)}–{max(seeds)}" if seeds else "not run"
        handles.append(Line2D([], [], color=color, marker="o" if seeds else None, markersize=3))
        names.append(f"{value} ({n})")
    for ax, row in zip(axes[0], rows):
        ax.set_title(f"row {row}", fontsize=9)
        ax.set_xlabel("epoch (0 = after initialisation)")
    axes[0, 0].set_ylabel("nonzero ternary weights (%)")
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 4), fontsize=7.5)
    return _finish(fig, runs, f"Nonzero weights, {factor.replace('_', ' ')}")


def precision_rows(dataset: str) -> dict[int, int]:
    """{row: bits} of a table whose quantized rows are whole b-bit precisions (the LSQ paper's
    table); empty for the seed's ternary table."""
    quantized = [row for row in get_table(dataset).rows if not row.is_float]
    if not quantized or any(row.bits is None for row in quantized):
        return {}
    return {row.id: row.bits for row in quantized}


@_styled
def precision_drop(runs: Runs) -> Figure:
    """Top-1 drop (float − row, paired by seed) against weight/activation bits: bars of the mean
    drop ±1 std, dots for seeds; the table's ablations of a row (distillation) as hollow markers
    beside its bar. Nothing published is drawn (the paper's numbers are not shown, see
    ``Table.published_note``)."""
    bits = precision_rows(runs.dataset)
    finals = runs.summaries
    base = finals[(finals["row"] == 0) & (finals["ablation"] == "")].set_index("seed")["final_top1"]
    fig, axes = _figure()
    ax = axes[0, 0]
    for i, (row, b) in enumerate(bits.items()):
        for name, offset in [("", 0.0)] + [(a, 0.3) for a in sorted(
                set(finals.loc[(finals["row"] == row) & (finals["ablation"] != ""), "ablation"]))]:
            mine = finals[(finals["row"] == row) & (finals["ablation"] == name)]
            drops = (base - mine.set_index("seed")["final_top1"]).dropna()
            if drops.empty:
                if not name:
                    ax.text(i, 0.02, _missing(runs, row), rotation=90, ha="center", va="bottom",
                            fontsize=7, color="#777777", transform=ax.get_xaxis_transform())
                continue
            std = drops.std() if len(drops) > 1 else 0.0
            label = f"{b}/{b} bits (n={len(drops)})" if not name else f"{b}/{b}, {name} (n={len(drops)})"
            if not name:
                ax.bar(i, drops.mean(), yerr=std, color=ROW_COLORS[row], alpha=0.85, capsize=3,
                       width=0.5, label=label)
            else:
                ax.errorbar(i + offset, drops.mean(), yerr=std, fmt="D", mfc="white",
                            color=ROW_COLORS[row], capsize=3, label=label)
            ax.scatter([i + offset] * len(drops), drops, color="black", s=8, zorder=3)
    ax.axhline(0, color="#222222", linewidth=0.8)
    ax.set_xticks(range(len(bits)), [f"w{b}/a{b}" for b in bits.values()])
    ax.set_xlabel("weight / activation bits (first and last layers at 8 bits)")
    ax.set_ylabel("top-1 drop vs float (points)")
    ax.legend(loc="best")
    return _finish(fig, runs, "Top-1 drop against precision")
