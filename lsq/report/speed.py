"""Measured speed for the report's Speed page: ``benchmarks/results/<date>-<device>/`` as tables.

A check folder, ``<date>-<device>`` (e.g. ``2026-11-27-h200``; see ``benchmarks/gpu-check.sh``),
holds the JSON written by ``python -m lsq bench train --json`` (``bench-*.json``), the script's
logs (``gpu-check*.log``) and, under ``table/``, the run directories of a timed paper-profile
table. A sub-folder that holds a check of its own (``bench-*.json`` or ``table/``) is a variant of
it, the same check with one thing changed (e.g. ``no-mps/``); its README says what. Only the
newest check of each device is read: a device's speed is what its latest check measured.
Nothing here is typed in by hand: every number is read from those files, so the report shows
what was measured, on which card, with which torch, and how much of the table finished.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pandas as pd
import yaml

from lsq import runs as run_format

DEFAULT_RESULTS = Path("benchmarks/results")

BENCH_COLUMNS = ["check", "device", "torch", "dataset", "batch", "mode", "row", "ms/step", "img/s",
                 "x float", "setup s"]
WALL_COLUMNS = ["check", "device", "torch", "MPS", "rows finished", "table wall s", "time limit s",
                "whole table"]
TABLE_COLUMNS = ["check", "device", "torch", "data", "mode", "row", "start-up s", "epochs done",
                 "median s/epoch", "wall s", "wall or projection for all epochs, s"]


def _mode(amp, channels_last, compile_model, cuda_graphs) -> str:
    """``compile_model`` / ``cuda_graphs`` of ``None`` are a run config's "auto" (see
    ``lsq.engine.fastpath.resolve_fast_path``), shown as such rather than guessed."""
    def switch(value, on, off):
        return f"{on}: auto" if value is None else (on if value else off)

    parts = ["bf16" if amp else "fp32"] + (["channels_last"] if channels_last else [])
    parts += [switch(compile_model, "compile", "no compile"),
              switch(cuda_graphs, "CUDA graphs", "no graphs")]
    return ", ".join(parts)


_CHECK_NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<device>[a-z0-9][a-z0-9.-]*)$")


def _dated_folders(results_dir: str | Path) -> list[tuple[str, str, Path]]:
    """(device, date, folder) of every ``<date>-<device>`` folder under ``results_dir``."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        match = _CHECK_NAME.match(folder.name)
        if match:
            found.append((match["device"], match["date"], folder))
    return found


def latest_checks(results_dir: str | Path = DEFAULT_RESULTS) -> list[Path]:
    """The newest ``<date>-<device>`` folder of each device, in name order."""
    newest: dict[str, tuple[str, Path]] = {}
    for device, date, folder in _dated_folders(results_dir):
        if device not in newest or date > newest[device][0]:
            newest[device] = (date, folder)
    return sorted(folder for _, folder in newest.values())


def checks(results_dir: str | Path = DEFAULT_RESULTS) -> list[tuple[str, Path]]:
    """(name, folder) of every check the Speed page shows: each device's latest check, then its
    variants (named ``<check>/<variant>``)."""
    shown = []
    for folder in latest_checks(results_dir):
        shown.append((folder.name, folder))
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "table"):
            if (sub / "table").is_dir() or any(sub.glob("bench-*.json")):
                shown.append((f"{folder.name}/{sub.name}", sub))
    return shown


def left_out(results_dir: str | Path = DEFAULT_RESULTS) -> list[str]:
    """Folders under ``results_dir`` that the Speed page does not read, each with why."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    latest = set(latest_checks(root))
    notes = [f"{folder.name}: an older check of {device}" for device, _, folder
             in _dated_folders(root) if folder not in latest]
    notes += [f"{folder.name}: not a <date>-<device> folder (e.g. 2026-11-27-h200)"
              for folder in sorted(p for p in root.iterdir() if p.is_dir())
              if not _CHECK_NAME.match(folder.name)]
    return notes


def bench_table(results_dir: str | Path = DEFAULT_RESULTS) -> pd.DataFrame:
    """One line per row of every ``bench-*.json`` of the checks shown (``checks``)."""
    lines = []
    files = [(name, path) for name, folder in checks(results_dir)
             for path in sorted(folder.glob("bench-*.json"))]
    for name, path in files:
        bench = json.loads(path.read_text())
        for row in bench["rows"]:
            ratio = row.get("ratio_to_float")
            lines.append([
                name, bench["device"], bench["torch"], bench["dataset"], bench["batch_size"],
                _mode(bench["amp"], bench["channels_last"], bench["compile"], bench["cuda_graphs"]),
                row["row"],
                f"{row['seconds_per_step'] * 1e3:.2f}", f"{row['images_per_second']:,.0f}",
                "—" if ratio is None else f"{ratio:.2f}",
                "—" if row.get("setup_seconds") is None else f"{row['setup_seconds']:.0f}",
            ])
    return pd.DataFrame(lines, columns=BENCH_COLUMNS)


def _timed_tables(results_dir: str | Path) -> list[tuple[str, Path]]:
    """(check name, ``table/`` folder) of every check shown that timed a table."""
    return [(name, folder / "table") for name, folder in checks(results_dir)
            if (folder / "table").is_dir()]


def _table_runs(table_dir: Path) -> list[Path]:
    """The run directories of a timed table (those that wrote their config)."""
    return [path for _, path in run_format.discover(table_dir) if (path / run_format.CONFIG).exists()]


def table_timings(results_dir: str | Path = DEFAULT_RESULTS) -> pd.DataFrame:
    """One line per run of every timed table of the checks shown: epochs done, the
    median epoch time (training + evaluation), the process's start-up before its first step, and
    the wall time of a finished run or, for a run the time limit stopped, its start-up and
    epochs so far plus the rest at the median epoch time (labelled "projected")."""
    lines = []
    for name, check in _timed_tables(results_dir):
        device, torch_version = _check_machine(check)
        for run in _table_runs(check):
            config_path = run / run_format.CONFIG
            records = [json.loads(line) for line in (run / run_format.METRICS).read_text().splitlines()
                       if line.strip()] if (run / run_format.METRICS).exists() else []
            trained = [r for r in records if r["epoch"] > 0]
            summary_path = run / run_format.SUMMARY
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
            config = yaml.safe_load(config_path.read_text())
            epochs = int(config["optim"]["epochs"])
            per_epoch = statistics.median(r["epoch_seconds"] for r in trained) if trained else None
            # Process start to first step (docs/run-format.md); runs from before it have none.
            startup = trained[0].get("startup_seconds") if trained else None
            if summary is not None:
                total = f"{summary['wall_seconds']:.0f} (finished)"
            elif per_epoch is not None:
                # Start-up, the epochs it ran (the first holds the compile), the rest at the median.
                done = (startup or 0.0) + sum(r["epoch_seconds"] for r in trained)
                total = (f"{done + per_epoch * (epochs - len(trained)):.0f} (projected: stopped by "
                         f"the time limit{'' if startup is not None else '; start-up not recorded'})")
            else:
                total = "—"
            lines.append([
                name, (summary or {}).get("device", device),
                (summary or {}).get("torch_version", torch_version), _data_kind(run, summary),
                # A finished run says what its "auto" settings resolved to.
                _mode(config["amp"], config["channels_last"],
                      (summary or {}).get("compiled", config.get("compile_model")),
                      (summary or {}).get("cuda_graphs", config.get("cuda_graphs"))),
                run.parent.name, "—" if startup is None else f"{startup:.0f}", f"{len(trained)}/{epochs}",
                "—" if per_epoch is None else f"{per_epoch:.2f}",
                "—" if summary is None else f"{summary['wall_seconds']:.0f}", total,
            ])
    return pd.DataFrame(lines, columns=TABLE_COLUMNS)


# The line benchmarks/gpu-check.sh logs once `make -j5 synthetic` returns (older logs say
# nothing of MPS).
_TABLE_LINE = re.compile(r"^== table: exit (\d+), (\d+) s wall \(limit (\d+) s\)(?:, MPS (\w+))?",
                         re.MULTILINE)


def table_walls(results_dir: str | Path = DEFAULT_RESULTS) -> pd.DataFrame:
    """One line per timed table: the wall time of the command that trained it (from its start
    to its exit), as ``benchmarks/gpu-check.sh`` logged it (``gpu-check*.log`` beside
    ``table/``), and whether every row finished inside the time limit. A check whose log holds
    no such line (the table did not run) has no line."""
    lines = []
    for name, check in _timed_tables(results_dir):
        found = [m for log in sorted(check.parent.glob("gpu-check*.log"))
                 for m in _TABLE_LINE.finditer(log.read_text(errors="replace"))]
        if not found:
            continue
        exit_status, wall, limit, mps = found[-1].groups()
        runs = _table_runs(check)
        finished = sum(run_format.is_done(run) for run in runs)
        status = int(exit_status)
        if status == 0 and runs and finished == len(runs):
            verdict = f"finished in {wall} s"
        elif status == 124:  # timeout(1)'s exit status
            verdict = "stopped by the time limit"
        elif status == 0:
            verdict = f"incomplete: {finished} of {len(runs)} rows finished"
        else:
            verdict = f"failed (exit {status})"
        lines.append([name, *_check_machine(check), mps or "not recorded",
                      f"{finished}/{len(runs)}", wall, limit, verdict])
    return pd.DataFrame(lines, columns=WALL_COLUMNS)


def _check_machine(table_dir: Path) -> tuple[str, str]:
    """(device, torch) of a check: one machine ran all of it, so any finished run or bench
    file of the folder names it for the runs that did not finish."""
    for run in _table_runs(table_dir):
        summary = run_format.read_summary(run)
        if summary is not None:
            return summary["device"], summary["torch_version"]
    for bench_path in sorted(table_dir.parent.glob("bench-*.json")):
        bench = json.loads(bench_path.read_text())
        return bench["device"], bench["torch"]
    return "—", "—"


def _data_kind(run: Path, summary: dict | None) -> str:
    if summary is not None:
        return summary.get("data_kind", "—")
    dataset = run.parent.parent.parent.name
    return "synthetic" if dataset == "synthetic" else dataset
