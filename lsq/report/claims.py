"""The seed README's claims, each checked against the measured runs with a stated threshold.

A verdict is one of ``holds``, ``does not hold`` or ``not measured`` and is derived only from the
numbers shown beside it. Every verdict carries the seeds it rests on; a single seed, seed sets
that do not pair, a margin inside the seed spread, or synthetic data are said in ``caveat``.
Where the paper published the table, the same rule is also applied to the published numbers, so
a reader can tell "the claim does not survive our runs" from "the claim never matched the paper".

All comparisons are in top-1 accuracy points; drops are ``float − quantized`` (see tables.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from lsq.config import PROFILES
from lsq.experiments import get_table
from lsq.report.tables import Estimate, by_seed, row_difference

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured"

# Thresholds, in top-1 points. A drop under 1 point is what quantization papers call "no loss"
# (the seed's ImageNet row 1 drops 0.26); 1 point also separates the seed's "not obvious" CIFAR
# first/last effect (0.12, 0.44) from its ImageNet one (2.00, 2.75); 0.5 points is the smallest
# activation cost worth a claim; 2 points is "significant" for a full-quantization gap (the
# seed's ImageNet row 4 drops 8.21, its CIFAR row 4 2.32).
NO_DROP = 1.0
FIRST_LAST_MATTERS = 1.0
ACTIVATION_COST = 0.5
SIGNIFICANT_GAP = 2.0


@dataclass(frozen=True)
class Claim:
    key: str
    quote: str  # the seed README's words
    about: str  # the dataset the seed said it about
    test: str  # the rule, with its threshold


CLAIMS = {
    "weight-only-no-drop": Claim(
        "weight-only-no-drop",
        "for just weight quantization, we can achieve comparable performance with float point "
        "weight", "imagenet",
        f"row 1 (ternary weights, first/last float) drops at most {NO_DROP:.1f} point",
    ),
    "first-last-matters": Claim(
        "first-last-matters",
        "for imagenet dataset, we can see the influence of first and last layers' quantization",
        "imagenet",
        "quantizing first/last adds more than "
        f"{FIRST_LAST_MATTERS:.1f} point of drop, both weight-only (row 1 − row 2) and full "
        "quantization (row 3 − row 4)",
    ),
    "first-last-not-obvious": Claim(
        "first-last-not-obvious",
        "because the mission is easy. the influence of first and last layers' quantization [...] "
        "is not obvious in this dataset", "cifar10",
        f"quantizing first/last changes accuracy by at most {FIRST_LAST_MATTERS:.1f} point, both "
        "weight-only (row 1 − row 2) and full quantization (row 3 − row 4)",
    ),
    "activations-cost": Claim(
        "activations-cost",
        "2-bit activations cost accuracy (the tables: rows 3/4 below rows 1/2 on both datasets; "
        "the seed calls it \"not obvious\" on CIFAR-10)", "both",
        f"2-bit activations lose more than {ACTIVATION_COST:.1f} point, with first/last float "
        "(row 1 − row 3) and quantized (row 2 − row 4)",
    ),
    "weight-only-generalises": Claim(
        "weight-only-generalises",
        "for weight quantization, the model achieves better performance after quantization. "
        "this is because quantization is a way to enhance model's generalization", "cifar10",
        "row 1 is more accurate than the float baseline (drop < 0)",
    ),
    "full-quantization-gap": Claim(
        "full-quantization-gap",
        "for quantizing weight and activation with first and last layers, there is a significant "
        "gap between float point model and quantized model", "imagenet",
        f"row 4 (everything quantized) drops more than {SIGNIFICANT_GAP:.1f} points",
    ),
}


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str
    evidence: str  # the numbers used
    n_seeds: int
    caveat: str = ""
    paper_verdict: str = ""  # the same rule on the published numbers; "" if none published


# --- rules: each takes a (seed × row) pivot of final top-1 and returns (verdict, numbers) -------


def _drop(pivot: pd.DataFrame, row: int) -> Estimate:
    return row_difference(pivot, 0, row)


def _all_pass(estimates: dict[str, Estimate], passes) -> str:
    """``holds`` when every measured comparison passes; a claim needs all its parts."""
    measured = [e for e in estimates.values() if e.measured]
    if not measured:
        return NOT_MEASURED
    return HOLDS if all(passes(e.mean) for e in measured) else FAILS


def _evidence(estimates: dict[str, Estimate]) -> str:
    parts = [f"{name} = {e.format(signed=True)}" if e.measured else f"{name}: not run"
             for name, e in estimates.items()]
    return "; ".join(parts)


def _rule(key: str, pivot: pd.DataFrame) -> tuple[str, dict[str, Estimate], float]:
    """(verdict, the estimates used, threshold) of one claim on one pivot."""
    if key == "weight-only-no-drop":
        estimates = {"drop row 1": _drop(pivot, 1)}
        threshold, passes = NO_DROP, (lambda v: v <= NO_DROP)
    elif key in ("first-last-matters", "first-last-not-obvious"):
        estimates = {
            "row 1 − row 2": row_difference(pivot, 1, 2),
            "row 3 − row 4": row_difference(pivot, 3, 4),
        }
        threshold = FIRST_LAST_MATTERS
        if key == "first-last-matters":
            passes = lambda v: v > FIRST_LAST_MATTERS  # noqa: E731
        else:
            passes = lambda v: abs(v) <= FIRST_LAST_MATTERS  # noqa: E731
    elif key == "activations-cost":
        estimates = {
            "row 1 − row 3": row_difference(pivot, 1, 3),
            "row 2 − row 4": row_difference(pivot, 2, 4),
        }
        threshold, passes = ACTIVATION_COST, (lambda v: v > ACTIVATION_COST)
    elif key == "weight-only-generalises":
        estimates = {"drop row 1": _drop(pivot, 1)}
        threshold, passes = 0.0, (lambda v: v < 0.0)
    elif key == "full-quantization-gap":
        estimates = {"drop row 4": _drop(pivot, 4)}
        threshold, passes = SIGNIFICANT_GAP, (lambda v: v > SIGNIFICANT_GAP)
    else:
        raise ValueError(f"unknown claim {key!r}; choose one of {sorted(CLAIMS)}")
    verdict = _all_pass(estimates, passes)
    return verdict, estimates, threshold


def _caveat(estimates: dict[str, Estimate], threshold: float, key: str, data_kind: str) -> str:
    notes = []
    measured = [e for e in estimates.values() if e.measured]
    if data_kind == "synthetic":
        notes.append("synthetic data: this verdict measures nothing about LSQ")
    if any(not e.paired for e in measured):
        notes.append("seed sets differ, so the difference is unpaired and has no spread")
    elif any(e.n == 1 for e in measured):
        notes.append("a single seed: no spread estimate, read as indicative only")
    else:
        for e in measured:
            # For the two-sided "not obvious" rule the margin is measured to ±threshold.
            distance = (threshold - abs(e.mean)) if key == "first-last-not-obvious" \
                else abs(e.mean - threshold)
            if not math.isnan(e.std) and abs(distance) < e.std:
                notes.append("the margin to the threshold is within one seed std: inconclusive "
                             "at this number of seeds")
                break
    if len([e for e in estimates.values() if e.measured]) < len(estimates) and measured:
        notes.append("only part of the comparison was run")
    return "; ".join(notes)


def published_pivot(dataset: str) -> pd.DataFrame:
    """The published top-1 numbers as a one-"seed" pivot (empty when none were published)."""
    table = get_table(dataset)
    if not table.has_published:
        return pd.DataFrame()
    values = {row.id: row.published["top1"] for row in table.rows if "top1" in row.published}
    return pd.DataFrame([values], index=pd.Index([0], name="seed"))


def claims_for(dataset: str) -> list[str]:
    """Claim keys checked on a dataset's page: all, with the first/last claim the seed made for a
    dataset of that difficulty (ImageNet: "matters"; the small datasets: "not obvious")."""
    first_last = "first-last-matters" if dataset == "imagenet" else "first-last-not-obvious"
    return ["weight-only-no-drop", first_last, "activations-cost", "weight-only-generalises",
            "full-quantization-gap"]


def evaluate_claims(summaries: pd.DataFrame, dataset: str) -> list[Verdict]:
    """Verdicts of every claim on one (dataset, profile)'s finished plain runs."""
    pivot = by_seed(summaries, "top1")
    kinds = set(summaries["data_kind"].dropna()) if len(summaries) else set()
    data_kind = "synthetic" if "synthetic" in kinds else "real"
    published = published_pivot(dataset)
    verdicts = []
    for key in claims_for(dataset):
        verdict, estimates, threshold = _rule(key, pivot)
        measured = [e for e in estimates.values() if e.measured]
        paper = _rule(key, published)[0] if not published.empty else ""
        verdicts.append(Verdict(
            CLAIMS[key], verdict,
            _evidence(estimates) if measured else "the rows it needs were not run",
            min((e.n for e in measured), default=0),
            _caveat(estimates, threshold, key, data_kind) if measured else "",
            paper,
        ))
    return verdicts


def first_last_across_datasets(summaries: pd.DataFrame) -> Verdict:
    """"First/last matters on ImageNet, less on CIFAR": the mean extra drop from quantizing
    first/last on ImageNet minus that on CIFAR-10, each from its longest-trained profile."""
    claim = Claim(
        "first-last-imagenet-vs-cifar",
        "for imagenet dataset, we can see the influence of first and last layers' quantization "
        "[...] the influence [...] is not obvious in this dataset [CIFAR-10]", "both",
        f"the extra drop from quantizing first/last, averaged over rows 1−2 and 3−4, is more than "
        f"{FIRST_LAST_MATTERS:.1f} point larger on ImageNet than on CIFAR-10",
    )
    effects, parts, n = {}, [], []
    for dataset in ("imagenet", "cifar10"):
        best = _longest_profile(summaries, dataset)
        if best is None:
            parts.append(f"{dataset}: not run")
            continue
        pivot = by_seed(best, "top1")
        pairs = [row_difference(pivot, 1, 2), row_difference(pivot, 3, 4)]
        pairs = [p for p in pairs if p.measured]
        if not pairs:
            parts.append(f"{dataset}: rows 1-4 not run")
            continue
        effects[dataset] = sum(p.mean for p in pairs) / len(pairs)
        n.append(min(p.n for p in pairs))
        parts.append(f"{dataset} ({best['profile'].iloc[0]}): {effects[dataset]:+.2f} "
                     f"over {len(pairs)} pair(s)")
    published = [_published_first_last(d) for d in ("imagenet", "cifar10")]
    paper = HOLDS if published[0] - published[1] > FIRST_LAST_MATTERS else FAILS
    if len(effects) < 2:
        return Verdict(claim, NOT_MEASURED, "; ".join(parts), min(n, default=0), "", paper)
    gap = effects["imagenet"] - effects["cifar10"]
    verdict = HOLDS if gap > FIRST_LAST_MATTERS else FAILS
    caveat = "a single seed: indicative only" if min(n) == 1 else ""
    return Verdict(claim, verdict, "; ".join(parts) + f"; difference {gap:+.2f}", min(n), caveat,
                   paper)


def _published_first_last(dataset: str) -> float:
    pivot = published_pivot(dataset)
    pairs = [row_difference(pivot, 1, 2), row_difference(pivot, 3, 4)]
    return sum(p.mean for p in pairs) / len(pairs)


def _longest_profile(summaries: pd.DataFrame, dataset: str) -> pd.DataFrame | None:
    runs = summaries[(summaries["dataset"] == dataset) & (summaries["ablation"] == "")]
    if runs.empty:
        return None
    order = {name: i for i, name in enumerate(PROFILES)}
    profile = min(runs["profile"].unique(), key=lambda p: order.get(p, 9))
    return runs[runs["profile"] == profile]


def claims_table(verdicts: list[Verdict]) -> pd.DataFrame:
    """Display frame of verdicts (the same for markdown and HTML)."""
    return pd.DataFrame([{
        "claim (seed README)": v.claim.quote,
        "test": v.claim.test,
        "measured": v.evidence,
        "verdict": v.verdict,
        "seeds": str(v.n_seeds) if v.n_seeds else "—",
        "on the paper's numbers": v.paper_verdict or "—",
        "caveat": v.caveat or "—",
    } for v in verdicts])

