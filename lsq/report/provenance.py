"""The sentences a page says about its runs: epochs, data, wall time, the published numbers it
implies, what ``make reproduce`` found, and which runs' compute is the page's own."""

from __future__ import annotations


import pandas as pd

from lsq.experiments import get_table
from lsq.report import run_tables, tables
from lsq.report.collect import Runs


def implied_note(dataset: str) -> str:
    """The implied published float baseline of the table the page is compared with."""
    reference = tables.reference_table(dataset)
    if reference is None:
        return ""
    note = tables.implied_baseline_note(reference.dataset)
    if not note:
        return ""
    return note if reference.dataset == dataset else f"For the {reference.name} rows: {note}"

REPRODUCTION = "reproduction.json"  # written by `make reproduce` (lsq compare-runs --json)

def reproduction_text(record: dict, summaries: pd.DataFrame, prefix: str) -> str:
    """One sentence on a retraining of some of the page's runs (``lsq.compare.record``): which
    kind of match it found (identical, within seed noise, differs) and the CPU kinds of both
    sides; or on its being stale: a run it compared has been retrained or removed since."""
    target = "make reproduce-full" if prefix.endswith("/full") else "make reproduce"
    finished = dict(zip(summaries["path"], summaries["finished_at"]))
    changed = [run["run"] for run in record["runs"]
               if finished.get(f"{prefix}/{run['run']}") != run.get("reference_finished_at")]
    if changed:
        return (f"a reproduction check from {record['compared_at'][:10]} no longer applies: "
                f"{', '.join(changed)} changed since (retrained, removed, or compared before the "
                f"check recorded which run it saw); run `{target}` again.")
    # Records from before the CPU kinds were recorded name the devices of the retrained runs
    # only; the page's summaries have the reference's.
    compared = summaries[summaries["path"].isin([f"{prefix}/{run['run']}" for run in record["runs"]])]
    made_on = ", ".join(record.get("reference_cpu_kinds") or distinct(compared["device"])) or "?"
    retrained_on = ", ".join(record.get("candidate_cpu_kinds") or record["candidate_devices"]) or "?"
    where = (f"retrained at commit {', '.join(record['candidate_git_shas']) or '?'} on "
             f"{retrained_on}, {record['compared_at'][:10]}, against the runs above made on {made_on}")
    names = ", ".join(run["run"] for run in record["runs"])
    count = len(record["runs"])
    runs = f"{count} run{'' if count == 1 else 's'}"
    identical = [run for run in record["runs"] if run["verdict"] == "identical"]
    noise = [run for run in record["runs"] if run["verdict"] == "within seed noise"]
    other = [run for run in record["runs"] if run not in identical and run not in noise]
    if len(identical) == count:
        found = "all identical bit for bit, every epoch record and summary result"
    else:
        parts = [f"{len(identical)} identical bit for bit"] if identical else []
        if noise:
            largest = max(abs(run["final_top1_difference"]) for run in noise)
            parts.append(f"{len(noise)} within seed noise (|Δ final top-1| at most {largest:.2f} "
                         "points, below the seed standard deviation of its row)")
        if other:
            first = other[0]
            why = first.get("reason") or ", ".join(filter(None, (first["verdict"], first["first_difference"])))
            parts.append(f"{len(other)} differ{'s' if len(other) == 1 else ''} (first: {first['run']}, {why})")
        found = "; ".join(parts)
    return f"{runs} ({names}) {where}: {found} (`{target}`)."

def distinct(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values.dropna()})

def epoch_counts(frame: pd.DataFrame) -> str:
    """The distinct epoch counts of some runs, "4" or "2/3" ("—" for none)."""
    return "/".join(str(int(v)) for v in sorted(set(frame["epochs"].dropna()))) or "—"

def epochs_text(summaries: pd.DataFrame, dataset: str) -> str:
    plain = summaries[summaries["ablation"] == ""]
    if plain.empty:
        return "no finished run yet"
    parts = []
    base, quantized = plain[plain["row"] == 0], plain[plain["row"] > 0]
    if len(base):
        counts = epoch_counts(base)
        note = " (pretrained weights, evaluated only)" if counts == "0" else ""
        parts.append(f"float baseline {counts} epoch{'' if counts == '1' else 's'}{note}")
    if len(quantized):
        counts = epoch_counts(quantized)
        parts.append(f"quantized rows {counts} epoch{'' if counts == '1' else 's'}")
    published = get_table(dataset).row(1).epoch
    return "; ".join(parts) + (f" (the paper: {published})" if published is not None
                               else " (the paper's count: not stated by a readable source)")

def short_epochs(summaries: pd.DataFrame) -> str:
    plain = summaries[summaries["ablation"] == ""]
    return f"{epoch_counts(plain[plain['row'] == 0])} / {epoch_counts(plain[plain['row'] > 0])}"

def data_text(summaries: pd.DataFrame, kinds: set) -> str:
    if summaries.empty:
        return "—"
    kind = "synthetic" if "synthetic" in kinds else "/".join(sorted(kinds)) or "unknown"
    train = distinct(summaries["train_images"].map(lambda v: f"{int(v)}" if pd.notna(v) else None))
    test = distinct(summaries["test_images"].map(lambda v: f"{int(v)}" if pd.notna(v) else None))
    return f"{kind}; {'/'.join(train) or '—'} train images, {'/'.join(test) or '—'} test images"

def wall_text(summaries: pd.DataFrame) -> str:
    if summaries.empty:
        return "—"
    wall = summaries["wall_seconds"].dropna()
    total, median = run_tables.format_duration(wall.sum()), run_tables.format_duration(wall.median())
    return (f"{len(summaries)} finished runs, {total} in total ({wall.sum() / 3600:.3f} "
            f"device-hours), median {median} per run")


def own_runs(runs: Runs) -> pd.DataFrame:
    """The finished runs a page trained itself: without the float runs it takes from another
    table (``Table.baseline_from``), whose compute that table's page counts."""
    source = get_table(runs.dataset).baseline_from
    summaries = runs.summaries
    if source is None or summaries.empty:
        return summaries
    return summaries[~summaries["path"].str.startswith(f"{source}/")]


def page_wall_text(runs: Runs) -> str:
    own = own_runs(runs)
    borrowed = len(runs.summaries) - len(own)
    if not borrowed:
        return wall_text(own)
    source = get_table(runs.dataset).baseline_from
    return (f"{wall_text(own)}; besides, the {borrowed} float run{'s' if borrowed != 1 else ''} "
            f"of row 0, taken from the {source} table, whose page counts their compute")
