"""``fit``: one run directory, from nothing (or a checkpoint) to ``summary.json``.

Resumability: every epoch ends with an atomic checkpoint. The data order and augmentation of an
epoch are a pure function of (seed, epoch) (see :mod:`lsq.data`), so a run killed at any moment
and started again finishes with bit-identical metrics on the CPU. ``summary.json`` is written
last; its presence means done, and it holds only finite numbers: a loss that is not finite
stops the run with ``diverged.json`` in its place (:mod:`lsq.engine.divergence`). A model that
trains to chance accuracy with a finite loss is a result, not an error (a smoke run or a weak row
can sit there), and is reported as measured. docs/guarantees.md lists what a run directory promises.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lsq import runlock, runs
from lsq.config import RunConfig
from lsq.engine.checkpoint import (RETRAINED_BASELINES, baseline_checkpoint, checkpoint_config,
                                   load_checkpoint, resume, save_checkpoint)
from lsq.engine.divergence import check_finite_evaluation, diverged_before, record_divergence
from lsq.engine.fastpath import eval_model, resolve_fast_path, wrap_model
from lsq.engine.host import (check_replicas_in_sync, device_description, distributed_context,
                             process_age_seconds, resolve_device, share_cpu_threads)
from lsq.engine.recipe import (build_optimizer, build_run_model, build_scheduler, calibrate,
                               check_step_sizes, evaluate, seed_everything, train_one_epoch)
from lsq.engine.step import Context, TrainStep
from lsq.errors import ConfigError, NonFiniteLossError, TrainingError
from lsq.experiments import get_table
from lsq.quant.convert import quantizers
from lsq.quant.inspect import model_metrics, step_size_params
from lsq.track import TensorBoardLog

def _flat(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat

def config_differences(old: RunConfig, new: RunConfig) -> list[str]:
    """``key old → new`` for each result-defining key where ``new`` differs from ``old``."""
    before, after = (_flat(c.result_defining().to_dict()) for c in (old, new))
    return [f"{key} {before.get(key)!r} → {after.get(key)!r}"
            for key in dict.fromkeys([*before, *after]) if before.get(key) != after.get(key)]

def recorded_config(run_dir: Path) -> tuple[RunConfig, str] | None:
    """The config ``run_dir`` was started with and where it was read: its config.yaml, or the
    copy in its checkpoint when config.yaml is gone; None for a run that holds neither."""
    if (run_dir / runs.CONFIG).exists():
        return RunConfig.from_yaml(run_dir / runs.CONFIG), runs.CONFIG
    if (run_dir / runs.CHECKPOINT).exists():
        return checkpoint_config(run_dir / runs.CHECKPOINT), runs.CHECKPOINT
    return None

def _check_same_config(run_dir: Path, config: RunConfig) -> RunConfig | None:
    """Refuse ``config`` for a run directory that holds a run of another result-defining config,
    finished or not; returns the recorded config."""
    recorded = recorded_config(run_dir)
    if recorded is None:
        return None
    old, source = recorded
    differences = config_differences(old, config)
    if differences:
        raise TrainingError(
            f"{run_dir} holds a run with another configuration ({source}: "
            f"{'; '.join(differences)}); ask for the run it holds, use another --runs-dir, or "
            f"delete {run_dir} to start over"
        )
    return old

def fit(config: RunConfig, runs_dir: str | Path = "runs", *, progress: bool = True,
        log=print, start_waited: tuple[float, float] | None = None,
        retrain_baseline: bool = False) -> dict:
    """Train (or resume, or skip if done) one run; returns its summary. ``start_waited``:
    (when its baseline finished, seconds this process waited for it), from
    ``fit_after_baseline``: its start-up is then counted from there, and the wait recorded
    beside it. ``retrain_baseline``: first retrain a finished float baseline that has no
    checkpoint (``retrain_baseline_checkpoint``)."""
    runs_dir = Path(runs_dir)
    run_dir = config.run_dir(runs_dir)
    runs.git_sha()  # the code this process started with, before hours of training (cached)
    if retrain_baseline and not config.starts_from_baseline:
        raise ConfigError("--retrain-baseline is for the quantized rows 1-4, which start from "
                          "row 0; to train row 0 itself, leave it out")
    summary = runs.read_summary(run_dir)
    if summary is not None:
        _check_same_config(run_dir, config)
        log(f"{run_dir}: already done (summary.json exists), nothing to do")
        return summary
    recorded = _check_same_config(run_dir, config)
    divergence = runs.read_diverged(run_dir)
    if divergence is not None:
        raise diverged_before(run_dir, divergence)

    if config.optim.epochs == 0 and config.quant.is_float and not config.pretrained_weights:
        if config.profile != "smoke":
            raise TrainingError(
                f"{config.dataset} row 0 evaluates a pretrained float model: pass --weights FILE "
                "(a local copy of torchvision's resnet18-f37072fd.pth) or --weights IMAGENET1K_V1 "
                "on a machine with internet access"
            )
        log("smoke profile: the float baseline is randomly initialised (no pretrained weights)")
    if retrain_baseline:
        retrain_baseline_checkpoint(config, runs_dir, progress=progress, log=log)
    rank, world_size = distributed_context()
    share_cpu_threads()
    device = resolve_device(config.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    is_main = rank == 0
    # Rank 0 alone writes the run directory, so it alone holds the run's lock.
    with runlock.holding(run_dir) if is_main else contextlib.nullcontext():
        if is_main:
            # Under the lock no other process writes here: a temp file is a killed write's.
            for path in runs.remove_stale_temp_files(run_dir):
                log(f"{run_dir}: removed {path.name}, left by a process killed while writing it")
            if recorded is not None and not (run_dir / runs.CONFIG).exists():
                runs.atomic_write_text(run_dir / runs.CONFIG, recorded.to_yaml())
                log(f"{run_dir}: config.yaml was missing; written back from {runs.CHECKPOINT}")
        return _train_run(config, runs_dir, run_dir, device, rank, world_size,
                          progress=progress, log=log, start_waited=start_waited)

def retrain_baseline_checkpoint(config: RunConfig, runs_dir: Path, *, progress: bool = True,
                                log=print) -> Path | None:
    """Give a quantized row weights to start from where its float baseline is finished but has
    no checkpoint (committed runs carry only their results): train the baseline again, with the
    config its run directory records, into ``<runs>/.baselines/``, and say whether it
    reproduced the committed results (bit for bit on the kind of CPU, thread count and
    compilation that made them). Returns the retrained run directory, or None where there was
    nothing to retrain."""
    committed_dir = config.baseline().run_dir(runs_dir)
    committed = runs.read_summary(committed_dir)
    if committed is None:
        baseline_checkpoint(config, runs_dir)  # raises: says how to train the baseline
    if (committed_dir / runs.CHECKPOINT).exists():
        log(f"{committed_dir} has its {runs.CHECKPOINT}; nothing to retrain")
        return None
    recorded = recorded_config(committed_dir)
    baseline = recorded[0] if recorded is not None else config.baseline()
    # Where and how it executes follows this command; what it computes, the committed run.
    baseline = replace(baseline, device=config.device, compile_model=config.compile_model,
                       cuda_graphs=config.cuda_graphs,
                       data=replace(baseline.data, data_dir=config.data.data_dir,
                                    workers=config.data.workers, download=config.data.download))
    retrained_root = runs_dir / RETRAINED_BASELINES
    retrained_dir = baseline.run_dir(retrained_root)
    log(f"{committed_dir}: no {runs.CHECKPOINT}; retraining it into {retrained_dir}")
    summary = fit(baseline, retrained_root, progress=progress, log=log)
    difference = _first_result_difference(committed_dir, retrained_dir)
    if difference is None:
        log(f"{retrained_dir}: bit-identical to {committed_dir} (every epoch record and result)")
    else:
        log(f"warning: {retrained_dir} differs from {committed_dir} ({difference}); trained on "
            f"{committed.get('device')}, retrained on {summary.get('device')}: only "
            "the same kind of CPU, thread count and compilation reproduce a run bit for bit "
            "(docs/development.md); this row starts from the retrained weights")
    return retrained_dir

def _first_result_difference(reference: Path, candidate: Path) -> str | None:
    """The first result (epoch record or summary value, timing and provenance left out) where
    ``candidate`` differs from ``reference``; None when every one is equal."""
    ours, theirs = (runs.read_metrics(d / runs.METRICS) for d in (reference, candidate))
    if len(ours) != len(theirs):
        return f"{len(ours)} epoch records against {len(theirs)}"
    for old, new in zip(ours, theirs):
        for key in old.keys() - runs.TIMING_KEYS:
            if old[key] != new.get(key):
                return f"epoch {old['epoch']}: {key} {old[key]!r} → {new.get(key)!r}"
    old, new = (runs.read_summary(d) for d in (reference, candidate))
    for key in old.keys() - runs.PROVENANCE_KEYS:
        if old[key] != new.get(key):
            return f"summary: {key} {old[key]!r} → {new.get(key)!r}"
    return None

def _train_run(config: RunConfig, runs_dir: Path, run_dir: Path, device: torch.device, rank: int,
               world_size: int, *, progress: bool, log,
               start_waited: tuple[float, float] | None) -> dict:
    """``fit`` once the run is known to need training and this process may train it."""
    is_main = rank == 0
    summary_path = run_dir / runs.SUMMARY
    float_state = None
    if config.starts_from_baseline:
        source = baseline_checkpoint(config, runs_dir)
        if RETRAINED_BASELINES in source.relative_to(runs_dir).parts:
            log(f"{run_dir}: starting from the retrained baseline {source}")
        float_state = load_checkpoint(source)["model"]
    seed_everything(config.seed)
    run = build_run(config, device, rank, world_size, float_state, progress=progress and is_main)
    data, ctx, model, optimizer, scheduler = run.data, run.ctx, run.model, run.optimizer, run.scheduler
    compile_model, cuda_graphs, train_steps = run.compile_model, run.cuda_graphs, run.train_steps

    checkpoint_path = run_dir / runs.CHECKPOINT
    metrics_path = run_dir / runs.METRICS
    started = time.time()
    fresh = not checkpoint_path.exists()
    if world_size > 1:
        dist.barrier()  # every rank decided fresh/resume before rank 0 writes anything
    if fresh:
        start_epoch, wall_before, started_at = 0, 0.0, _now()
        if is_main:
            runs.atomic_write_text(run_dir / runs.CONFIG, config.to_yaml())
            metrics_path.unlink(missing_ok=True)
        if quantizers(model):
            calibrate(model, data.train, ctx)
    else:
        start_epoch, wall_before, started_at = resume(
            checkpoint_path, metrics_path, model, optimizer, scheduler, is_main,
            first_epoch=0 if _records_epoch_0(config, model) else 1, log=log)
        if is_main:
            log(f"{run_dir}: resuming after epoch {start_epoch}")
    # After calibration: DDP broadcasts rank 0's step sizes with every other parameter.
    train_model = wrap_model(model, compile_model, device, world_size)
    evaluator = eval_model(model, compile_model, device)
    step = TrainStep(train_model, optimizer, ctx, eager_model=model,
                     teacher=_teacher(config, float_state, device) if config.optim.distill else None)
    if is_main and device.type == "cuda":
        log(f"CUDA fast path: torch.compile {'on' if compile_model else 'off'}, CUDA graphs "
            f"{'on' if cuda_graphs else 'off'}, amp {'bf16' if config.amp else 'off'}, "
            f"channels_last {'on' if config.channels_last else 'off'}")
    elif is_main and compile_model:
        log(f"torch.compile on ({train_steps} training steps on the "
            f"{device.type}; --no-compile turns it off)")
    if fresh:
        if _records_epoch_0(config, model):
            # Epoch 0: the model before any step: the converted, initialised one, the trained
            # float one a control starts from, or a pretrained float one.
            test_metrics = evaluate(evaluator, data.test, ctx, model)
            check_finite_evaluation(test_metrics, 0, config)
            record = _epoch_record(0, optimizer.param_groups[0]["lr"], None, test_metrics, model,
                                   0.0, None)
            if is_main:
                runs.append_metrics(metrics_path, record)
        if is_main:
            save_checkpoint(checkpoint_path, model, optimizer, scheduler, 0, config, wall_before,
                             started_at)
    # The TensorBoard log follows the checkpoint: rebuilt from the records it kept, then one
    # epoch's scalars after each epoch's checkpoint (lsq.track).
    tensorboard = TensorBoardLog(run_dir) if is_main else None
    if tensorboard is not None:
        tensorboard.rebuild(runs.read_metrics(metrics_path))

    # What this process spent before its first step (imports, data, model, calibration, the
    # epoch-0 evaluation): the cost of starting a run, which epoch_seconds never sees. A row that
    # started beside its baseline counts from the baseline's finish: the rest overlapped row 0.
    startup = ({"startup_seconds": time.time() - start_waited[0],
                "baseline_wait_seconds": start_waited[1]} if start_waited is not None else
               {"startup_seconds": process_age_seconds()})
    try:
        for epoch in range(start_epoch, config.optim.epochs):
            epoch_start = time.time()
            lr = optimizer.param_groups[0]["lr"]
            train_metrics = train_one_epoch(train_model, data.train, optimizer, scheduler, epoch,
                                            ctx, step)
            train_seconds = time.time() - epoch_start
            check_step_sizes(model, epoch + 1)
            # Evaluation needs no DDP: the plain module, or its own compiled wrapper.
            test_metrics = evaluate(evaluator, data.test, ctx, model)
            check_finite_evaluation(test_metrics, epoch + 1, config)
            epoch_seconds = time.time() - epoch_start
            record = _epoch_record(epoch + 1, lr, train_metrics, test_metrics, model,
                                   epoch_seconds,
                                   train_metrics["train_images"] / max(train_seconds, 1e-9))
            if epoch == start_epoch and startup["startup_seconds"] is not None:
                record.update(startup)
            if is_main:
                runs.append_metrics(metrics_path, record)
                wall = wall_before + time.time() - started
                save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch + 1, config,
                                wall, started_at)
                tensorboard.write(record)
                log(f"{config.dataset}/{config.profile}/{config.run_name}/seed{config.seed} "
                    f"epoch {epoch + 1}/{config.optim.epochs}: loss {record['train_loss']:.4f} "
                    f"test top-1 {record['test_top1']:.2f}% ({epoch_seconds:.1f}s, "
                    f"{record['images_per_second']:.0f} img/s)")
    except NonFiniteLossError as error:
        if error.epoch is None:  # non-finite before any step: the starting model's fault
            raise
        if is_main:
            raise record_divergence(error, config, run_dir, device,
                                    wall_before + time.time() - started, started_at,
                                    data_kind=data.data_kind, compiled=compile_model,
                                    cuda_graphs=cuda_graphs) from None
        raise

    if world_size > 1:
        check_replicas_in_sync(model)
    summary = None
    if is_main:
        summary = _summary(config, run_dir, data, device, wall_before + time.time() - started,
                           started_at, compiled=compile_model, cuda_graphs=cuda_graphs)
        runs.write_json(summary_path, summary)
        tensorboard.close()
        log(f"{run_dir}: done, final top-1 {summary['final_top1']:.2f}%")
    if world_size > 1:
        dist.barrier()
    return summary

@dataclass
class _Run:
    """What ``fit`` steps, before any step size is initialised or anything compiled."""

    data: object  # lsq.data.Data
    ctx: Context
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    compile_model: bool
    cuda_graphs: bool
    train_steps: int

def build_run(config: RunConfig, device: torch.device, rank: int, world_size: int,
           float_state: dict | None, *, progress: bool) -> _Run:
    """Data, model, optimizer and fast-path choice of a run: shared by ``fit`` and
    ``warm_compile_cache``, so the warm-up compiles exactly the graphs the run will."""
    from lsq.data import build_data  # heavy imports (torchvision datasets) only when training

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
    data = build_data(
        config.dataset, config.data, batch_size=config.optim.batch_size,
        eval_batch_size=config.optim.eval_batch_size, device=device, seed=config.seed,
        rank=rank, world_size=world_size,
    )
    table = get_table(config.dataset)
    if data.num_classes > table.num_classes:
        raise TrainingError(
            f"{config.dataset} data has {data.num_classes} classes but the {table.model} head has "
            f"{table.num_classes}; point --data-dir at the {config.dataset} dataset")
    train_steps = config.optim.epochs * len(data.train)
    compile_model, cuda_graphs = resolve_fast_path(config, device, world_size, train_steps)
    ctx = Context(device, config.amp, config.channels_last, rank, world_size, progress,
                  cuda_graphs=cuda_graphs)
    model = build_run_model(config, float_state=float_state).to(device)
    ctx.step_sizes = step_size_params(model)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, len(data.train))
    return _Run(data, ctx, model, optimizer, scheduler, compile_model, cuda_graphs, train_steps)

def _teacher(config: RunConfig, float_state: dict, device: torch.device) -> nn.Module:
    """The run's own float baseline, frozen in eval mode: the distillation teacher."""
    teacher = build_run_model(config.baseline(), float_state=float_state).to(device).eval()
    if config.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher.requires_grad_(False)


def _records_epoch_0(config: RunConfig, model: nn.Module) -> bool:
    """Whether ``metrics.jsonl`` starts with the model before any step (epoch 0): where that
    model is already a result (a baseline's, converted; or a pretrained one), not random."""
    return bool(quantizers(model)) or config.optim.epochs == 0 or config.starts_from_baseline


def _epoch_record(epoch: int, lr: float, train_metrics: dict | None, test_metrics: dict,
                  model: nn.Module, epoch_seconds: float, images_per_second: float | None) -> dict:
    """One line of metrics.jsonl (docs/run-format.md); epoch 0 has no training metrics."""
    train = {} if train_metrics is None else {
        "train_loss": train_metrics["train_loss"], "train_top1": train_metrics["train_top1"]}
    return {"epoch": epoch, "lr": lr, **train, **test_metrics, **model_metrics(model),
            "epoch_seconds": epoch_seconds, "images_per_second": images_per_second}

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

def _summary(config, run_dir, data, device, wall_seconds, started_at, *, compiled: bool,
             cuda_graphs: bool) -> dict:
    records = runs.read_metrics(run_dir / runs.METRICS)
    final = records[-1]
    trained = [r for r in records if r["epoch"] > 0] or records
    return {
        "dataset": config.dataset, "profile": config.profile, "row": config.row,
        "seed": config.seed, "ablation": config.ablation, "data_kind": data.data_kind,
        "epochs": config.optim.epochs,
        "final_top1": final["test_top1"], "final_top5": final["test_top5"],
        "best_top1": max(r["test_top1"] for r in trained),
        "best_top5": max(r["test_top5"] for r in trained),
        "final_test_loss": final["test_loss"],
        "final_weight_sparsity": final.get("weight_sparsity"),
        "wall_seconds": wall_seconds,
        "train_images": data.num_train, "test_images": data.num_test,
        "device": device_description(device), "torch_version": torch.__version__,
        # What "auto" resolved to (for the last segment of a resumed run): part of the wall time.
        "compiled": compiled, "cuda_graphs": cuda_graphs,
        "git_sha": runs.git_sha(), "hostname": os.uname().nodename,
        "started_at": started_at, "finished_at": _now(),
        "baseline_run": None if not config.starts_from_baseline else
        str(config.baseline().run_dir(Path(".")).as_posix()),
    }
