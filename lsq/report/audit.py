"""The protocol audit of a page: one line per element of the published protocol, what the page's
runs did, and whether that matches, departs (how) or is something the source does not state.

Derived, never hand-written: the published side is :data:`lsq.experiments.PROTOCOLS` and the
table's rows, the measured side each finished run's ``config.yaml``. A page whose dataset stands
in for a published one (Fashion-MNIST for CIFAR-10) is audited against that table's protocol.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lsq import runs as run_format
from lsq.config import RunConfig
from lsq.experiments import PROTOCOLS, get_table
from lsq.levels import format_levels

MATCHES, NOT_STATED = "matches", "not stated by the source"


def _published(dataset: str) -> tuple[str, object] | None:
    table = get_table(dataset)
    reference = dataset if table.has_published else table.stands_in_for
    if reference is None or reference not in PROTOCOLS:
        return None
    return reference, PROTOCOLS[reference]


def source(dataset: str) -> str:
    """Which published protocol a page is audited against, in words."""
    found = _published(dataset)
    if found is None:
        return ""
    reference, protocol = found
    return f"{get_table(reference).name}, as {protocol.source} states it"


def _values(configs: list[RunConfig], describe) -> str:
    return " / ".join(sorted({describe(c) for c in configs})) if configs else "no run"


def _line(element: str, published, configs: list[RunConfig], describe) -> dict:
    measured = _values(configs, describe)
    if published is None:
        verdict = NOT_STATED
    elif measured == "no run":
        verdict = "—"
    elif measured == str(published):
        verdict = MATCHES
    else:
        verdict = f"departs: {measured} instead of {published}"
    return {"element": element, "published": "—" if published is None else str(published),
            "these runs": measured, "verdict": verdict}


def _configs(root: Path, summaries: pd.DataFrame) -> list[RunConfig]:
    configs = []
    for path in summaries.get("path", []):
        try:
            configs.append(RunConfig.from_yaml(Path(root) / path / run_format.CONFIG))
        except (OSError, ValueError):
            continue  # collect.py already reported an unreadable config
    return configs


def audit_table(root: Path, dataset: str, summaries: pd.DataFrame) -> pd.DataFrame:
    """The audit of ``dataset``'s finished plain runs (ablations are departures by design)."""
    found = _published(dataset)
    if found is None:
        return pd.DataFrame(columns=["element", "published", "these runs", "verdict"])
    reference, protocol = found
    plain = summaries[summaries["ablation"] == ""] if "ablation" in summaries else summaries
    configs = _configs(root, plain)
    quantized = [c for c in configs if not c.quant.is_float]
    floats = [c for c in configs if c.quant.is_float]
    table, published_table = get_table(dataset), get_table(reference)
    lines = [
        _line("dataset", f"{published_table.name} (real)", configs,
              lambda c: f"{get_table(get_table(c.dataset).data_name).name} ({table.data_kind})"),
        _line("network", protocol.network, configs, lambda c: c.model),
        _line("optimizer", protocol.optimizer, quantized, lambda c: f"SGD, momentum {c.optim.momentum:g}"),
        _line("lr schedule", protocol.lr_schedule, quantized, lambda c: c.optim.scheduler),
        _line("quantized epochs", protocol.quantized_epochs, quantized, lambda c: str(c.optim.epochs)),
    ]
    for row in published_table.rows:
        if row.is_float:
            continue
        mine = [c for c in quantized if c.row == row.id]
        settings = [
            ("base lr", f"{row.lr_base:g}", lambda c: f"{c.optim.lr:g}"),
            ("weight levels", format_levels(row.constr_w), lambda c: c.quant.weight_levels),
            ("activation levels", format_levels(row.constr_a), lambda c: c.quant.act_levels),
            ("first/last quantized", "yes" if row.quan_lr else "no",
             lambda c: "yes" if c.quant.quantize_first_last else "no"),
        ]
        lines += [_line(f"row {row.id}: {name}",
                        published if name in protocol.stated_row_settings else None, mine, describe)
                  for name, published, describe in settings]
    lines += [
        _line("first/last precision", protocol.first_last_precision, quantized,
              lambda c: "as the other layers" if c.quant.first_last_weight_levels is None
              else f"w{c.quant.first_last_weight_levels}, a{c.quant.first_last_act_levels}"),
        _line("batch size", protocol.batch_size, configs, lambda c: str(c.optim.batch_size)),
        _line("weight decay (quantized rows)", protocol.weight_decay, quantized,
              lambda c: f"{c.optim.weight_decay:g}"),
        _line("step-size init", protocol.step_size_init, quantized,
              lambda c: f"{c.quant.init_method} x{c.quant.init_scale:g}"),
        _line("step-size gradient scale", protocol.gradient_scale, quantized,
              lambda c: "1/sqrt(N*Q_P)" if c.quant.grad_scale else "off"),
        _line("float baseline", protocol.float_baseline, floats,
              lambda c: f"{c.optim.epochs} epochs, lr {c.optim.lr:g}, {c.optim.scheduler}"),
        _line("distillation", protocol.distillation, quantized,
              lambda c: "from the float baseline, T = 1, 1:1" if c.optim.distill else "none"),
    ]
    return pd.DataFrame(lines)
