"""The jinja2 environments the pages render through, and the helpers their templates call."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import markupsafe
import pandas as pd

from lsq.report import analysis, claims, tables

TEMPLATES = Path(__file__).parent / "templates"


def environment(kind: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html.j2"]) if kind == "html" else False,
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["cell_class"] = cell_class
    env.filters["md_cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    env.filters["md_inline"] = code_spans
    env.globals["header_rows"] = header_rows
    env.globals["flat_columns"] = lambda frame: [tables.flat_name(c) for c in frame.columns]
    return env

def code_spans(text: str) -> markupsafe.Markup:
    """Markdown's `code` spans as HTML <code>, everything else escaped."""
    parts = str(text).split("`")
    return markupsafe.Markup("").join(
        markupsafe.Markup("<code>{}</code>").format(part) if index % 2 else markupsafe.escape(part)
        for index, part in enumerate(parts))

def header_rows(frame: pd.DataFrame) -> list[list[dict]]:
    """HTML header cells of a frame: one row, or two for (group, sub) columns — a group spans
    its subs ("test_acc" over measured | paper | Δ), a column with no sub spans both rows."""
    columns = list(frame.columns)
    if not isinstance(frame.columns, pd.MultiIndex) or all(sub == "" for _, sub in columns):
        names = [c[0] if isinstance(c, tuple) else c for c in columns]
        return [[{"label": str(n), "colspan": 1, "rowspan": 1, "group": False} for n in names]]
    top, bottom = [], []
    for group, sub in columns:
        if sub == "":
            top.append({"label": group, "colspan": 1, "rowspan": 2, "group": False})
        elif top and top[-1]["label"] == group and top[-1]["rowspan"] == 1:
            top[-1]["colspan"] += 1
            bottom.append({"label": sub, "colspan": 1, "rowspan": 1, "group": False})
        else:
            top.append({"label": group, "colspan": 1, "rowspan": 1, "group": True})
            bottom.append({"label": sub, "colspan": 1, "rowspan": 1, "group": False})
    return [top, bottom]

# A number cell: "92.20", "+0.10 ± 0.20 (n=3)", "0.31 (unpaired)", "2 (paper 90)", "12.5%",
# optionally "(+1 running)", or an interval "[-0.40, +0.60]"; anything else (sentences starting
# with a digit) stays text.
_NUMBER_CELL = re.compile(
    r"^([+\-]?\d[\d.,]*%?(–\d+)?( ± [\d.]+)?( \((n=\d+|unpaired|paper \d+)\))?"
    r"( (s|min|h))?( \(\+\d+ running\))?|\[[+\-]?[\d.]+, [+\-]?[\d.]+\])$"
)

_VERDICT_CLASS = {
    claims.HOLDS: "v-holds", claims.FAILS: "v-fails", claims.INCONCLUSIVE: "v-none",
    claims.NOT_MEASURED: "v-none", analysis.COSTS: "v-settled", analysis.GAINS: "v-settled",
    analysis.NO_EFFECT: "v-settled",
}

def cell_class(value) -> str:
    """CSS class of a table cell: numbers right-aligned, missing values muted, verdicts coloured."""
    text = str(value)
    verdict = text.split(" (", 1)[0]  # "holds (CIFAR-10 table)" is a verdict too
    if verdict in _VERDICT_CLASS:
        return "verdict " + _VERDICT_CLASS[verdict]
    if text.startswith(("not run", "in progress", "—", "reference")):
        return "na"
    return "num" if _NUMBER_CELL.match(text) else ""
