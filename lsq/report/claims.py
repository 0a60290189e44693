"""The seed README's claims (``lsq.experiments.CLAIMS``), each decided by a 95 % interval.

Every comparison of a claim is a paired per-seed difference of final top-1 (runs paired by seed),
with its mean and 95 % Student-t interval (:mod:`lsq.report.stats`). A comparison *holds* when its
whole interval lies on the claim's side of the threshold, *does not hold* when it lies wholly on
the other side, and is *inconclusive* otherwise. A claim holds when all its comparisons hold,
does not hold when any does not, and is inconclusive otherwise (also when part of it was not run).
An inconclusive claim says how many seeds would settle it at the observed mean and spread.

Where the paper published the table (or the one a dataset stands in for), the same rule is
applied to the published numbers, which, one value each, are compared as points.

All comparisons are in top-1 accuracy points; drops are ``float − quantized`` (see tables.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from lsq.experiments import CLAIMS, FIRST_LAST_ACROSS, FIRST_LAST_DATASETS, Claim, Comparison
from lsq.report import stats
from lsq.report.collect import longest_profile
from lsq.report.stats import FAILS, HOLDS, INCONCLUSIVE, NOT_MEASURED, Interval
from lsq.report.tables import by_seed, reference_table

__all__ = ["CLAIMS", "FAILS", "HOLDS", "INCONCLUSIVE", "NOT_MEASURED", "Part", "Verdict",
           "claims_for", "claims_table", "evaluate_claims", "first_last_across_datasets",
           "published_pivot"]

VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_MEASURED)


@dataclass(frozen=True)
class Part:
    """One comparison of a claim: its interval, verdict and the seeds that would settle it."""

    label: str
    interval: Interval
    verdict: str
    seeds_needed: int | None
    note: str = ""  # why there is no number, e.g. "not run"


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str
    parts: tuple[Part, ...]
    caveat: str = ""
    paper_verdict: str = ""  # the same rule on the published numbers; "" if none published
    seeds_needed: int | None = None  # for an inconclusive claim; None: "—"

    @property
    def n_seeds(self) -> int:
        """The fewest seeds any measured comparison rests on (0: none measured)."""
        return min((p.interval.n for p in self.parts if p.interval.measured), default=0)

    @property
    def evidence(self) -> str:
        """The numbers in one line, e.g. ``drop row 1 = +0.10, 95 % CI [-0.40, +0.60] (n=3)``."""
        return "; ".join(_part_text(p) for p in self.parts)


def _part_text(part: Part) -> str:
    if not part.interval.measured:
        return f"{part.label}: {part.note or 'not run'}"
    found = part.interval
    if not found.has_interval:
        return f"{part.label} = {found.format_mean()} (1 seed, no interval)"
    return f"{part.label} = {found.format_mean()}, 95 % CI {found.format_interval()} (n={found.n})"


# --- deciding ------------------------------------------------------------------------------------


def _part(label: str, found: Interval, claim: Claim, note: str = "") -> Part:
    verdict = stats.verdict(found, claim.threshold, claim.side)
    needed = stats.seeds_to_settle(found, claim.threshold, claim.side) \
        if verdict == INCONCLUSIVE else None
    return Part(label, found, verdict, needed, note)


def _compare(pivot: pd.DataFrame, comparison: Comparison,
             training: set[int]) -> tuple[Interval, str]:
    """The paired interval of one comparison on a (seed × row) pivot, or why there is none
    (``training``: rows with runs still in progress)."""
    missing = [row for row in (comparison.first, comparison.second) if row not in pivot]
    if missing:
        state = "in progress" if missing[0] in training else "not run"
        return stats.NONE, f"row {missing[0]} {state}"
    found = stats.paired(pivot[comparison.first], pivot[comparison.second])
    return found, "" if found.measured else "no seed has both rows"


def _combine(claim: Claim, parts: tuple[Part, ...], caveats: list[str],
             paper: str = "") -> Verdict:
    verdicts = [p.verdict for p in parts]
    if all(v == NOT_MEASURED for v in verdicts):
        return Verdict(claim, NOT_MEASURED, parts, "; ".join(caveats), paper)
    if FAILS in verdicts:
        return Verdict(claim, FAILS, parts, "; ".join(caveats), paper)
    if all(v == HOLDS for v in verdicts):
        return Verdict(claim, HOLDS, parts, "; ".join(caveats), paper)
    if NOT_MEASURED in verdicts:
        caveats = caveats + ["only part of the comparison was run"]
        needed = None
    else:
        # The claim is settled once its last open comparison is.
        open_parts = [p.seeds_needed for p in parts if p.verdict == INCONCLUSIVE]
        needed = None if None in open_parts else max(open_parts)
    return Verdict(claim, INCONCLUSIVE, parts, "; ".join(caveats), paper, needed)


def _caveats(parts: tuple[Part, ...], data_kind: str) -> list[str]:
    notes = []
    if data_kind == "synthetic":
        notes.append("synthetic data: this verdict measures nothing about LSQ")
    if any(p.interval.n == 1 for p in parts):
        notes.append("a single seed: no interval, so no verdict")
    return notes


def _paper_verdict(claim: Claim, published: pd.DataFrame, dataset: str) -> str:
    if published.empty:
        return ""
    verdict = _published_verdict(claim, published)
    reference = reference_table(dataset)
    return verdict if reference.dataset == dataset else f"{verdict} ({reference.name} table)"


def _published_verdict(claim: Claim, published: pd.DataFrame) -> str:
    values = [published[c.first].iloc[0] - published[c.second].iloc[0]
              if c.first in published and c.second in published else float("nan")
              for c in claim.comparisons]
    verdicts = [stats.point_verdict(v, claim.threshold, claim.side) for v in values]
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else NOT_MEASURED


def published_pivot(dataset: str) -> pd.DataFrame:
    """The published top-1 numbers as a one-"seed" pivot: the dataset's own table, or the one it
    stands in for (empty when there is none)."""
    table = reference_table(dataset)
    if table is None:
        return pd.DataFrame()
    values = {row.id: row.published["top1"] for row in table.rows if "top1" in row.published}
    return pd.DataFrame([values], index=pd.Index([0], name="seed"))


def claims_for(dataset: str) -> list[str]:
    """Claim keys checked on a dataset's page: a table's own (``Table.claims``, or those of the
    table it stands in for), else the seed's, with the first/last claim the seed made for a
    dataset of that difficulty (ImageNet: "matters"; the small datasets: "not obvious")."""
    reference = reference_table(dataset)
    if reference is not None and reference.claims:
        return list(reference.claims)
    first_last = "first-last-matters" if dataset == "imagenet" else "first-last-not-obvious"
    return ["weight-only-no-drop", first_last, "activations-cost", "weight-only-generalises",
            "full-quantization-gap"]


def evaluate_claims(summaries: pd.DataFrame, dataset: str,
                    in_progress: pd.DataFrame | None = None) -> list[Verdict]:
    """Verdicts of every claim on one (dataset, profile)'s finished plain runs; a row that has
    only runs in progress (``in_progress``, as ``Runs.in_progress``) is said to be so."""
    pivot = by_seed(summaries, "top1")
    training = set()
    if in_progress is not None and len(in_progress):
        training = {int(r) for r in in_progress.loc[in_progress["ablation"] == "", "row"]}
    kinds = set(summaries["data_kind"].dropna()) if len(summaries) else set()
    data_kind = "synthetic" if "synthetic" in kinds else "real"
    published = published_pivot(dataset)
    verdicts = []
    for key in claims_for(dataset):
        claim = CLAIMS[key]
        parts = []
        for comparison in claim.comparisons:
            found, note = _compare(pivot, comparison, training)
            parts.append(_part(comparison.label, found, claim, note))
        parts = tuple(parts)
        measured = tuple(p for p in parts if p.interval.measured)
        verdicts.append(_combine(claim, parts, _caveats(measured, data_kind),
                                 _paper_verdict(claim, published, dataset)))
    return verdicts


def first_last_across_datasets(summaries: pd.DataFrame) -> Verdict:
    """"First/last matters on ImageNet, less on CIFAR-10": per seed, the extra drop from
    quantizing first/last on ImageNet minus that on CIFAR-10, each dataset from its
    longest-trained profile; seeds are paired by number (the runs are independent, so the
    differences are too)."""
    claim = FIRST_LAST_ACROSS
    effects, notes = {}, []
    for dataset in FIRST_LAST_DATASETS:
        runs = longest_profile(summaries, dataset)
        if runs is None:
            notes.append(f"{dataset}: not run")
            continue
        pivot = by_seed(runs, "top1")
        pairs = [pivot[c.first] - pivot[c.second] for c in claim.comparisons
                 if c.first in pivot and c.second in pivot]
        per_seed = pd.concat(pairs, axis=1).dropna().mean(axis=1) if pairs else pd.Series()
        if per_seed.empty:
            notes.append(f"{dataset}: rows 1-4 not run")
            continue
        effects[dataset] = per_seed
        notes.append(f"{dataset} from the {runs['profile'].iloc[0]} profile, "
                     f"{len(pairs)} pair{'s' if len(pairs) > 1 else ''} of rows")
    larger, smaller = FIRST_LAST_DATASETS
    if len(effects) < 2:
        found, note = stats.NONE, "; ".join(notes)
    else:
        found = stats.paired(effects[larger], effects[smaller])
        note = "" if found.measured else "no seed number in common"
    part = _part(f"{larger} − {smaller}", found, claim, note)
    published = [_published_first_last(d) for d in FIRST_LAST_DATASETS]
    paper = stats.point_verdict(published[0] - published[1], claim.threshold, claim.side)
    caveats = notes if len(effects) == 2 else []
    return _combine(claim, (part,), caveats + _caveats((part,), "real"), paper)


def _published_first_last(dataset: str) -> float:
    pivot = published_pivot(dataset)
    values = [pivot[c.first].iloc[0] - pivot[c.second].iloc[0]
              for c in FIRST_LAST_ACROSS.comparisons]
    return sum(values) / len(values)


# --- display -----------------------------------------------------------------------------------

CLAIM_COLUMNS = ["claim (its source's words)", "test", "comparison", "mean", "95 % CI", "seeds",
                 "threshold", "verdict", "seeds to settle", "on the paper's numbers", "caveat"]


def _threshold_text(claim: Claim) -> str:
    value = f"{claim.threshold:.2f}"
    return {"below": f"< {value}", "above": f"> {value}", "within": f"within ±{value}"}[claim.side]


def _cells(verdict: Verdict, pick) -> str:
    return "; ".join(pick(p) for p in verdict.parts)


def claims_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """Display frame of verdicts, one line per claim (the same for markdown and HTML). A claim of
    two comparisons shows both, separated by "; ", in each per-comparison column."""
    records = []
    for v in verdicts:
        def mean(part: Part) -> str:
            return part.interval.format_mean() if part.interval.measured else part.note or "not run"

        records.append({
            "claim (its source's words)": v.claim.quote,
            "test": v.claim.test,
            "comparison": _cells(v, lambda p: p.label),
            "mean": _cells(v, mean),
            "95 % CI": _cells(v, lambda p: p.interval.format_interval()),
            "seeds": _cells(v, lambda p: str(p.interval.n) if p.interval.measured else stats.DASH),
            "threshold": _threshold_text(v.claim),
            "verdict": v.verdict,
            "seeds to settle": stats.format_seeds(v.seeds_needed)
            if v.verdict == INCONCLUSIVE else stats.DASH,
            "on the paper's numbers": v.paper_verdict or stats.DASH,
            "caveat": v.caveat or stats.DASH,
        })
    return pd.DataFrame(records, columns=CLAIM_COLUMNS)
