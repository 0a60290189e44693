"""The seed's "analysis": ablations of the step-size init, the step-size lr and the lr scheduler.

For each factor of ``lsq.experiments.ABLATIONS`` and each ablated row, one line per setting: the
final top-1 mean ± std (n), Δ vs the baseline setting (the plain table run of the same row and
seed, paired per seed) with its 95 % Student-t interval (:mod:`lsq.report.stats`), and the
fraction of nonzero ternary weights at the end. A setting *costs* (or *gains*) accuracy when the
whole interval of Δ lies below ``−T`` (above ``+T``), ``T = ABLATION_THRESHOLD``; otherwise the
comparison is inconclusive, and says how many seeds would settle it at the observed spread. A
single seed has no interval and is said to be a single seed. A seed whose loss became non-finite
(``diverged.json``) has no accuracy: it is counted and described beside the line ("k of n seeds
diverged"), and the interval rests on the seeds that finished.
"""

from __future__ import annotations

import math

import pandas as pd

from lsq import runs as run_format
from lsq.experiments import (ABLATION_BASELINE_VALUES, ABLATION_ROWS, ABLATION_THRESHOLD,
                             ABLATIONS, PAPER_ABLATIONS, SEED_FACTORS, WITHIN, ablation_rows,
                             get_table)
from lsq.report import stats
from lsq.report.tables import NOT_RUN, Estimate, diverged_count, estimate

COSTS, GAINS, NO_EFFECT, DIVERGED = "costs", "gains", "no effect", "diverged"
CONTROL = "control"  # the factor of row 0's control (Ablation.float_row)
DELTA_COLUMNS = ["Δ vs baseline", "95 % CI", "seeds", "threshold", "verdict", "seeds to settle"]
DASH = stats.DASH

FACTORS = {
    "step_init": "Step-size initial value",
    "step_lr": "Step-size learning rate",
    "scheduler": "Learning-rate scheduler",
    "distillation": "Distillation from the float baseline",
    "control": "Control: the float model trained as long as the quantized rows",
}
ADVICE = {  # what each factor's section opens with: the seed README's advice, quoted
    "step_init": "Seed README: “scale initial value: not to big, keep enough nozero weight”",
    "step_lr": "Seed README: “scale learning rate: down when to big”",
    "scheduler": "Seed README: “lr_scheduler: influence on final result”",
    "distillation": "The LSQ paper's distillation as this project implements it (docs/method.md): "
                    "the teacher is the run's own float baseline, temperature 1, cross-entropy "
                    "and KL to the teacher weighted 1:1.",
    "control": "Rows 1-4 train on from the float model for the quantized budget, so a row can "
               "end above float for the extra training alone. The control trains the float "
               "model on exactly as they are (the same epochs, lr, weight decay and schedule, "
               "nothing quantized); the drops against it are what quantization costs at equal "
               "training.",
}


def paper_ablation_note(factor: str) -> str:
    """What the LSQ paper's own ablation of ``factor`` was, beside the measured one: its numbers
    where confirmed, labelled as another dataset and model; "" where the paper has none."""
    if factor not in PAPER_ABLATIONS:
        return ""
    varied, numbers = PAPER_ABLATIONS[factor]
    if not numbers:
        return (f"Secondary summaries of the LSQ paper report its ablation of this factor, {varied}, "
                "on 2-bit ResNet-18 on ImageNet (another dataset and model than these runs). "
                "Neither the ablation nor its numbers could be confirmed from the paper's own "
                "text, so no number is shown (docs/paper-table.md).")
    return (f"The LSQ paper ablates this factor too, {varied}, on 2-bit ResNet-18 on ImageNet "
            "(another dataset and model than these runs); its top-1: "
            + ", ".join(f"{k} {v:.1f}" for k, v in numbers.items()) + ".")


def _names(*frames: pd.DataFrame | None) -> set[str]:
    return set().union(*(set(f["ablation"]) for f in frames if f is not None))


def factors_for(dataset: str, summaries: pd.DataFrame, in_progress: pd.DataFrame,
                diverged: pd.DataFrame | None = None) -> dict[str, str]:
    """The factors a page's analysis shows: each with a run on the page, and on the seed's tables
    every factor the seed names, so that one not yet run shows as "not run"."""
    found = _names(summaries, in_progress, diverged)
    with_runs = {a.factor for a in ABLATIONS if a.name in found}
    seed_table = get_table(dataset).source == "seed"
    return {factor: title for factor, title in FACTORS.items()
            if factor in with_runs or (seed_table and factor in SEED_FACTORS)}


def settings(factor: str) -> list[tuple[str, str]]:
    """(ablation name, value label) for a factor, the baseline (plain run, name "") first."""
    return [("", ABLATION_BASELINE_VALUES[factor])] + [
        (a.name, a.value) for a in ABLATIONS if a.factor == factor
    ]


def ablated_rows(summaries: pd.DataFrame, factor: str | None = None) -> list[int]:
    """The rows the runs' profile ablates (``lsq.experiments.ablation_rows``) plus any other row
    that has ablation runs; of ``factor`` only, when given (the control's row is row 0)."""
    names = {a.name for a in ABLATIONS if factor is None or a.factor == factor}
    if factor == CONTROL:
        planned = (0,)
    else:
        profiles = set(summaries["profile"].dropna()) if len(summaries) else set()
        datasets = set(summaries["dataset"].dropna()) if len(summaries) else set()
        own = get_table(datasets.pop()).table_ablations if len(datasets) == 1 else ()
        if own:  # a table that trains its own ablations (the paper's distilled rows)
            planned = tuple(row for row, _ in own)
        else:
            planned = ablation_rows(profiles.pop()) if len(profiles) == 1 else ABLATION_ROWS
        names -= {a.name for a in ABLATIONS if a.factor == CONTROL}
    extra = (set(summaries.loc[summaries["ablation"].isin(names), "row"]) if len(summaries)
             else set())
    return sorted(set(planned) | {int(r) for r in extra})


def has_ablations(summaries: pd.DataFrame, in_progress: pd.DataFrame,
                  diverged: pd.DataFrame | None = None) -> bool:
    return bool(_names(summaries, in_progress, diverged) & {a.name for a in ABLATIONS})


def _finals(summaries: pd.DataFrame, row: int, ablation: str, column: str) -> pd.Series:
    runs = summaries[(summaries["row"] == row) & (summaries["ablation"] == ablation)]
    return runs.set_index("seed")[column].astype(float)


def ablation_table(summaries: pd.DataFrame, in_progress: pd.DataFrame, factor: str,
                   diverged: pd.DataFrame | None = None) -> pd.DataFrame:
    """Numbers for one factor of one (dataset, profile): a line per (setting, row).

    Columns: ``setting``, ``ablation`` ("" = baseline), ``row``, ``top1_mean/std/n``,
    ``delta_mean/std/n`` (setting − baseline over the seeds both have) and ``delta_lo/hi`` (its
    95 % interval; NaN for n < 2), ``verdict`` (``costs``, ``gains``, ``no effect``,
    ``inconclusive``, ``not measured``; "" for the baseline line), ``seeds_needed`` (for an
    inconclusive one; None for "—"), ``baseline_std``, ``nonzero_mean`` (1 − final weight
    sparsity), ``in_progress``, ``diverged`` (seeds whose loss became non-finite) and
    ``diverged_where`` (one "seed s: epoch e, step t, first non-finite output L" per such seed).
    A line with only diverged seeds has the verdict ``diverged``.
    """
    records = []
    for row in ablated_rows(summaries, factor):
        baseline = _finals(summaries, row, "", "final_top1")
        for name, value in settings(factor):
            finals = _finals(summaries, row, name, "final_top1")
            accuracy = estimate(finals)
            delta = stats.paired(finals, baseline) if name else stats.NONE
            verdict, needed = _verdict(delta) if name else ("", None)
            lost = diverged_count(diverged, row, name)
            if lost and not accuracy.n:
                verdict, needed = DIVERGED, None
            sparsity = _finals(summaries, row, name, "final_weight_sparsity").dropna()
            waiting = int(((in_progress["row"] == row)
                           & (in_progress["ablation"] == name)).sum()) if len(in_progress) else 0
            records.append({
                "setting": value, "ablation": name, "row": row,
                "top1_mean": accuracy.mean, "top1_std": accuracy.std, "top1_n": accuracy.n,
                "delta_mean": delta.mean, "delta_std": delta.sd, "delta_n": delta.n,
                "delta_lo": delta.lo, "delta_hi": delta.hi,
                "verdict": verdict, "seeds_needed": needed,
                "baseline_std": estimate(baseline).std,
                "nonzero_mean": float((1 - sparsity).mean()) if len(sparsity) else math.nan,
                "in_progress": waiting, "diverged": lost,
                "diverged_where": _where_diverged(diverged, row, name) if lost else [],
            })
    return pd.DataFrame.from_records(records)


def _where_diverged(diverged: pd.DataFrame, row: int, ablation: str) -> list[str]:
    chosen = diverged[(diverged["row"] == row) & (diverged["ablation"] == ablation)]
    return [f"seed {r['seed']}: {run_format.where_diverged(r, layer=True)}"
            for _, r in chosen.sort_values("seed").iterrows()]


def _diverged_text(record: pd.Series) -> str:
    """ "k of n seeds diverged" for a line with diverged seeds, else "". """
    lost = int(record.get("diverged", 0) or 0)
    if not lost:
        return ""
    return f"{lost} of {lost + int(record['top1_n'])} seeds diverged"


def _verdict(delta: stats.Interval) -> tuple[str, int | None]:
    """(verdict word, the seeds that would settle an inconclusive one)."""
    verdict = stats.verdict(delta, ABLATION_THRESHOLD, WITHIN)
    if verdict == stats.FAILS:  # wholly outside ±T: the side says which
        return (COSTS if delta.hi < 0 else GAINS), None
    if verdict == stats.HOLDS:
        return NO_EFFECT, None
    if verdict == stats.INCONCLUSIVE:
        return verdict, stats.seeds_to_settle(delta, ABLATION_THRESHOLD, WITHIN)
    return verdict, None


def _delta(record: pd.Series) -> stats.Interval:
    return stats.Interval(record["delta_mean"], record["delta_std"], int(record["delta_n"]),
                          record["delta_lo"], record["delta_hi"])


def _seeds_needed(record: pd.Series) -> int | None:
    value = record["seeds_needed"]
    return None if value is None or pd.isna(value) else int(value)


def threshold_text() -> str:
    return f"±{ABLATION_THRESHOLD:.2f}"


def format_ablation_table(numbers: pd.DataFrame) -> pd.DataFrame:
    """Display strings (the same frame feeds markdown and HTML)."""
    lines = []
    for _, r in numbers.iterrows():
        accuracy = Estimate(r["top1_mean"], r["top1_std"], int(r["top1_n"]))
        delta, baseline = _delta(r), not r["ablation"]
        lost = _diverged_text(r)
        if accuracy.measured:
            final = accuracy.format() + (f"; {lost}" if lost else "")
        elif lost:
            final = lost
        else:
            final = f"in progress ({r['in_progress']})" if r["in_progress"] else NOT_RUN
        if baseline:
            cells = ["reference", DASH, DASH, DASH, DASH, DASH]
        elif not accuracy.measured:
            cells = [DASH] * 4 + ([DIVERGED, DASH] if lost else [DASH, DASH])
        elif not delta.measured:
            cells = ["no baseline run", DASH, DASH, threshold_text(), stats.NOT_MEASURED, DASH]
        else:
            cells = [delta.format_mean(), delta.format_interval(), str(delta.n), threshold_text(),
                     r["verdict"], stats.format_seeds(_seeds_needed(r))]
        lines.append({
            "setting": r["setting"] + (" (baseline)" if baseline else ""),
            "row": str(r["row"]),
            "final top-1": final,
            **dict(zip(DELTA_COLUMNS, cells)),
            "nonzero weights at end": DASH if math.isnan(r["nonzero_mean"])
            else f"{100 * r['nonzero_mean']:.1f}%",
        })
    return pd.DataFrame(lines, columns=["setting", "row", "final top-1", *DELTA_COLUMNS,
                                        "nonzero weights at end"])


def verdicts(numbers: pd.DataFrame) -> list[str]:
    """One sentence per (ablation, row), derived from ``ablation_table`` numbers.

    Each ablation run starts from the same float model as its baseline run (same seed), so the
    per-seed differences are the measurement, and their interval decides: not the accuracy
    spread across seeds, which is mostly the float baselines' own seed-to-seed variation.
    """
    return [_verdict_sentence(r) for _, r in numbers[numbers["ablation"] != ""].iterrows()]


def _verdict_sentence(r: pd.Series) -> str:
    where = f"row {r['row']}"
    detail = "; ".join(r.get("diverged_where") or [])
    if not r["top1_n"]:
        if detail:
            return (f"{r['setting']} on {where}: every seed diverged (the loss became "
                    f"non-finite: {detail}).")
        return f"{r['setting']} on {where}: not run."
    tail = (f"; {_diverged_text(r)} (the loss became non-finite: {detail}), so the numbers "
            "rest on the seeds that finished" if detail else "")
    delta = _delta(r)
    if not delta.measured:
        return f"{r['setting']} on {where}: the baseline run is missing, no Δ{tail}."
    seeds = f"{delta.n} seed{'s' if delta.n > 1 else ''}"
    nonzero = ""
    if not math.isnan(r["nonzero_mean"]):
        nonzero = f", ending with {100 * r['nonzero_mean']:.0f}% nonzero weights"
    if not delta.has_interval:
        verb = "costs" if delta.mean < 0 else "gains"
        return (f"{r['setting']} {verb} {abs(delta.mean):.2f} points on {where} "
                f"(1 seed, no interval: indicative only){nonzero}{tail}.")
    ci = f"95 % CI {delta.format_interval()}, {seeds}"
    if r["verdict"] in (COSTS, GAINS):
        return (f"{r['setting']} {r['verdict']} {abs(delta.mean):.2f} points on "
                f"{where} ({ci}){nonzero}{tail}.")
    if r["verdict"] == NO_EFFECT:
        return (f"{r['setting']} on {where}: {delta.format_mean()} points ({ci}), "
                f"within {threshold_text()}: no effect{nonzero}{tail}.")
    needed = _seeds_needed(r)
    settle = (f"{needed} seeds would settle it at this mean and spread" if needed
              else "no number of seeds would settle it at this mean")
    boundary = "0" if ABLATION_THRESHOLD == 0 else threshold_text()
    return (f"{r['setting']} on {where}: {delta.format_mean()} points ({ci}), "
            f"the interval includes {boundary}: inconclusive; {settle}{nonzero}{tail}.")


# --- the control: drops at equal training ------------------------------------------------------


CONTROL_COLUMNS = ["row", "setting", "seeds", "drop vs float as trained", "95 % CI",
                   "drop vs the control", "95 % CI (control)"]


def control_drops(summaries: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Each quantized row's drop, paired per seed, against the float model as trained (row 0,
    the table's drop) and against the control (row 0 trained on with the rows' own recipe),
    both over the seeds the control has, so that the two compare the same models:
    ``row``, ``label``, ``drop`` and ``control_drop`` (:class:`lsq.report.stats.Interval`)."""
    names = [a.name for a in ABLATIONS if a.factor == CONTROL]
    control = _finals(summaries, 0, names[0], "final_top1") if names else pd.Series(dtype=float)
    plain = _finals(summaries, 0, "", "final_top1")
    if len(control):
        plain = plain[plain.index.isin(control.index)]
    records = []
    for row in get_table(dataset).rows:
        finals = _finals(summaries, row.id, "", "final_top1")
        if row.is_float or finals.empty:
            continue
        records.append({"row": row.id, "label": row.label, "drop": stats.paired(plain, finals),
                        "control_drop": stats.paired(control, finals)})
    return pd.DataFrame.from_records(records, columns=["row", "label", "drop", "control_drop"])


def control_note(summaries: pd.DataFrame) -> str:
    """The results' note where the page has control runs: the drops above are against a float
    model that trained fewer epochs than the rows; the Analysis page has them at equal training."""
    names = {a.name for a in ABLATIONS if a.factor == CONTROL}
    seeds = summaries.loc[summaries["ablation"].isin(names), "seed"].nunique() if len(summaries) \
        else 0
    if not seeds:
        return ""
    return (f"rows 1-4 trained on from row 0 for their own epochs, so the drops above compare "
            f"models trained for different budgets. The float control ({seeds} seed"
            f"{'s' if seeds != 1 else ''}) trains row 0 on exactly as they are; the drops against "
            "it, at equal training, are on the Analysis page:")


def format_control_drops(drops: pd.DataFrame) -> pd.DataFrame:
    lines = [{"row": str(r["row"]), "setting": r["label"], "seeds": str(r["control_drop"].n or DASH),
              "drop vs float as trained": r["drop"].format_mean(),
              "95 % CI": r["drop"].format_interval(),
              "drop vs the control": r["control_drop"].format_mean(),
              "95 % CI (control)": r["control_drop"].format_interval()}
             for _, r in drops.iterrows()]
    return pd.DataFrame(lines, columns=CONTROL_COLUMNS)


def control_sentences(drops: pd.DataFrame) -> list[str]:
    """One sentence per row: its drop at equal training, and whether the row still ends above
    float once the float model has trained as long (the interval wholly below 0)."""
    sentences = []
    for _, r in drops.iterrows():
        drop, control = r["drop"], r["control_drop"]
        if not control.measured:
            sentences.append(f"Row {r['row']}: no control run of its seeds, so no drop at equal "
                             "training.")
            continue
        ci = (f"95 % CI {control.format_interval()}, {control.n} seeds" if control.has_interval
              else "1 seed, no interval")
        if control.has_interval and control.hi < 0:
            side = "above the equally trained float model"
        elif control.has_interval and control.lo > 0:
            side = "below the equally trained float model"
        else:
            side = "not distinguishable from the equally trained float model"
        sentences.append(f"Row {r['row']} ({r['label']}): drop {control.format_mean()} points at "
                         f"equal training ({ci}; the table's drop, against the float model as "
                         f"trained: {drop.format_mean()}): {side}.")
    return sentences
