"""Do two trees of run directories hold the same results? ``python -m lsq compare-runs REF NEW``.

The reproducibility check of the committed evidence: ``make reproduce`` retrains seed 0 of the
committed Fashion-MNIST table at the current commit and compares it with ``runs/``.

Two runs (same path under each tree) are compared on

- their result-defining config (``RunConfig.result_defining``: device, compilation and data
  location left out); runs whose configs differ are reported, not compared;
- every epoch record of ``metrics.jsonl``, and the results in ``summary.json``, on the keys both
  sides have, leaving out what measures the machine rather than the result:
  ``rundir.TIMING_KEYS`` and ``rundir.PROVENANCE_KEYS``. A key on one side only (the run format
  grew a field after the older run was made) is listed, not failed.

Numbers match when ``|a - b| <= tolerance`` (default 0: bit-identical). Bit-identical results
need the same thread count and the same kind of CPU: oneDNN picks its kernels per instruction
set, so another machine gives small differences, which the table shows as the largest difference
in test top-1 and test loss over the epochs.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lsq import rundir
from lsq.config import RunConfig


@dataclass
class RunComparison:
    run: str
    reference: Path  # the two run directories compared
    candidate: Path
    verdict: str  # identical | differs | config differs | unfinished
    epochs: int = 0
    first_difference: str = ""
    max_top1_difference: float = 0.0
    max_loss_difference: float = 0.0
    one_sided_keys: set[str] = field(default_factory=set)
    # The two summaries (None where the run has not finished): what record() says of the runs.
    reference_summary: dict | None = None
    candidate_summary: dict | None = None


def find_runs(root: Path) -> dict[str, Path]:
    """Run directories (holding ``config.yaml``) under ``root``, by their path relative to it."""
    return {str(config.parent.relative_to(root)): config.parent
            for config in sorted(Path(root).rglob(rundir.CONFIG))}


def _differences(reference, candidate, tolerance: float, path: str, one_sided: set[str]):
    """``(key path, reference value, candidate value)`` of the first mismatch, or None."""
    if isinstance(reference, dict) and isinstance(candidate, dict):
        one_sided.update(f"{path}{key}" for key in set(reference) ^ set(candidate))
        for key in sorted(set(reference) & set(candidate)):
            found = _differences(reference[key], candidate[key], tolerance, f"{path}{key}.", one_sided)
            if found:
                return found
        return None
    numbers = (int, float)
    if (isinstance(reference, numbers) and isinstance(candidate, numbers)
            and not isinstance(reference, bool) and not isinstance(candidate, bool)):
        if math.isnan(reference) and math.isnan(candidate):
            return None
        if abs(reference - candidate) <= tolerance:
            return None
    elif reference == candidate:
        return None
    return path.rstrip("."), reference, candidate


def _summary(run: Path) -> dict | None:
    path = run / rundir.SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def compare_run(name: str, reference: Path, candidate: Path, tolerance: float = 0.0) -> RunComparison:
    summaries = [_summary(run) for run in (reference, candidate)]
    result = RunComparison(name, reference, candidate, "identical", reference_summary=summaries[0],
                           candidate_summary=summaries[1])
    if (RunConfig.from_yaml(reference / rundir.CONFIG).result_defining()
            != RunConfig.from_yaml(candidate / rundir.CONFIG).result_defining()):
        result.verdict = "config differs"
        return result
    if None in summaries:
        result.verdict = "unfinished"
        return result
    ours, theirs = (rundir.read_metrics(run / rundir.METRICS) for run in (reference, candidate))
    result.epochs = len(ours)
    if len(ours) != len(theirs):
        result.verdict, result.first_difference = "differs", "number of epoch records"
    # Epoch records pairwise (as far as both go), then the summaries' results.
    pairs = list(zip(ours, theirs))
    pairs.append(tuple({k: v for k, v in summary.items() if k not in rundir.PROVENANCE_KEYS}
                       for summary in summaries))
    for index, (old, new) in enumerate(pairs):
        old = {k: v for k, v in old.items() if k not in rundir.TIMING_KEYS}
        new = {k: v for k, v in new.items() if k not in rundir.TIMING_KEYS}
        where = "summary" if index == len(pairs) - 1 else f"epoch {old.get('epoch', index)}"
        for key, top in (("test_top1", "max_top1_difference"), ("test_loss", "max_loss_difference"),
                         ("final_top1", "max_top1_difference"),
                         ("final_test_loss", "max_loss_difference")):
            if isinstance(old.get(key), (int, float)) and isinstance(new.get(key), (int, float)):
                setattr(result, top, max(getattr(result, top), abs(old[key] - new[key])))
        found = _differences(old, new, tolerance, "", result.one_sided_keys)
        if found and result.verdict == "identical":
            key, was, now = found
            result.verdict = "differs"
            result.first_difference = f"{where}: {key} {was!r} -> {now!r}"
    return result


def compare_trees(reference: Path, candidate: Path, tolerance: float = 0.0) -> list[RunComparison]:
    """The runs both trees hold, compared; ``ValueError`` if they hold none in common."""
    for root in (reference, candidate):
        if not Path(root).is_dir():
            raise FileNotFoundError(f"{root} is not a directory of runs")
    ours, theirs = find_runs(reference), find_runs(candidate)
    common = sorted(set(ours) & set(theirs))
    if not common:
        raise ValueError(
            f"{reference} and {candidate} hold no run at the same path (e.g. row1/seed0); point "
            "both at the same level, such as runs/fashion-mnist/quick and "
            "/tmp/lsq-reproduce.X/fashion-mnist/quick")
    return [compare_run(name, ours[name], theirs[name], tolerance) for name in common]


def format_table(comparisons: list[RunComparison]) -> str:
    lines = ["| run | epochs | verdict | max abs diff top-1 | max abs diff loss | first difference |",
             "| --- | --- | --- | --- | --- | --- |"]
    for c in comparisons:
        lines.append(f"| {c.run} | {c.epochs} | {c.verdict} | {c.max_top1_difference:.4g} | "
                     f"{c.max_loss_difference:.4g} | {c.first_difference or '—'} |")
    one_sided = sorted(set().union(*(c.one_sided_keys for c in comparisons)))
    if one_sided:
        lines.append("")
        lines.append("Not compared, on one side only (fields the run format gained later): "
                     + ", ".join(one_sided))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lsq compare-runs",
        description="Compare the results of the runs two directories hold at the same paths. "
                    "Exit 0 if all match, 1 if any differ.")
    parser.add_argument("reference", type=Path, help="e.g. runs/fashion-mnist/quick")
    parser.add_argument("candidate", type=Path, help="the same level of the retrained tree")
    parser.add_argument("--tolerance", type=float, default=0.0,
                        help="largest absolute difference counted as a match (default 0: bit-identical)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the comparison there (make reproduce: "
                             "runs/<dataset>/<profile>/reproduction.json, which the report shows)")
    args = parser.parse_args(argv)
    if args.tolerance < 0:
        raise ValueError(f"--tolerance must be >= 0, got {args.tolerance}")
    comparisons = compare_trees(args.reference, args.candidate, args.tolerance)
    only_reference = sorted(set(find_runs(args.reference)) - {c.run for c in comparisons})
    print(format_table(comparisons))
    if only_reference:
        print(f"\n{len(only_reference)} other run(s) of {args.reference} are not in {args.candidate}")
    matched = sum(c.verdict == "identical" for c in comparisons)
    print(f"\n{matched} of {len(comparisons)} runs match"
          + ("" if args.tolerance == 0 else f" within {args.tolerance:g}"))
    if args.json:
        rundir.write_json(args.json, record(comparisons, args.reference, args.candidate, args.tolerance))
    return 0 if matched == len(comparisons) else 1


def record(comparisons: list[RunComparison], reference: Path, candidate: Path,
           tolerance: float) -> dict:
    """The comparison as data, with when, at which commit and on what it was retrained."""
    summaries = [c.candidate_summary for c in comparisons if c.candidate_summary is not None]
    return {
        "compared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference": str(reference), "candidate": str(candidate),
        # The commit and machine that retrained the candidate runs, from their summaries.
        "candidate_git_shas": sorted({s["git_sha"] for s in summaries}),
        "candidate_devices": sorted({s["device"] for s in summaries}),
        "tolerance": tolerance,
        "compared": len(comparisons), "matched": sum(c.verdict == "identical" for c in comparisons),
        "runs": [{"run": c.run, "verdict": c.verdict, "epochs": c.epochs,
                  # Which reference run was compared: the report calls the record stale once it changes.
                  "reference_finished_at": (c.reference_summary or {}).get("finished_at"),
                  "max_top1_difference": c.max_top1_difference,
                  "max_loss_difference": c.max_loss_difference,
                  "first_difference": c.first_difference} for c in comparisons],
    }
