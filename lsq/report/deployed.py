"""Deployment evidence of a page: what ONNX Runtime scored on each deployed run, per run and per
table row.

A run is deployed when its directory holds ``deployed.json`` (``python -m lsq export RUN_DIR
--format onnx``, lsq.deploy): ONNX Runtime's top-1 on the run's whole test set, the share of test
images that get the PyTorch model's class, the share of layers on integer kernels, and the sizes
of the integer export (``export.pt``) and of the same model in float32.

Per row (``row_columns``), over the row's deployed seeds: the mean deployed top-1 with its mean
difference to the run's own test top-1 (the table's test_acc; PyTorch's in a record without it), the lowest agreement, and the export's size against float32. A quantized
row none of whose runs was deployed says so ("not deployed"), rather than leaving a gap.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd

from lsq import runs as run_format

GROUP = "deployed"
TOP1, SAME_CLASS, SIZE = "ONNX Runtime top-1", "same class", "export vs float32"
NOT_DEPLOYED = "not deployed"
_FIELDS = ("form", "test_images", "pytorch_top1", "top1", "agreement", "integer_kernel_fraction",
           "onnx_bytes")


def deployed_records(root: Path, summaries: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run with a readable ``deployed.json``: its path, row, seed, ablation
    and the record's numbers (``export_bytes``/``float32_bytes`` NaN in records written before
    deployments measured them). An unreadable record warns and is left out."""
    records = []
    for _, run in summaries.sort_values("path").iterrows() if "path" in summaries else []:
        path = Path(root) / run["path"] / run_format.DEPLOYED
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            entry = {field: record[field] for field in _FIELDS}
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"{run['path']}/{run_format.DEPLOYED} is unreadable ({error}); left out "
                          "of the deployed table", stacklevel=2)
            continue
        export = Path(root) / run["path"] / run_format.EXPORT
        entry.update({
            "path": run["path"], "row": run["row"], "seed": run["seed"],
            "ablation": run.get("ablation", ""),
            # What training measured on the same images: the table's test_acc.
            "summary_top1": record.get("summary_top1") if record.get("summary_top1") is not None
            else math.nan,
            "export_bytes": record.get("export_bytes", math.nan),
            "float32_bytes": record.get("float32_bytes", math.nan),
            "export_file_bytes": export.stat().st_size if export.is_file() else math.nan,
            "weights_from": (record.get("weights_from") or {}).get("run", ""),
        })
        records.append(entry)
    return pd.DataFrame(records)


def _kb(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{value / 1000:.0f}"


def runs_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per deployed run: ONNX Runtime's test top-1 beside PyTorch's, how many test images get the
    same class, the share of layers on integer kernels, and the files' sizes."""
    rows = []
    for _, record in records.iterrows():
        rows.append({
            "run": record["path"], "form": record["form"],
            "test images": f"{int(record['test_images']):,}",
            "PyTorch top-1": f"{record['pytorch_top1']:.2f}",
            "ONNX Runtime top-1": f"{record['top1']:.2f}",
            "same class": f"{100 * record['agreement']:.2f}%",
            "integer kernels": f"{100 * record['integer_kernel_fraction']:.0f}%",
            "ONNX kB": _kb(record["onnx_bytes"]),
            "integer export kB": _kb(record["export_file_bytes"]),
            "weights": "a bit-identical retraining" if record["weights_from"] else "the run's own",
        })
    return pd.DataFrame(rows)


def _size_cell(rows: pd.DataFrame) -> str:
    sized = rows.dropna(subset=["export_bytes", "float32_bytes"])
    if not len(sized):
        return "—"
    export, float32 = sized["export_bytes"].mean(), sized["float32_bytes"].mean()
    return f"{export / 1000:.0f} kB, {float32 / export:.1f}x smaller"


def row_columns(records: pd.DataFrame, row_ids: list[int], seeds: dict[int, int]) -> dict:
    """Display cells per row id: ``{row: {(GROUP, TOP1): ..., (GROUP, SAME_CLASS): ...,
    (GROUP, SIZE): ...}}`` over the row's deployed plain runs (ablations have their own
    pages); ``seeds``: how many finished seeds the row has, for "(k of n seeds)". Row 0 (float)
    gets dashes. Empty when no run of the page was deployed."""
    plain = records[records["ablation"].fillna("") == ""] if len(records) else records
    if not len(plain):
        return {}
    cells = {}
    for row in row_ids:
        mine = plain[plain["row"] == row]
        if row == 0:
            cells[row] = {(GROUP, TOP1): "—", (GROUP, SAME_CLASS): "—", (GROUP, SIZE): "—"}
            continue
        if not len(mine):
            cells[row] = {(GROUP, TOP1): NOT_DEPLOYED, (GROUP, SAME_CLASS): "—",
                          (GROUP, SIZE): "—"}
            continue
        # Against what the table shows (training's own evaluation), else the PyTorch model's.
        reported = mine["summary_top1"].fillna(mine["pytorch_top1"])
        delta = (mine["top1"] - reported).mean()
        delta = 0.0 if abs(delta) < 0.005 else delta  # no "-0.00"
        of = f", {len(mine)} of {seeds.get(row, len(mine))} seeds" if len(mine) < seeds.get(row, 0) else ""
        cells[row] = {
            (GROUP, TOP1): f"{mine['top1'].mean():.2f} (Δ test_acc {delta:+.2f}{of})",
            (GROUP, SAME_CLASS): f"{100 * mine['agreement'].min():.2f}%"
                                 + (" (lowest)" if len(mine) > 1 else ""),
            (GROUP, SIZE): _size_cell(mine),
        }
    return cells


def add_row_columns(results: pd.DataFrame, records: pd.DataFrame, seeds: dict[int, int]) -> pd.DataFrame:
    """``results`` (tables.format_results_table) with the deployed columns appended, where any
    run of the page was deployed."""
    if not len(results):
        return results
    row_ids = [int(r) for r in results[("ID", "")]]
    cells = row_columns(records, row_ids, seeds)
    if not cells:
        return results
    out = results.copy()
    for key in ((GROUP, TOP1), (GROUP, SAME_CLASS), (GROUP, SIZE)):
        out[key] = [cells[row][key] for row in row_ids]
    return out
