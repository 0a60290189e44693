"""Divergence: a loss that stops being finite ends a run with a record, not a crash.

``check_finite_evaluation`` stops a run whose test loss is not finite (the training loss is
checked per step in :mod:`lsq.engine.recipe`); ``record_divergence`` writes ``diverged.json``
(docs/run-format.md) in place of ``summary.json``; ``diverged_before`` is the error for a run
asked for again after it diverged, which is not retrained.
"""

from __future__ import annotations

import math
import os
from datetime import datetime, timezone
from pathlib import Path

import torch

from lsq import runs
from lsq.config import RunConfig
from lsq.engine.host import device_description
from lsq.errors import NonFiniteLossError


def check_finite_evaluation(metrics: dict, epoch: int, config: RunConfig) -> None:
    """A test loss that is not finite means the run diverged: stop before it is recorded."""
    loss = metrics["test_loss"]
    if math.isfinite(loss):
        return
    if epoch == 0:
        raise NonFiniteLossError(
            f"test loss is {loss} before any training step: the model this row starts from gives "
            f"non-finite outputs; check its float baseline {config.baseline().run_dir(Path('.'))}")
    raise NonFiniteLossError(
        f"test loss is {loss} after epoch {epoch}: the run diverged (lr {config.optim.lr:g})",
        epoch=epoch)


def record_divergence(error: NonFiniteLossError, config: RunConfig, run_dir: Path,
                      device: torch.device, wall_seconds: float, started_at: str, *,
                      data_kind: str, compiled: bool, cuda_graphs: bool) -> NonFiniteLossError:
    """Write ``diverged.json`` (docs/run-format.md): a diverged run is a result the report
    shows, with where it diverged and the code and machine it did so on. Returns the error to
    raise, its message naming the file and what to do."""
    last = runs.read_metrics(run_dir / runs.METRICS)
    runs.write_json(run_dir / runs.DIVERGED, {
        "dataset": config.dataset, "profile": config.profile, "row": config.row,
        "seed": config.seed, "ablation": config.ablation, "data_kind": data_kind,
        "epoch": error.epoch, "step": error.step, "layer": error.layer,
        "found_in": "test loss" if error.step is None else "training loss",
        "message": str(error), "lr": config.optim.lr, "epochs": config.optim.epochs,
        "last_finite_epoch": last[-1]["epoch"] if last else None,
        "last_finite_top1": last[-1]["test_top1"] if last else None,
        "wall_seconds": wall_seconds, "device": device_description(device),
        "torch_version": torch.__version__, "compiled": compiled, "cuda_graphs": cuda_graphs,
        "git_sha": runs.git_sha(), "hostname": os.uname().nodename,
        "started_at": started_at,
        "diverged_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return NonFiniteLossError(
        f"{error}; recorded in {run_dir / runs.DIVERGED} (the report shows the run as diverged); "
        f"to train it again, delete {run_dir}, or use another --runs-dir with a lower --lr",
        epoch=error.epoch, step=error.step, layer=error.layer)


def diverged_before(run_dir: Path, record: dict) -> NonFiniteLossError:
    """The error for a run asked for again after it diverged: it is not retrained."""
    return NonFiniteLossError(
        f"{run_dir} diverged in {runs.where_diverged(record, layer=True)} ({runs.DIVERGED}); "
        f"not trained again: delete {run_dir / runs.DIVERGED} to train on from its checkpoint, "
        f"or delete {run_dir} to start over", epoch=record.get("epoch"), step=record.get("step"),
        layer=record.get("layer"))
