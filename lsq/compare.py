"""Do two trees of run directories hold the same results? ``python -m lsq compare-runs REF NEW``.

The reproducibility check of the committed evidence: ``make reproduce`` (``make reproduce-full``)
retrains seed 0 of the committed Fashion-MNIST quick (full) table at the current commit and
compares it with ``runs/``.

Two runs (same path under each tree) are compared on

- their result-defining config (``RunConfig.result_defining``: device, compilation and data
  location left out); runs whose configs differ are reported, not compared;
- every epoch record of ``metrics.jsonl``, and the results in ``summary.json``, on the keys both
  sides have, leaving out what measures the machine rather than the result:
  ``runs.TIMING_KEYS`` and ``runs.PROVENANCE_KEYS``. A key on one side only (the run format
  grew a field after the older run was made) is listed, not failed.

Each run is then classed

- ``identical``: every compared value equal, bit for bit. That needs the same thread count, the
  same compilation and the same kind of CPU: oneDNN picks its kernels per instruction set, so
  another kind of CPU rounds float32 differently and training carries the difference on;
- ``within seed noise``: not identical, but ``|Δ final top-1|`` is below the standard deviation
  (ddof 1) of final top-1 over the reference's seeds of that row (the finished runs beside the
  reference run), the spread the committed table itself shows. A row with fewer than two
  reference seeds has no spread, so its runs cannot be within seed noise;
- ``differs``: anything else, and also ``config differs`` (not compared) and ``unfinished``.

A run that diverged (``diverged.json``, no summary) is a result too: two that diverged are
``identical`` when every epoch record and where they diverged (epoch, step, first non-finite
layer) are equal, and ``differs`` otherwise, as a run that diverged on one side only does.

The exit status is 0 when every run is identical or within seed noise. This replaces the former
``--tolerance`` (one absolute bound on every number, epoch by epoch), which had no scale to set it
by. The record (``--json``) names the CPU kind of both sides: the CPU model of each summary's
``device`` (``lsq.engine.host.device_description``).
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lsq import runs
from lsq.config import ConfigError, RunConfig

IDENTICAL, WITHIN_NOISE, DIFFERS = "identical", "within seed noise", "differs"
REPRODUCED = (IDENTICAL, WITHIN_NOISE)  # what exits 0


@dataclass
class RunComparison:
    run: str
    reference: Path  # the two run directories compared
    candidate: Path
    verdict: str  # identical | within seed noise | differs | config differs | unfinished
    reason: str = ""  # why that verdict, in a few words
    epochs: int = 0
    first_difference: str = ""
    max_top1_difference: float = 0.0
    max_loss_difference: float = 0.0
    final_top1_difference: float | None = None  # candidate minus reference
    seed_std: float | None = None  # of the reference row's final top-1; None under two seeds
    seeds: int = 0  # finished reference seeds of the row
    one_sided_keys: set[str] = field(default_factory=set)
    # The two summaries (None where the run has not finished): what record() says of the runs.
    reference_summary: dict | None = None
    candidate_summary: dict | None = None


_CPU_DEVICE = re.compile(r"^cpu \((?P<model>.+), \d+ threads?\)$")


def cpu_kind(device: str | None) -> str:
    """The kind of processor a summary's ``device`` names: the CPU model of ``cpu (<model>, <n>
    threads)``, otherwise the whole string (``cuda (<GPU>)``)."""
    if not device:
        return "unknown"
    match = _CPU_DEVICE.match(device)
    return match["model"] if match else device


def find_runs(root: Path) -> dict[str, Path]:
    """Run directories (holding ``config.yaml``) under ``root``, by their path relative to it."""
    # Hidden folders (a retrained baseline's .baselines/) are not runs of the tree.
    return {str(config.parent.relative_to(root)): config.parent
            for config in sorted(Path(root).rglob(runs.CONFIG))
            if not any(part.startswith(".") for part in config.parent.relative_to(root).parts)}


def _differences(reference, candidate, path: str, one_sided: set[str]):
    """``(key path, reference value, candidate value)`` of the first mismatch, or None."""
    if isinstance(reference, dict) and isinstance(candidate, dict):
        one_sided.update(f"{path}{key}" for key in set(reference) ^ set(candidate))
        for key in sorted(set(reference) & set(candidate)):
            found = _differences(reference[key], candidate[key], f"{path}{key}.", one_sided)
            if found:
                return found
        return None
    if (isinstance(reference, float) and isinstance(candidate, float)
            and math.isnan(reference) and math.isnan(candidate)):
        return None
    if reference == candidate:
        return None
    return path.rstrip("."), reference, candidate


def _summary(run: Path) -> dict | None:
    return runs.read_summary(run)


def seed_spread(reference: Path) -> tuple[float | None, int]:
    """(standard deviation of final top-1, seed count) over the finished runs in the reference
    run's row directory (its seeds); the deviation is None with fewer than two."""
    finals = [summary["final_top1"] for summary in
              (_summary(run) for run in sorted(reference.parent.iterdir()) if run.is_dir())
              if summary is not None and isinstance(summary.get("final_top1"), (int, float))]
    return (float(np.std(finals, ddof=1)) if len(finals) >= 2 else None), len(finals)


def compare_run(name: str, reference: Path, candidate: Path) -> RunComparison:
    summaries = [_summary(run) for run in (reference, candidate)]
    result = RunComparison(name, reference, candidate, IDENTICAL, reference_summary=summaries[0],
                           candidate_summary=summaries[1])
    if (RunConfig.from_yaml(reference / runs.CONFIG).result_defining()
            != RunConfig.from_yaml(candidate / runs.CONFIG).result_defining()):
        result.verdict, result.reason = "config differs", "the result-defining configs differ: not compared"
        return result
    if None in summaries:
        divergences = [runs.read_diverged(run) for run in (reference, candidate)]
        if any(divergence is not None for divergence in divergences):
            return _compare_divergences(result, divergences, summaries)
        missing = [side for side, summary in zip(("the reference", "the retrained run"), summaries)
                   if summary is None]
        result.verdict, result.reason = "unfinished", f"no {runs.SUMMARY} in {' or '.join(missing)}"
        return result
    _compare_records(result, ("summary", *({k: v for k, v in summary.items()
                                            if k not in runs.PROVENANCE_KEYS}
                                           for summary in summaries)))
    finals = [summary.get("final_top1") for summary in summaries]
    if all(isinstance(value, (int, float)) for value in finals):
        result.final_top1_difference = finals[1] - finals[0]
    if result.verdict == IDENTICAL:
        result.reason = "bit for bit, every epoch record and summary result"
    elif not result.reason:
        _judge_by_seed_noise(result)
    return result


def _compare_records(result: RunComparison, last: tuple[str, dict, dict]) -> None:
    """Compare every epoch record pairwise (as far as both go), then ``last`` (what the runs
    ended with: ``(label, reference, candidate)``), timing left out: the first difference makes
    the verdict ``differs``; the largest top-1 and loss differences are kept."""
    ours, theirs = (runs.read_metrics(run / runs.METRICS)
                    for run in (result.reference, result.candidate))
    result.epochs = len(ours)
    if len(ours) != len(theirs):
        result.verdict, result.first_difference = DIFFERS, "number of epoch records"
        result.reason = f"{len(ours)} epoch records in the reference, {len(theirs)} retrained"
    pairs = [(f"epoch {old.get('epoch', index)}", old, new)
             for index, (old, new) in enumerate(zip(ours, theirs))] + [last]
    for where, old, new in pairs:
        old = {k: v for k, v in old.items() if k not in runs.TIMING_KEYS}
        new = {k: v for k, v in new.items() if k not in runs.TIMING_KEYS}
        for key, top in (("test_top1", "max_top1_difference"), ("test_loss", "max_loss_difference"),
                         ("final_top1", "max_top1_difference"),
                         ("final_test_loss", "max_loss_difference")):
            if isinstance(old.get(key), (int, float)) and isinstance(new.get(key), (int, float)):
                setattr(result, top, max(getattr(result, top), abs(old[key] - new[key])))
        found = _differences(old, new, "", result.one_sided_keys)
        if found and not result.first_difference:
            key, was, now = found
            result.verdict = DIFFERS
            result.first_difference = f"{where}: {key} {was!r} -> {now!r}"


# Where a run diverged, without when and on what (and the message, which only words it).
_DIVERGENCE_IGNORED = runs.PROVENANCE_KEYS | {"diverged_at", "message"}


def _compare_divergences(result: RunComparison, divergences: list[dict | None],
                         summaries: list[dict | None]) -> RunComparison:
    """Class a pair of which at least one run diverged."""
    if None in divergences:
        side = 1 if divergences[0] is None else 0
        names = ("the reference", "the retrained run")
        other = "finished" if summaries[1 - side] is not None else "did not finish"
        result.verdict = DIFFERS
        result.reason = (f"{names[side]} diverged ({runs.where_diverged(divergences[side])}); "
                         f"{names[1 - side]} {other}")
        return result
    _compare_records(result, ("where it diverged", *({k: v for k, v in d.items()
                                                     if k not in _DIVERGENCE_IGNORED}
                                                    for d in divergences)))
    if result.verdict == DIFFERS:
        result.reason = (f"both diverged, the reference in {runs.where_diverged(divergences[0])}, "
                         f"the retrained run in {runs.where_diverged(divergences[1])}")
        return result
    layer = divergences[0].get("layer")
    result.reason = (f"both diverged in {runs.where_diverged(divergences[0])}"
                     + (f", first at {layer}" if layer else "")
                     + "; every epoch record equal, bit for bit")
    return result


def _judge_by_seed_noise(result: RunComparison) -> None:
    """Class a run that is not identical: within its row's seed noise, or not (and why)."""
    if result.final_top1_difference is None:
        result.reason = "no final_top1 in both summaries to judge by"
        return
    result.seed_std, result.seeds = seed_spread(result.reference)
    row = result.reference.parent.name
    delta = f"|Δ final top-1| {abs(result.final_top1_difference):.2f} points"
    if result.seed_std is None:
        result.reason = (f"{delta}, but the reference holds {result.seeds} finished seed(s) of "
                         f"{row}: no seed standard deviation to judge it by (needs 2)")
    elif abs(result.final_top1_difference) < result.seed_std:
        result.verdict = WITHIN_NOISE
        result.reason = f"{delta} < seed std {result.seed_std:.2f} of {row} ({result.seeds} seeds)"
    else:
        result.reason = f"{delta} >= seed std {result.seed_std:.2f} of {row} ({result.seeds} seeds)"


def compare_trees(reference: Path, candidate: Path) -> list[RunComparison]:
    """The runs both trees hold, compared; ``ConfigError`` if they hold none in common."""
    for root in (reference, candidate):
        if not Path(root).is_dir():
            raise ConfigError(f"{root} is not a directory of runs; pass the folder that holds the "
                              "row<k>/seed<s> run directories, e.g. runs/fashion-mnist/quick")
    ours, theirs = find_runs(reference), find_runs(candidate)
    common = sorted(set(ours) & set(theirs))
    if not common:
        raise ConfigError(
            f"{reference} and {candidate} hold no run at the same path (e.g. row1/seed0); point "
            "both at the same level, such as runs/fashion-mnist/quick and "
            "/tmp/lsq-reproduce.X/fashion-mnist/quick")
    return [compare_run(name, ours[name], theirs[name]) for name in common]


def _kinds(summaries) -> list[str]:
    return sorted({cpu_kind(s.get("device")) for s in summaries if s is not None})


def format_lines(comparisons: list[RunComparison]) -> str:
    """The CPU kinds of both sides, then one line per run with its class and why."""
    kinds = [", ".join(_kinds(getattr(c, f"{side}_summary") for c in comparisons)) or "?"
             for side in ("reference", "candidate")]
    lines = [f"reference runs made on: {kinds[0]}; retrained on: {kinds[1]}"]
    for c in comparisons:
        line = f"{c.run}: {c.verdict} ({c.reason})"
        if c.verdict != IDENTICAL and c.first_difference:
            line += f"; first difference: {c.first_difference}"
        lines.append(line)
    one_sided = sorted(set().union(*(c.one_sided_keys for c in comparisons)))
    if one_sided:
        lines.append("")
        lines.append("Not compared, on one side only (fields the run format gained later): "
                     + ", ".join(one_sided))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lsq compare-runs",
        description="Compare the results of the runs two directories hold at the same paths and "
                    "class each: identical (bit for bit), within seed noise (|Δ final top-1| below "
                    "the reference's seed standard deviation of its row) or differs. Exit 0 if "
                    "every run is identical or within seed noise, 1 otherwise.")
    parser.add_argument("reference", type=Path, help="e.g. runs/fashion-mnist/quick")
    parser.add_argument("candidate", type=Path, help="the same level of the retrained tree")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="also write the comparison there (make reproduce: "
                             "runs/<dataset>/<profile>/reproduction.json, which the report shows)")
    # Gone, kept only to say what replaced it to whoever still passes it.
    parser.add_argument("--tolerance", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tolerance is not None:
        raise ConfigError("--tolerance is gone: compare-runs classes each run identical, within seed "
                         "noise (|Δ final top-1| below its row's seed standard deviation) or differs; "
                         "drop the flag")
    comparisons = compare_trees(args.reference, args.candidate)
    only_reference = sorted(set(find_runs(args.reference)) - {c.run for c in comparisons})
    print(format_lines(comparisons))
    if only_reference:
        print(f"\n{len(only_reference)} other run(s) of {args.reference} are not in {args.candidate}")
    counts = Counter(c.verdict for c in comparisons)
    reproduced = sum(counts[verdict] for verdict in REPRODUCED)
    print(f"\n{reproduced} of {len(comparisons)} runs reproduce: {counts[IDENTICAL]} identical, "
          f"{counts[WITHIN_NOISE]} within seed noise, {len(comparisons) - reproduced} not")
    if args.json:
        runs.write_json(args.json, record(comparisons, args.reference, args.candidate))
    return 0 if reproduced == len(comparisons) else 1


def record(comparisons: list[RunComparison], reference: Path, candidate: Path) -> dict:
    """The comparison as data, with when, at which commit and on what it was retrained."""
    summaries = [c.candidate_summary for c in comparisons if c.candidate_summary is not None]
    references = [c.reference_summary for c in comparisons if c.reference_summary is not None]
    counts = Counter(c.verdict for c in comparisons)
    return {
        "compared_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "reference": str(reference), "candidate": str(candidate),
        # The commit and machine that retrained the candidate runs, from their summaries.
        "candidate_git_shas": sorted({s["git_sha"] for s in summaries}),
        "candidate_devices": sorted({s["device"] for s in summaries}),
        "reference_devices": sorted({s["device"] for s in references}),
        "candidate_cpu_kinds": _kinds(summaries), "reference_cpu_kinds": _kinds(references),
        "compared": len(comparisons), "identical": counts[IDENTICAL],
        "within_seed_noise": counts[WITHIN_NOISE],
        "reproduced": sum(counts[verdict] for verdict in REPRODUCED),
        "runs": [{"run": c.run, "verdict": c.verdict, "reason": c.reason, "epochs": c.epochs,
                  # Which reference run was compared: the report calls the record stale once it changes.
                  "reference_finished_at": (c.reference_summary or {}).get("finished_at"),
                  "reference_cpu_kind": cpu_kind((c.reference_summary or {}).get("device")),
                  "candidate_cpu_kind": cpu_kind((c.candidate_summary or {}).get("device")),
                  "final_top1_difference": c.final_top1_difference,
                  "seed_std": c.seed_std, "seeds": c.seeds,
                  "max_top1_difference": c.max_top1_difference,
                  "max_loss_difference": c.max_loss_difference,
                  "first_difference": c.first_difference} for c in comparisons],
    }
