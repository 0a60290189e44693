"""Has a profile's budget levelled off? The last epoch's change of test top-1, per row.

For each row of a page, over its finished plain runs: ``Δ_last = top1(E) − top1(E−1)`` of each
seed's last two epochs, its mean over seeds and the mean of ``|Δ_last|``. A row has *levelled
off* when that mean absolute change is below ``LEVELLED_POINTS`` (the criterion the ``full``
profile's quantized budget was chosen by, docs/profiles.md); a run of a single epoch has no
last change to show.
"""

from __future__ import annotations

import pandas as pd

from lsq.experiments import LEVELLED_POINTS

LEVELLED, NOT_LEVELLED = "levelled off", "still moving"
COLUMNS = ["row", "seeds", "last epoch", "Δ top-1, last epoch (per seed)", "mean Δ", "mean |Δ|",
           "verdict"]


def last_epoch_changes(epochs: pd.DataFrame) -> pd.DataFrame:
    """One line per row with a finished plain run of at least two epoch records (``epochs``: a
    page's ``Runs.epochs``)."""
    plain = epochs[epochs["ablation"] == ""] if len(epochs) else epochs
    lines = []
    for row in sorted(plain["row"].unique()) if len(plain) else []:
        changes = {}
        for seed, runs in plain[plain["row"] == row].groupby("seed"):
            curve = runs.sort_values("epoch")["test_top1"].dropna()
            if len(curve) >= 2:
                changes[int(seed)] = float(curve.iloc[-1] - curve.iloc[-2])
        if not changes:
            continue
        values = pd.Series(changes)
        mean_abs = values.abs().mean()
        lines.append({
            "row": int(row), "seeds": len(values),
            "last epoch": int(plain.loc[plain["row"] == row, "epoch"].max()),
            "Δ top-1, last epoch (per seed)": ", ".join(f"{v:+.2f}" for v in values),
            "mean Δ": f"{values.mean():+.2f}", "mean |Δ|": f"{mean_abs:.2f}",
            "verdict": LEVELLED if mean_abs < LEVELLED_POINTS else NOT_LEVELLED,
        })
    return pd.DataFrame(lines, columns=COLUMNS)
