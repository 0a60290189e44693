"""The tables that list runs rather than results: where and how each finished run ran, the
compute per device, the runs still training and the runs that diverged (display strings)."""

from __future__ import annotations

import math

import pandas as pd

from lsq.report.tables import DASH, _number


def provenance_table(summaries: pd.DataFrame) -> pd.DataFrame:
    """One line per finished run: where and how it ran (display strings)."""
    if summaries.empty:
        return pd.DataFrame(columns=["run", "data", "epochs", "wall time", "compiled", "device",
                                     "torch", "git SHA", "finished"])
    frame = summaries.sort_values(["row", "ablation", "seed"])
    return pd.DataFrame({
        "run": frame["path"],
        "data": frame["data_kind"],
        "epochs": frame["epochs"].map(lambda v: _number(v, 0)),
        "wall time": frame["wall_seconds"].map(format_duration),
        # torch.compile changes the wall time, never the result; summaries before it was
        # recorded show a dash.
        "compiled": frame["compiled"].map(lambda v: DASH if pd.isna(v) else ("yes" if v else "no")),
        "device": frame["device"].fillna(DASH),
        "torch": frame["torch_version"].fillna(DASH),
        "git SHA": frame["git_sha"].fillna(DASH),
        "finished": frame["finished_at"].fillna(DASH),
    }).reset_index(drop=True)


def compute_totals(summaries: pd.DataFrame) -> pd.DataFrame:
    """Device-hours per device (sum of the runs' wall time), with a total line."""
    if summaries.empty:
        return pd.DataFrame(columns=["device", "runs", "device-hours"])
    grouped = summaries.groupby(summaries["device"].fillna("unknown"), sort=True)
    frame = pd.DataFrame({
        "runs": grouped.size(),
        "hours": grouped["wall_seconds"].sum() / 3600.0,
    }).reset_index()
    total = pd.DataFrame({"device": ["total"], "runs": [int(frame["runs"].sum())],
                          "hours": [frame["hours"].sum()]})
    frame = pd.concat([frame, total], ignore_index=True)
    frame["device-hours"] = frame.pop("hours").map(lambda h: f"{h:.3f}")
    return frame


def format_duration(seconds: float) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return DASH
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def in_progress_table(in_progress: pd.DataFrame) -> pd.DataFrame:
    """Runs without summary.json: epochs done so far, never a result."""
    if in_progress.empty:
        return pd.DataFrame(columns=["run", "epochs done"])
    return pd.DataFrame({
        "run": in_progress["path"],
        "epochs done": [
            f"{done} of {int(planned)}" if not math.isnan(planned) else f"{done}"
            for done, planned in zip(in_progress["epochs_done"], in_progress["epochs_planned"])
        ],
    })


def diverged_table(diverged: pd.DataFrame) -> pd.DataFrame:
    """Runs whose loss became non-finite (``diverged.json``): where, and on what code and machine."""
    columns = ["run", "diverged in", "first non-finite", "found in", "last finite top-1",
               "git SHA", "device"]
    if diverged.empty:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame({
        "run": diverged["path"],
        "diverged in": [
            f"epoch {int(epoch)} of {int(epochs)}" + (f", step {int(step)}" if pd.notna(step) else "")
            if pd.notna(epochs) else f"epoch {int(epoch)}"
            for epoch, epochs, step in zip(diverged["epoch"], diverged["epochs"], diverged["step"])],
        "first non-finite": [layer if isinstance(layer, str) and layer else DASH
                             for layer in diverged["layer"]],
        "found in": [text if isinstance(text, str) else DASH for text in diverged["found_in"]],
        "last finite top-1": [f"{value:.2f} (epoch {int(epoch)})" if pd.notna(value) else DASH
                              for value, epoch in zip(diverged["last_finite_top1"],
                                                      diverged["last_finite_epoch"])],
        "git SHA": [sha if isinstance(sha, str) else DASH for sha in diverged["git_sha"]],
        "device": [text if isinstance(text, str) else DASH for text in diverged["device"]],
    }, columns=columns)
