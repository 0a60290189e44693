"""The seed's "analysis": ablations of the step-size init, the step-size lr and the lr scheduler.

For each factor of ``lsq.experiments.ABLATIONS`` and each ablated row, one line per setting: the
final top-1 mean ± std (n), Δ vs the baseline setting (the plain table run of the same row and
seed, paired per seed) and the fraction of nonzero ternary weights at the end. A verdict
sentence per (setting, row) is derived from those numbers: a difference no larger than the seed
spread is called inconclusive, and a single seed is said to be a single seed.
"""

from __future__ import annotations

import math

import pandas as pd

from lsq.experiments import ABLATION_BASELINE_VALUES, ABLATION_ROWS, ABLATIONS
from lsq.report.tables import NOT_RUN, Estimate, estimate, paired_difference

FACTORS = {
    "step_init": "Step-size initial value",
    "step_lr": "Step-size learning rate",
    "scheduler": "Learning-rate scheduler",
}
SEED_ADVICE = {  # the seed README's advice for each factor, quoted
    "step_init": "scale initial value: not to big, keep enough nozero weight",
    "step_lr": "scale learning rate: down when to big",
    "scheduler": "lr_scheduler: influence on final result",
}


def settings(factor: str) -> list[tuple[str, str]]:
    """(ablation name, value label) for a factor, the baseline (plain run, name "") first."""
    return [("", ABLATION_BASELINE_VALUES[factor])] + [
        (a.name, a.value) for a in ABLATIONS if a.factor == factor
    ]


def ablated_rows(summaries: pd.DataFrame) -> list[int]:
    """ABLATION_ROWS plus any other row that has ablation runs."""
    extra = set(summaries.loc[summaries["ablation"] != "", "row"]) if len(summaries) else set()
    return sorted(set(ABLATION_ROWS) | {int(r) for r in extra})


def has_ablations(summaries: pd.DataFrame, in_progress: pd.DataFrame) -> bool:
    names = {a.name for a in ABLATIONS}
    found = set(summaries["ablation"]) | set(in_progress["ablation"])
    return bool(found & names)


def _finals(summaries: pd.DataFrame, row: int, ablation: str, column: str) -> pd.Series:
    runs = summaries[(summaries["row"] == row) & (summaries["ablation"] == ablation)]
    return runs.set_index("seed")[column].astype(float)


def ablation_table(summaries: pd.DataFrame, in_progress: pd.DataFrame, factor: str) -> pd.DataFrame:
    """Numbers for one factor of one (dataset, profile): a line per (setting, row).

    Columns: ``setting``, ``ablation`` ("" = baseline), ``row``, ``top1_mean/std/n``,
    ``delta_mean/std/n/paired`` (setting − baseline, per seed), ``baseline_std``,
    ``nonzero_mean`` (1 − final weight sparsity), ``in_progress``.
    """
    records = []
    for row in ablated_rows(summaries):
        baseline = _finals(summaries, row, "", "final_top1")
        for name, value in settings(factor):
            finals = _finals(summaries, row, name, "final_top1")
            accuracy = estimate(finals)
            delta = paired_difference(finals, baseline) if name else Estimate(0.0, 0.0, accuracy.n)
            if not accuracy.measured:
                delta = Estimate(float("nan"), float("nan"), 0)
            sparsity = _finals(summaries, row, name, "final_weight_sparsity").dropna()
            waiting = int(((in_progress["row"] == row)
                           & (in_progress["ablation"] == name)).sum()) if len(in_progress) else 0
            records.append({
                "setting": value, "ablation": name, "row": row,
                "top1_mean": accuracy.mean, "top1_std": accuracy.std, "top1_n": accuracy.n,
                "delta_mean": delta.mean, "delta_std": delta.std, "delta_n": delta.n,
                "delta_paired": delta.paired,
                "baseline_std": estimate(baseline).std,
                "nonzero_mean": float((1 - sparsity).mean()) if len(sparsity) else math.nan,
                "in_progress": waiting,
            })
    return pd.DataFrame.from_records(records)


def format_ablation_table(numbers: pd.DataFrame) -> pd.DataFrame:
    """Display strings (the same frame feeds markdown and HTML)."""
    lines = []
    for _, r in numbers.iterrows():
        accuracy = Estimate(r["top1_mean"], r["top1_std"], int(r["top1_n"]))
        delta = Estimate(r["delta_mean"], r["delta_std"], int(r["delta_n"]),
                         bool(r["delta_paired"]))
        if accuracy.measured:
            final = accuracy.format()
        else:
            final = f"in progress ({r['in_progress']})" if r["in_progress"] else NOT_RUN
        lines.append({
            "setting": r["setting"] + (" (baseline)" if not r["ablation"] else ""),
            "row": str(r["row"]),
            "final top-1": final,
            "Δ vs baseline": ("reference" if not r["ablation"] else delta.format(signed=True))
            if accuracy.measured else "—",
            "nonzero weights at end": "—" if math.isnan(r["nonzero_mean"])
            else f"{100 * r['nonzero_mean']:.1f}%",
        })
    return pd.DataFrame(lines)


def verdicts(numbers: pd.DataFrame) -> list[str]:
    """One sentence per (ablation, row), derived from ``ablation_table`` numbers."""
    sentences = []
    for _, r in numbers[numbers["ablation"] != ""].iterrows():
        where = f"row {r['row']}"
        if not r["top1_n"]:
            sentences.append(f"{r['setting']} on {where}: not run.")
            continue
        if not r["delta_n"] or math.isnan(r["delta_mean"]):
            sentences.append(f"{r['setting']} on {where}: the baseline run is missing, no Δ.")
            continue
        delta, n = float(r["delta_mean"]), int(r["delta_n"])
        seeds = f"{n} seed{'s' if n > 1 else ''}"
        verb = "costs" if delta < 0 else "gains"
        base = f"{r['setting']} {verb} {abs(delta):.2f} points on {where}"
        nonzero = ""
        if not math.isnan(r["nonzero_mean"]):
            nonzero = f", ending with {100 * r['nonzero_mean']:.0f}% nonzero weights"
        if n < 2 or not r["delta_paired"]:
            why = "1 seed, no spread estimate" if n < 2 else "unpaired seeds"
            sentences.append(f"{base} ({why}: indicative only){nonzero}.")
            continue
        # Each ablation run starts from the same float model as its baseline run (same seed),
        # so the per-seed differences are the measurement: judge the mean difference against
        # their spread, not against the accuracy spread across seeds, which is mostly the
        # float baselines' own seed-to-seed variation.
        spread = _nan_to_zero(r["delta_std"])
        if abs(delta) <= spread:
            shown = Estimate(delta, 0.0, 1).format(signed=True, show_n=False)  # no "-0.00"
            sentences.append(
                f"{r['setting']} on {where}: {shown} points, within the std of the per-seed "
                f"differences ({spread:.2f}, {seeds}): inconclusive{nonzero}.")
        else:
            sentences.append(f"{base} ({seeds}){nonzero}.")
    return sentences


def _nan_to_zero(value: float) -> float:
    return 0.0 if value is None or math.isnan(value) else float(value)
