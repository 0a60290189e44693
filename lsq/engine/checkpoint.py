"""A run's checkpoint: written atomically after every epoch, everything a resume needs (model,
optimizer, scheduler, RNG states, epoch, config, git SHA, wall time so far)."""

from __future__ import annotations

from pathlib import Path

import torch

from lsq import runs
from lsq.config import RunConfig
from lsq.engine.recipe import build_run_model, rng_state, set_rng_state
from lsq.errors import BaselineMissingError, CorruptCheckpointError, ExportError, TrainingError
from lsq.quant.inspect import unwrap


RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng")
# Where `lsq train --retrain-baseline` retrains a finished baseline that has no checkpoint (a
# committed run): beside the runs, out of the layout that discovery and the report read.
RETRAINED_BASELINES = ".baselines"

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

def checkpoint_config(path: Path) -> RunConfig:
    """The config a checkpoint was written with (key ``"config"``)."""
    return RunConfig.from_dict(load_checkpoint(path, keys=("config",))["config"])

def resume(checkpoint_path: Path, metrics_path: Path, model, optimizer, scheduler,
           is_main: bool, *, first_epoch: int, log=print) -> tuple[int, float, str | None]:
    """Restore everything a checkpoint holds; the metrics log drops epochs newer than it (the
    run was killed between writing an epoch's line and its checkpoint) and a last line cut
    short (warned about). ``first_epoch``: the log's first epoch (0 for runs that record the
    model before training). A log that then lacks an epoch the checkpoint covers cannot be
    completed, and is a :class:`TrainingError`."""
    checkpoint = load_checkpoint(checkpoint_path)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_state(checkpoint["rng"])
    start_epoch = checkpoint["epoch"]
    if is_main:
        records = runs.read_metrics(metrics_path, on_torn_last=log)
        kept = [r for r in records if r["epoch"] <= start_epoch]
        epochs = [r["epoch"] for r in kept]
        if epochs != list(range(first_epoch, start_epoch + 1)):
            raise TrainingError(
                f"{metrics_path} holds the records of epochs {epochs or 'none'}, but "
                f"{checkpoint_path} is after epoch {start_epoch}: the log lost records the "
                f"checkpoint cannot give back; delete {checkpoint_path.parent} and train it again")
        runs.rewrite_metrics(metrics_path, kept)
    return start_epoch, checkpoint.get("wall_seconds", 0.0), checkpoint.get("started_at")

def retrained_baseline_dir(config: RunConfig, runs_dir: Path) -> Path:
    return config.baseline().run_dir(Path(runs_dir) / RETRAINED_BASELINES)

def baseline_checkpoint(config: RunConfig, runs_dir: Path) -> Path:
    """The checkpoint a quantized row starts from: its float baseline's, or, where the baseline
    is finished without one (a committed run), the copy ``--retrain-baseline`` trained."""
    runs_dir = Path(runs_dir)
    baseline_dir = config.baseline().run_dir(runs_dir)
    if not runs.is_done(baseline_dir) and (baseline_dir / runs.DIVERGED).exists():
        raise BaselineMissingError(
            f"the float baseline of this row diverged ({baseline_dir / runs.DIVERGED}), so this "
            f"row has no weights to start from; delete {baseline_dir} and train row 0 again "
            "with a lower --lr, or train this table into another --runs-dir"
        )
    if not runs.is_done(baseline_dir):
        raise BaselineMissingError(
            f"the float baseline of this row is missing ({baseline_dir} has no finished run); "
            f"make it first: python -m lsq train --dataset {config.dataset} --row 0 "
            f"--profile {config.profile} --seed {config.seed} --runs-dir {runs_dir}"
        )
    if (baseline_dir / runs.CHECKPOINT).exists():
        return baseline_dir / runs.CHECKPOINT
    retrained = retrained_baseline_dir(config, runs_dir)
    if runs.is_done(retrained) and (retrained / runs.CHECKPOINT).exists():
        return retrained / runs.CHECKPOINT
    ablation = f" --ablation {config.ablation}" if config.ablation else ""
    raise BaselineMissingError(
        f"the float baseline {baseline_dir} is finished but has no {runs.CHECKPOINT} (committed "
        "runs carry only their results), so this row has no weights to start from; add "
        f"--retrain-baseline to this command to retrain them: python -m lsq train --dataset {config.dataset} --row {config.row} --profile "
        f"{config.profile} --seed {config.seed}{ablation} --runs-dir {runs_dir} "
        f"--retrain-baseline (trains row 0 again into {retrained}, checks it against the "
        "committed results, then trains this row)"
    )

def baseline_state(config: RunConfig, runs_dir: Path) -> dict:
    return load_checkpoint(baseline_checkpoint(config, runs_dir))["model"]


def _identical_retraining(run_dir: Path, retrained: Path) -> Path:
    from lsq.compare import IDENTICAL, compare_run

    for path, what in ((run_dir, "the run"), (retrained, "the retrained run")):
        if not (path / runs.CONFIG).is_file():
            raise ExportError(f"{path} ({what}) is not a run directory (no {runs.CONFIG})")
    if not (retrained / runs.CHECKPOINT).is_file():
        raise ExportError(f"{retrained} has no {runs.CHECKPOINT}: --weights-from takes a finished "
                          "retraining that kept its checkpoint (make reproduce keeps them)")
    found = compare_run(run_dir.name, run_dir, retrained)
    if found.verdict != IDENTICAL:
        detail = found.first_difference or found.reason
        raise ExportError(f"{retrained} is not a bit-identical retraining of {run_dir} "
                          f"({found.verdict}: {detail}); its weights did not produce the run's "
                          "numbers, so they are not exported as the run's")
    return retrained


def load_run_model(run_dir: str | Path):
    """``(config, model)`` of a quantized run, the model loaded from its checkpoint (or, without
    one, its integer export), in eval mode; an :class:`ExportError` for anything that is not
    such a run."""
    run_dir = Path(run_dir)
    if not (run_dir / runs.CONFIG).is_file():
        raise ExportError(f"{run_dir} is not a run directory (no {runs.CONFIG}); pass one like "
                          "runs/<dataset>/<profile>/row<k>/seed<s>")
    config = RunConfig.from_yaml(run_dir / runs.CONFIG)
    if config.quant.is_float:
        raise ExportError(f"{run_dir} is a float run (row {config.row}): it has no quantized "
                          "layers to deploy; export a quantized row (1-4)")
    model = build_run_model(config)
    if (run_dir / runs.CHECKPOINT).is_file():
        model.load_state_dict(load_checkpoint(run_dir / runs.CHECKPOINT, keys=("model",))["model"])
    elif (run_dir / runs.EXPORT).is_file():
        # A finished run committed without its checkpoint keeps its compact integer export: the
        # weights are on the grid, so the model computes what the trained one computed.
        from lsq.quant.export import apply_export, load_export

        apply_export(model, load_export(run_dir / runs.EXPORT))
    else:
        raise ExportError(f"{run_dir} has no {runs.CHECKPOINT} and no {runs.EXPORT}: train the run "
                          f"first (python -m lsq train --dataset {config.dataset} --row "
                          f"{config.row} --profile {config.profile} --seed {config.seed})")
    return config, model.eval()


def export_run(run_dir: str | Path, out_path: str | Path | None = None, *,
               weights_from: str | Path | None = None) -> dict:
    """Export a quantized run's integer weights (:func:`load_run_model`): writes ``export.pt``,
    returns the summary.

    ``weights_from``: a retraining of the run (``make reproduce`` keeps its run directories)
    whose weights the export takes, for a committed run that kept neither checkpoint nor export.
    Only a retraining bit-identical to the run (``lsq.compare``: every epoch record and summary
    result) is accepted, so the weights are the ones that produced the run's numbers; the export
    records where they came from (``weights_from``)."""
    from lsq.quant.export import export_model, export_summary, save_export

    run_dir = Path(run_dir)
    source = run_dir if weights_from is None else _identical_retraining(run_dir, Path(weights_from))
    _, model = load_run_model(source)
    export = export_model(model)
    if weights_from is not None:
        summary = runs.read_summary(source) or {}
        export["weights_from"] = {"run": str(source), "verdict": "identical",
                                  "git_sha": summary.get("git_sha"), "device": summary.get("device")}
    out = save_export(export, out_path if out_path is not None else run_dir / runs.EXPORT)
    summary = export_summary(export)
    summary["path"] = str(out)
    summary["file_bytes"] = out.stat().st_size
    return summary
