"""A run's checkpoint: written atomically after every epoch, everything a resume needs (model,
optimizer, scheduler, RNG states, epoch, config, git SHA, wall time so far)."""

from __future__ import annotations

from pathlib import Path

import torch

from lsq import runs
from lsq.config import RunConfig
from lsq.engine.recipe import build_run_model, rng_state, set_rng_state
from lsq.errors import BaselineMissingError, CorruptCheckpointError, ExportError
from lsq.quant.inspect import unwrap


RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng")

def load_checkpoint(path: Path, keys: tuple[str, ...] = RESUME_KEYS) -> dict:
    """A run's checkpoint (our own file, holding RNG states, hence not ``weights_only``), with
    ``keys`` present; anything unreadable is a :class:`CorruptCheckpointError`."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        for key in keys:
            checkpoint[key]
        return checkpoint
    except Exception as error:  # noqa: BLE001 - any unreadable checkpoint is "corrupt"
        raise CorruptCheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}); "
            "delete it to restart this run from scratch"
        ) from None

def save_checkpoint(path, model, optimizer, scheduler, epoch, config, wall_seconds, started_at) -> None:
    runs.atomic_torch_save({
        "started_at": started_at,
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch,
        "config": config.to_dict(), "git_sha": runs.git_sha(), "wall_seconds": wall_seconds,
    }, path)

def resume(checkpoint_path: Path, metrics_path: Path, model, optimizer, scheduler,
            is_main: bool) -> tuple[int, float, str | None]:
    """Restore everything a checkpoint holds; the metrics log drops epochs newer than it (the
    run was killed between writing an epoch's line and its checkpoint)."""
    checkpoint = load_checkpoint(checkpoint_path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    start_epoch = checkpoint["epoch"]
    if is_main:
        kept = [r for r in runs.read_metrics(metrics_path) if r["epoch"] <= start_epoch]
        runs.rewrite_metrics(metrics_path, kept)
    return start_epoch, checkpoint.get("wall_seconds", 0.0), checkpoint.get("started_at")

def baseline_state(config: RunConfig, runs_dir: Path) -> dict:
    baseline = config.baseline()
    baseline_dir = baseline.run_dir(runs_dir)
    checkpoint = baseline_dir / runs.CHECKPOINT
    if not (baseline_dir / runs.SUMMARY).exists() or not checkpoint.exists():
        raise BaselineMissingError(
            f"the float baseline of this row is missing ({baseline_dir} has no finished run); "
            f"make it first: python -m lsq train --dataset {config.dataset} --row 0 "
            f"--profile {config.profile} --seed {config.seed} --runs-dir {runs_dir}"
        )
    return load_checkpoint(checkpoint)["model"]


def export_run(run_dir: str | Path, out_path: str | Path | None = None) -> dict:
    """Export a finished (or checkpointed) quantized run: writes ``export.pt``, returns the summary.

    The model is rebuilt from ``run_dir/config.yaml`` with :func:`lsq.engine.recipe.build_run_model` and
    loaded from ``run_dir/checkpoint.pt`` (key ``"model"``).
    """
    from lsq.quant.export import export_model, export_summary, save_export

    run_dir = Path(run_dir)
    for required in (runs.CONFIG, runs.CHECKPOINT):
        if not (run_dir / required).is_file():
            raise ExportError(f"{run_dir / required} not found; is {run_dir} a run directory?")
    config = RunConfig.from_yaml(run_dir / runs.CONFIG)
    if config.quant.is_float:
        raise ExportError(f"{run_dir} is a float run: it has no quantized layers to export")
    model = build_run_model(config)
    model.load_state_dict(load_checkpoint(run_dir / runs.CHECKPOINT, keys=("model",))["model"])
    model.eval()
    export = export_model(model)
    out = save_export(export, out_path if out_path is not None else run_dir / "export.pt")
    summary = export_summary(export)
    summary["path"] = str(out)
    summary["file_bytes"] = out.stat().st_size
    return summary
