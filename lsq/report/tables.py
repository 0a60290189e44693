"""The seed-format results table of one (dataset, profile), as numbers and as display strings.

``results_table`` returns the numbers (one row per table row 0-4, every aggregate over seeds);
``format_results_table`` turns them into the seed's columns (ID, quan_lr, constr_w, constr_a,
lr_base, epoch, test_acc, drop_acc; acc/drop for top-1 and top-5 on ImageNet) with the
published value and Δ vs paper beside each measured one (for a dataset that stands in for a
published one, Fashion-MNIST for CIFAR-10, the published rows of that one). Markdown and HTML
both render the formatted DataFrame, so they cannot disagree.

The settings columns (quan_lr, constr_w, constr_a, lr_base) say what the row's runs trained with,
from their ``config.yaml`` (``collect.CONFIG_COLUMNS``): a value that differs from the table's
recipe says so beside it, runs of one row that disagree show every value, and a row without runs
shows the recipe it would train with.

Drops are ``float baseline − row``. When every seed of a row has a float run of the same seed (the
run it was fine-tuned from), the drop is the mean ± std of the per-seed paired drops; otherwise it
is the difference of the means, marked "unpaired", with no std.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from lsq.experiments import Row, Table, get_table

NOT_RUN = "not run"
DASH = "—"
SETTINGS = ("quan_lr", "constr_w", "constr_a", "lr_base")


@dataclass(frozen=True)
class Estimate:
    """A mean over seeds with its sample std (NaN for n < 2) and n; ``paired`` for differences."""

    mean: float
    std: float
    n: int
    paired: bool = True

    @property
    def measured(self) -> bool:
        return self.n > 0 and not math.isnan(self.mean)

    def format(self, digits: int = 2, signed: bool = False, show_n: bool = True) -> str:
        """``"92.20 ± 0.20 (n=3)"``; ``show_n=False`` where a seeds column gives n."""
        if not self.measured:
            return NOT_RUN
        sign = "+" if signed else ""
        mean = 0.0 if abs(self.mean) < 0.5 * 10**-digits else self.mean  # no "-0.00"
        text = f"{mean:{sign}.{digits}f}"
        if not self.paired:
            return f"{text} (unpaired)"
        if self.n >= 2:
            text += f" ± {self.std:.{digits}f}"
        return f"{text} (n={self.n})" if show_n else text


EMPTY = Estimate(float("nan"), float("nan"), 0)


def estimate(values: pd.Series | list[float]) -> Estimate:
    values = pd.Series(values, dtype=float).dropna()
    if values.empty:
        return EMPTY
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return Estimate(float(values.mean()), std, int(len(values)))


def plain_runs(summaries: pd.DataFrame) -> pd.DataFrame:
    """The table's own runs (no ablation)."""
    return summaries[summaries["ablation"] == ""]


def by_seed(summaries: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Final accuracy of the plain runs as a (seed × row) frame."""
    return plain_runs(summaries).pivot_table(index="seed", columns="row",
                                             values=f"final_{metric}", aggfunc="mean")


def paired_difference(first: pd.Series, second: pd.Series) -> Estimate:
    """``first − second`` over seeds: paired per seed when one seed set contains the other."""
    first, second = first.dropna(), second.dropna()
    if first.empty or second.empty:
        return EMPTY
    a, b = set(first.index), set(second.index)
    if a <= b or b <= a:
        common = sorted(a & b)
        return estimate(first.loc[common] - second.loc[common])
    return Estimate(float(first.mean() - second.mean()), float("nan"), min(len(a), len(b)), False)


def row_difference(pivot: pd.DataFrame, first: int, second: int) -> Estimate:
    """Accuracy of row ``first`` minus row ``second`` (a drop when ``first`` is 0)."""
    if first not in pivot or second not in pivot:
        return EMPTY
    return paired_difference(pivot[first], pivot[second])


def reference_table(dataset: str) -> Table | None:
    """The published table a dataset's rows are compared with: its own, or the one it stands in
    for (``Table.stands_in_for``); None when there is neither."""
    table = get_table(dataset)
    if table.has_published:
        return table
    return get_table(table.stands_in_for) if table.stands_in_for else None


def paper_label(dataset: str) -> str:
    """Sub-column name of the published values: "paper", or "CIFAR-10 paper" for a stand-in."""
    reference = reference_table(dataset)
    if reference is None or reference.dataset == dataset:
        return PAPER
    return f"{reference.name} {PAPER}"


def stand_in_note(dataset: str) -> str:
    """Why a dataset stands in for a published one, and what that does and does not show ("" for
    a dataset that stands in for none)."""
    table = get_table(dataset)
    if not table.stands_in_for:
        return ""
    other = get_table(table.stands_in_for)
    grey = "grey" if table.in_channels == 1 else "colour"
    model = table.model.replace("resnet", "ResNet-")
    return (
        f"{table.name} stands in for {other.name} here: the same rows, trained the same way, "
        f"on a {model} with {table.image_size}×{table.image_size} {grey} images through a "
        f"{table.in_channels}-channel stem, because {table.stand_in_reason}. "
        f"What it shows: how much each row's quantization ({_levels_text(table)}) costs against "
        f"a float baseline trained the same way on a real {table.num_classes}-class image task, "
        f"and whether each claim checked below carries over to that task. What it does not "
        f"show: the published "
        f"{other.name} numbers themselves. {table.name} is a different task, so its float and "
        f"quantized accuracies sit at another level; Δ against the {other.name} rows compares two "
        f"datasets (the drops are the closer comparison), and no verdict here confirms or "
        f"refutes the {other.name} table."
    )


def _levels_text(table: Table) -> str:
    quantized = [row for row in table.rows if not row.is_float]
    if quantized and all(row.bits for row in quantized):
        return "w/a " + ", ".join(f"{row.bits}/{row.bits} bits" for row in quantized)
    return "ternary weights, 2-bit activations"


def metric_columns(table: Table) -> dict[str, tuple[str, str]]:
    """Seed column names per metric: (accuracy column, drop column)."""
    if table.metrics == ("top1",):
        return {"top1": ("test_acc", "drop_acc")}
    return {m: (f"acc_{m}", f"drop_{m}") for m in table.metrics}


def results_table(summaries: pd.DataFrame, in_progress: pd.DataFrame, dataset: str,
                  diverged: pd.DataFrame | None = None) -> pd.DataFrame:
    """Numbers of the seed-format table of one (dataset, profile), one row per table row.

    ``summaries``/``in_progress``: the runs of that (dataset, profile) only (``Runs.select``).
    Columns: the settings of ``Row.as_columns()`` as the runs used them (``run_settings``), the
    row's own in ``recipe_<setting>``, ``epochs_run`` (min and max over seeds),
    ``in_progress`` and ``diverged`` (counts of ``Runs.diverged``) and per metric ``m``: ``m_mean/std/n``, ``drop_m_mean/std/n/paired``,
    ``paper_m``, ``paper_drop_m``, ``delta_m``, ``delta_drop_m`` (measured − published).
    """
    table = get_table(dataset)
    reference = reference_table(dataset)
    runs = plain_runs(summaries)
    waiting = in_progress[in_progress["ablation"] == ""] if len(in_progress) else in_progress
    pivots = {metric: by_seed(summaries, metric) for metric in table.metrics}
    records = []
    for row in table.rows:
        published_row = reference.row(row.id).published if reference is not None else {}
        row_runs = runs[runs["row"] == row.id]
        record = dict(row.as_columns())
        row_waiting = waiting[waiting["row"] == row.id] if len(waiting) else waiting
        record.update(run_settings(row, [row_runs, row_waiting]))
        record["epochs_min"] = row_runs["epochs"].min() if len(row_runs) else float("nan")
        record["epochs_max"] = row_runs["epochs"].max() if len(row_runs) else float("nan")
        record["in_progress"] = int((waiting["row"] == row.id).sum()) if len(waiting) else 0
        record["diverged"] = diverged_count(diverged, row.id, "")
        record["data_kind"] = ",".join(sorted(set(row_runs["data_kind"].dropna())))
        for metric in table.metrics:
            pivot = pivots[metric]
            accuracy = estimate(pivot[row.id]) if row.id in pivot else EMPTY
            drop = row_difference(pivot, 0, row.id) if row.id != 0 else EMPTY
            published = published_row.get(metric, float("nan"))
            published_drop = published_row.get(f"drop_{metric}", float("nan"))
            record.update({
                f"{metric}_mean": accuracy.mean, f"{metric}_std": accuracy.std,
                f"{metric}_n": accuracy.n,
                f"drop_{metric}_mean": drop.mean, f"drop_{metric}_std": drop.std,
                f"drop_{metric}_n": drop.n, f"drop_{metric}_paired": drop.paired,
                f"paper_{metric}": published, f"paper_drop_{metric}": published_drop,
                f"delta_{metric}": accuracy.mean - published,
                f"delta_drop_{metric}": drop.mean - published_drop,
            })
        records.append(record)
    return pd.DataFrame.from_records(records)


def run_settings(row: Row, frames: list[pd.DataFrame]) -> dict:
    """What the runs in ``frames`` (finished and in progress) trained with, per ``SETTINGS``:
    one value, a tuple of every value when they disagree, None when no run's config was
    readable; the row's recipe when there is no run. ``recipe_<setting>``: the row's recipe."""
    recipe = row.as_columns()
    runs = [frame for frame in frames if len(frame)]
    settings = {}
    for name in SETTINGS:
        settings[f"recipe_{name}"] = recipe[name]
        if not runs:
            settings[name] = recipe[name]
            continue
        values = sorted(set(pd.concat([frame.reindex(columns=[name])[name] for frame in runs])
                            .dropna()))
        settings[name] = None if not values else values[0] if len(values) == 1 else tuple(values)
    return settings


def _setting(value, recipe) -> str:
    """A settings cell: the value the runs used, the recipe's beside a value that differs from
    it, and every value where the runs of the row disagree."""
    def text(v) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    if isinstance(value, tuple):
        return f"{' / '.join(map(text, value))} (runs differ; recipe {text(recipe)})"
    return text(value) if value == recipe else f"{text(value)} (recipe {text(recipe)})"


def _number(value: float, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:{'+' if signed else ''}.{digits}f}"


def _epochs_run(record: pd.Series) -> str:
    low, high = record["epochs_min"], record["epochs_max"]
    if math.isnan(low):
        return DASH
    return f"{int(low)}" if low == high else f"{int(low)}–{int(high)}"


def diverged_count(diverged: pd.DataFrame | None, row: int, ablation: str) -> int:
    """How many seeds of (row, ablation) diverged (``Runs.diverged``)."""
    if diverged is None or diverged.empty:
        return 0
    return int(((diverged["row"] == row) & (diverged["ablation"] == ablation)).sum())


def _measured_cell(estimate_: Estimate, in_progress: int, seeds: int, signed: bool = False,
                   diverged: int = 0) -> str:
    if not estimate_.measured:
        if diverged:
            return "diverged"
        return "in progress" if in_progress else NOT_RUN
    # n is in the seeds column; a cell says its own n only when it rests on fewer seeds.
    return estimate_.format(signed=signed, show_n=estimate_.n != seeds)


def _seeds_cell(seeds: int, in_progress: int, diverged: int = 0) -> str:
    if not seeds and not in_progress and not diverged:
        return DASH
    return (f"{seeds}" + (f" (+{diverged} diverged)" if diverged else "")
            + (f" (+{in_progress} running)" if in_progress else ""))


MEASURED, PAPER, DELTA = "measured", "paper", "Δ"


def format_results_table(numbers: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Display strings in the seed's column order, published value and Δ beside each number.

    Columns are two-level: ``(seed column, "")`` for settings, and for tables with published
    numbers ``(seed column, "measured" | "paper" | "Δ")`` ("CIFAR-10 paper" where the dataset
    stands in for CIFAR-10, see ``paper_label``); ``flat_name`` gives one-line names.
    Accuracies and drops read "mean ± std" over the seeds of the ``seeds`` column (a single seed
    shows its value and seeds = 1); runs still training are counted there as "(+k running)",
    runs whose loss became non-finite as "(+k diverged)".
    """
    table = get_table(dataset)
    columns = metric_columns(table)
    reference = reference_table(dataset)
    # No paper columns where the published table holds no number (the LSQ paper's, here).
    has_numbers = reference is not None and any(row.published for row in reference.rows)
    paper = paper_label(dataset) if has_numbers else None
    paper_epochs = set(numbers["epoch"].dropna()) if len(numbers) else set()
    stated = len(numbers) and numbers["epoch"].notna().all()
    # One paper epoch count for all rows (the seed's 90) goes into the header, not every cell;
    # a source that states none (the LSQ paper's, as far as readable) gets none.
    epoch_header = f"epoch (paper {int(paper_epochs.pop())})" if stated and len(paper_epochs) == 1 \
        else "epoch"
    rows = []
    for _, record in numbers.iterrows():
        epochs = _epochs_run(record)
        out = {
            ("ID", ""): str(record["ID"]),
            **{(name, ""): _setting(record[name], record.get(f"recipe_{name}", record[name]))
               for name in SETTINGS},
            (epoch_header, ""): epochs if epoch_header != "epoch" or pd.isna(record["epoch"])
            else f"{epochs} (paper {int(record['epoch'])})",
            ("seeds", ""): _seeds_cell(int(record[f"{table.metrics[0]}_n"]),
                                       int(record["in_progress"]), int(record["diverged"])),
        }
        for kind, prefix, signed in (("acc", "", False), ("drop", "drop_", True)):
            for metric, names in columns.items():
                name = names[0] if kind == "acc" else names[1]
                value = Estimate(record[f"{prefix}{metric}_mean"], record[f"{prefix}{metric}_std"],
                                 int(record[f"{prefix}{metric}_n"]),
                                 bool(record.get(f"{prefix}{metric}_paired", True)))
                if kind == "drop" and record["ID"] == 0:
                    cell = "reference"
                else:
                    cell = _measured_cell(value, int(record["in_progress"]),
                                          int(record[f"{metric}_n"]), signed=signed,
                                          diverged=int(record["diverged"]))
                if paper is None:
                    out[(name, "")] = cell
                    continue
                out[(name, MEASURED)] = cell
                out[(name, paper)] = _number(record[f"paper_{prefix}{metric}"])
                out[(name, DELTA)] = _number(record[f"delta_{prefix}{metric}"], signed=True)
        rows.append(out)
    keys = list(rows[0]) if rows else [("ID", "")]
    return pd.DataFrame(rows, columns=pd.MultiIndex.from_tuples(keys))


def flat_name(column) -> str:
    """One-line name of a (group, sub) column: "test_acc", "test_acc (paper)", "Δ test_acc"."""
    if not isinstance(column, tuple):
        return str(column)
    group, sub = column
    if sub in ("", MEASURED):
        return group
    return f"Δ {group}" if sub == DELTA else f"{group} ({sub})"


def flatten(frame: pd.DataFrame) -> pd.DataFrame:
    """The same frame with one-line column names (markdown, simple consumers)."""
    if not isinstance(frame.columns, pd.MultiIndex):
        return frame
    return frame.set_axis([flat_name(c) for c in frame.columns], axis=1)


def implied_float_baselines(dataset: str) -> pd.DataFrame:
    """The published float accuracy each quantized row implies (accuracy + drop), per metric.

    The paper's table gives no float row; each row implies one, and they differ by a few
    hundredths (e.g. CIFAR-10 row 2 implies 89.54, the others 89.56).
    """
    table = get_table(dataset)
    records = []
    for row in table.rows:
        if row.is_float or not row.published:
            continue
        record = {"ID": row.id}
        for metric in table.metrics:
            if metric in row.published and f"drop_{metric}" in row.published:
                record[f"implied float {metric}"] = round(
                    row.published[metric] + row.published[f"drop_{metric}"], 2)
        records.append(record)
    return pd.DataFrame(records)


def implied_baseline_note(dataset: str) -> str:
    """One sentence on the implied published float baselines and their spread; "" if none."""
    table = get_table(dataset)
    implied = implied_float_baselines(dataset)
    if implied.empty:
        return ""
    parts = []
    for metric in table.metrics:
        used = table.row(0).published[metric]
        column = implied[f"implied float {metric}"]
        agree = [str(i) for i, v in zip(implied["ID"], column) if abs(v - used) < 1e-9]
        differ = {}
        for i, v in zip(implied["ID"], column):
            if abs(v - used) >= 1e-9:
                differ.setdefault(f"{v:.2f}", []).append(str(i))
        notes = [_rows_text(agree)] + [f"{_rows_text(ids)} impl{'y' if len(ids) > 1 else 'ies'} "
                                       f"{value}" for value, ids in differ.items()]
        parts.append(f"{metric} {used:.2f} ({'; '.join(notes)})")
    return ("The paper publishes no float row; accuracy + drop of each row implies one. This "
            f"report uses {' and '.join(parts)}. The differences are rounding in the published "
            "table.")


def _rows_text(ids: list[str]) -> str:
    return f"row{'s' if len(ids) > 1 else ''} {', '.join(ids)}"
