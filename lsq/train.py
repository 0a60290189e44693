"""One training loop for the float baseline and every LSQ row: ``train_one_epoch``, ``evaluate``,
``fit``.

A quantized row is the float model of the same dataset, profile and seed, converted with
:func:`lsq.convert.quantize_model`, its step sizes initialised on one calibration batch, then
trained with the same loop; the only difference is one more optimizer group (step sizes: no
weight decay, lr times ``step_size_lr_factor``).

Resumability: every epoch ends with an atomic checkpoint (model, optimizer, scheduler, RNG
states, epoch, config, git SHA). The data order and augmentation of an epoch are a pure function
of (seed, epoch) (see :mod:`lsq.data`), so a run killed at any moment and started again finishes
with bit-identical metrics on the CPU. ``summary.json`` is written last; its presence means done.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from lsq import rundir, runlock
from lsq.config import RunConfig
from lsq.convert import is_step_size, quantize_model, quantizers
from lsq.experiments import get_table
from lsq.layers import QConv2d, QLinear
from lsq.models import build_model
from lsq.quantizer import MIN_STEP_SIZE, cxx_compiler_available
from lsq.step import (WARMUP_STEPS, Context, TrainStep, first_nonfinite_layer,  # noqa: F401 (re-exported)
                      project_step_sizes)


TORCHVISION_WEIGHT_NAMES = ("IMAGENET1K_V1", "DEFAULT")


class TrainingError(RuntimeError):
    """A run cannot go on; the message says why and what to do."""


class BaselineMissingError(TrainingError):
    pass


class NonFiniteLossError(TrainingError):
    pass


class CorruptCheckpointError(TrainingError):
    pass


# --- building blocks ---------------------------------------------------------------------------


PARALLEL_RUNS_ENV = "LSQ_PARALLEL_RUNS"  # set by the Makefile to make's -j


def share_cpu_threads(environ=os.environ) -> int | None:
    """Give this process its share of the CPU cores when ``$LSQ_PARALLEL_RUNS`` runs share the
    machine (``make -jN`` sets it to N); returns the thread count set, or None.

    Every torch process otherwise starts one intra-op thread per core, and N of them
    oversubscribe the cores N-fold. OpenMP's spinning threads make that far worse than N times
    slower: 4 processes making the synthetic data on this 2-core machine take 10.6-11.3 s each
    with 2 threads and 3.5-4.0 s with 1 (README, "Benchmarks"). An explicit ``OMP_NUM_THREADS``
    (torchrun sets one) wins. torch.compile's worker pool keeps every core: its workers are
    processes that wait without spinning, and a smaller pool would slow row 0's compile, which
    the whole table waits for.
    """
    try:
        runs = int(environ.get(PARALLEL_RUNS_ENV, ""))
    except ValueError:
        return None  # unset, or make's unlimited -j
    if runs <= 1 or "OMP_NUM_THREADS" in environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // runs)
    torch.set_num_threads(threads)
    return threads


def process_age_seconds() -> float | None:
    """Seconds since this process started, from Linux's /proc (None elsewhere)."""
    try:
        # Field 22 of /proc/self/stat, counted after the parenthesised command name.
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def build_run_model(config: RunConfig, *, float_state: dict | None = None) -> nn.Module:
    """The run's model: the float network (optionally loaded with ``float_state``), converted with
    ``quantize_model`` when the config quantizes anything. Step sizes are not initialised yet."""
    table = get_table(config.dataset)
    kwargs = dict(num_classes=table.num_classes, in_channels=table.in_channels)
    if config.pretrained_weights and config.quant.is_float and float_state is None:
        if config.pretrained_weights in TORCHVISION_WEIGHT_NAMES:
            kwargs["weights"] = config.pretrained_weights
        else:
            kwargs["weights_path"] = config.pretrained_weights
    model = build_model(config.model, **kwargs)
    if float_state is not None:
        model.load_state_dict(float_state)
    q = config.quant
    if not q.is_float:
        quantize_model(
            model,
            weight_levels=q.weight_range,
            act_levels=q.act_range,
            quantize_first_last=q.quantize_first_last,
            per_channel=q.per_channel,
            init_scale=q.init_scale,
            init_method=q.init_method,
            use_grad_scale=q.grad_scale,
        )
    return model


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """SGD with momentum; step sizes (selected by parameter name) in their own group."""
    o = config.optim
    step_sizes, others = [], []
    for name, param in model.named_parameters():
        (step_sizes if is_step_size(name) else others).append(param)
    groups = [{"params": others, "weight_decay": o.weight_decay, "lr": o.lr}]
    if step_sizes:
        groups.append({
            "params": step_sizes, "weight_decay": o.step_size_weight_decay,
            "lr": o.lr * o.step_size_lr_factor,
        })
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Per-iteration lr multiplier: cosine annealing to 0, step (x0.1 at 50% and 75%), constant."""
    progress = step / max(total_steps, 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))
    if schedule == "constant":
        return 1.0
    raise TrainingError(f"unknown scheduler {schedule!r}; choose cosine, step or constant")


def build_scheduler(optimizer, config: RunConfig, steps_per_epoch: int):
    total = config.optim.epochs * steps_per_epoch
    schedule = config.optim.scheduler
    lr_factor(schedule, 0, total)  # validate the name before any training
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(schedule, step, total))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", getattr(model, "_orig_mod", model))


# --- metrics ----------------------------------------------------------------------------------


def _quantized_layers(model: nn.Module):
    for name, module in unwrap(model).named_modules():
        if isinstance(module, (QConv2d, QLinear)) and module.weight_quantizer is not None:
            yield name, module


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> tuple[float | None, dict[str, float]]:
    """Fraction of zero integer weight codes, overall and per quantized layer."""
    per_layer, zeros, total = {}, 0, 0
    for name, module in _quantized_layers(model):
        codes = module.weight_quantizer.integer_codes(module.weight)
        layer_zeros = int((codes == 0).sum())
        per_layer[name] = layer_zeros / codes.numel()
        zeros += layer_zeros
        total += codes.numel()
    return (zeros / total if total else None), per_layer


def step_size_summary(model: nn.Module) -> dict[str, dict[str, float]]:
    summary = {}
    for name, quantizer in quantizers(unwrap(model)):
        s = quantizer.step_size.detach().float()
        summary[name] = {"mean": s.mean().item(), "min": s.min().item(), "max": s.max().item()}
    return summary


def step_size_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for name, p in unwrap(model).named_parameters() if is_step_size(name)]


def check_step_sizes(model: nn.Module, epoch: int) -> None:
    for name, quantizer in quantizers(unwrap(model)):
        s = quantizer.step_size.detach()
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise TrainingError(
                f"step size of {name} became non-positive or non-finite ({s.min().item():.3g}) "
                f"in epoch {epoch}; lower the step-size lr (--set optim.step_size_lr_factor=0.1) "
                "or the base lr"
            )


# --- the loop ---------------------------------------------------------------------------------


def train_one_epoch(model, loader, optimizer, scheduler, epoch: int, ctx: Context,
                    step: TrainStep | None = None) -> dict:
    """One pass over ``loader``; ``step`` (default: a fresh eager :class:`TrainStep`) is kept
    across epochs by ``fit`` so that a captured CUDA graph is reused."""
    step = step if step is not None else TrainStep(model, optimizer, ctx)
    model.train()
    loader.set_epoch(epoch)
    step.reset()
    seen = 0
    # On CUDA a per-step host read would stall the pipeline: the finiteness flag lives on the
    # device and is read every `check_every` steps; on the CPU reading it is free.
    check_every = 1 if ctx.device.type == "cpu" else 50

    def check(images):
        # Every rank must stop together: one raising alone would leave the others waiting in
        # DDP's gradient all-reduce (first_bad_step reduces over ranks).
        bad = step.first_bad_step()
        if bad is not None:
            layer = first_nonfinite_layer(step.eager_model, images, ctx)
            where = f"; first non-finite output: {layer}" if layer else ""
            raise NonFiniteLossError(
                f"non-finite loss in epoch {epoch + 1} at step {bad + 1}{where}; "
                "lower the learning rate (--lr) or check the data"
            )

    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not ctx.progress or None,
               unit="batch", dynamic_ncols=True)
    for index, (images, labels) in enumerate(bar):
        last = index == len(loader) - 1
        step(ctx.prepare(images), labels, check if index % check_every == 0 or last else None)
        scheduler.step()
        seen += labels.shape[0]
    loss_sum, correct, _ = step.tallies()
    totals = ctx.all_reduce(torch.stack([loss_sum, correct.double(),
                                         torch.tensor(float(seen), device=ctx.device, dtype=torch.float64)]))
    loss_total, correct_total, seen_total = totals.tolist()
    return {"train_loss": loss_total / seen_total, "train_top1": 100.0 * correct_total / seen_total,
            "train_images": int(seen_total)}


@torch.no_grad()
def evaluate(model, loader, ctx: Context, eager_model: nn.Module | None = None) -> dict:
    """Test loss, top-1 and top-5 over ``loader``. ``eager_model``: the plain module behind a
    compiled ``model``, for a last batch of another size (the compiled one would recompile)."""
    model.eval()
    if eager_model is not None:
        eager_model.eval()
    loader.set_epoch(0)
    totals = torch.zeros(4, device=ctx.device, dtype=torch.float64)  # loss, top1, top5, n
    full_batch = None
    for images, labels in loader:
        images = ctx.prepare(images)
        full_batch = full_batch or images.shape[0]
        forward = model if eager_model is None or images.shape[0] == full_batch else eager_model
        with ctx.autocast():
            logits = forward(images)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum").double()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        totals[1] += hits[:, 0].sum()
        totals[2] += hits.any(1).sum()
        totals[3] += labels.shape[0]
    loss, top1, top5, n = ctx.all_reduce(totals).tolist()
    return {"test_loss": loss / n, "test_top1": 100.0 * top1 / n, "test_top5": 100.0 * top5 / n}


def calibrate(model: nn.Module, loader, ctx: Context) -> None:
    """Initialise every step size on the first training batch (LSQ's data-driven init).

    Only the quantizers run in training mode: BatchNorm uses its running statistics and keeps
    them, so calibration changes nothing but the step sizes. Must happen before DDP wrapping (so
    rank 0's values are broadcast), ``torch.compile`` and CUDA-graph capture.
    """
    model.eval()
    for _, quantizer in quantizers(model):
        quantizer.train()
    loader.set_epoch(0)
    images, _ = next(iter(loader))
    with torch.no_grad(), ctx.autocast():
        model(ctx.prepare(images))
    model.train()


# --- fit: one run directory --------------------------------------------------------------------


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


def _baseline_state(config: RunConfig, runs_dir: Path) -> dict:
    baseline = config.baseline()
    baseline_dir = baseline.run_dir(runs_dir)
    checkpoint = baseline_dir / rundir.CHECKPOINT
    if not (baseline_dir / rundir.SUMMARY).exists() or not checkpoint.exists():
        raise BaselineMissingError(
            f"the float baseline of this row is missing ({baseline_dir} has no finished run); "
            f"make it first: python -m lsq train --dataset {config.dataset} --row 0 "
            f"--profile {config.profile} --seed {config.seed} --runs-dir {runs_dir}"
        )
    return load_checkpoint(checkpoint)["model"]


def _check_same_config(run_dir: Path, config: RunConfig) -> None:
    existing = run_dir / rundir.CONFIG
    if existing.exists():
        old = RunConfig.from_yaml(existing)
        if old.result_defining() != config.result_defining():
            raise TrainingError(
                f"{run_dir} holds a run with another configuration; use another --runs-dir, "
                f"or delete {run_dir} to start over"
            )


def _distributed_context() -> tuple[int, int]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("LSQ_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world_size) if world_size > 1 else (0, 1)


def fit(config: RunConfig, runs_dir: str | Path = "runs", *, progress: bool = True,
        log=print, start_waited: tuple[float, float] | None = None) -> dict:
    """Train (or resume, or skip if done) one run; returns its summary. ``start_waited``:
    (when its baseline finished, seconds this process waited for it), from
    ``fit_after_baseline``: its start-up is then counted from there, and the wait recorded
    beside it."""
    runs_dir = Path(runs_dir)
    run_dir = config.run_dir(runs_dir)
    summary_path = run_dir / rundir.SUMMARY
    if summary_path.exists():
        log(f"{run_dir}: already done (summary.json exists), nothing to do")
        return json.loads(summary_path.read_text())
    _check_same_config(run_dir, config)

    if config.optim.epochs == 0 and config.quant.is_float and not config.pretrained_weights:
        if config.profile != "smoke":
            raise TrainingError(
                f"{config.dataset} row 0 evaluates a pretrained float model: pass --weights FILE "
                "(a local copy of torchvision's resnet18-f37072fd.pth) or --weights IMAGENET1K_V1 "
                "on a machine with internet access"
            )
        log("smoke profile: the float baseline is randomly initialised (no pretrained weights)")
    rank, world_size = _distributed_context()
    share_cpu_threads()
    device = resolve_device(config.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    is_main = rank == 0
    # Rank 0 alone writes the run directory, so it alone holds the run's lock.
    with runlock.holding(run_dir) if is_main else contextlib.nullcontext():
        return _train_run(config, runs_dir, run_dir, device, rank, world_size,
                          progress=progress, log=log, start_waited=start_waited)


def _train_run(config: RunConfig, runs_dir: Path, run_dir: Path, device: torch.device, rank: int,
               world_size: int, *, progress: bool, log,
               start_waited: tuple[float, float] | None) -> dict:
    """``fit`` once the run is known to need training and this process may train it."""
    is_main = rank == 0
    summary_path = run_dir / rundir.SUMMARY
    float_state = None if config.quant.is_float else _baseline_state(config, runs_dir)
    seed_everything(config.seed)
    run = _build(config, device, rank, world_size, float_state, progress=progress and is_main)
    data, ctx, model, optimizer, scheduler = run.data, run.ctx, run.model, run.optimizer, run.scheduler
    compile_model, cuda_graphs, train_steps = run.compile_model, run.cuda_graphs, run.train_steps

    checkpoint_path = run_dir / rundir.CHECKPOINT
    metrics_path = run_dir / rundir.METRICS
    started = time.time()
    fresh = not checkpoint_path.exists()
    if world_size > 1:
        dist.barrier()  # every rank decided fresh/resume before rank 0 writes anything
    if fresh:
        start_epoch, wall_before, started_at = 0, 0.0, _now()
        if is_main:
            rundir.atomic_write_text(run_dir / rundir.CONFIG, config.to_yaml())
            metrics_path.unlink(missing_ok=True)
        if quantizers(model):
            calibrate(model, data.train, ctx)
    else:
        start_epoch, wall_before, started_at = _resume(
            checkpoint_path, metrics_path, model, optimizer, scheduler, is_main)
        if is_main:
            log(f"{run_dir}: resuming after epoch {start_epoch}")
    # After calibration: DDP broadcasts rank 0's step sizes with every other parameter.
    train_model = _wrap(model, compile_model, device, world_size)
    eval_model = _eval_model(model, compile_model, device)
    step = TrainStep(train_model, optimizer, ctx, eager_model=model)
    if is_main and device.type == "cuda":
        log(f"CUDA fast path: torch.compile {'on' if compile_model else 'off'}, CUDA graphs "
            f"{'on' if cuda_graphs else 'off'}, amp {'bf16' if config.amp else 'off'}, "
            f"channels_last {'on' if config.channels_last else 'off'}")
    elif is_main and compile_model:
        log(f"torch.compile on ({train_steps} training steps on the "
            f"{device.type}; --no-compile turns it off)")
    if fresh:
        if quantizers(model) or config.optim.epochs == 0:
            # Epoch 0: the converted, initialised model before any step (or a pretrained float).
            record = _epoch_record(0, optimizer.param_groups[0]["lr"], None,
                                   evaluate(eval_model, data.test, ctx, model), model, 0.0, None)
            if is_main:
                rundir.append_metrics(metrics_path, record)
        if is_main:
            _save_checkpoint(checkpoint_path, model, optimizer, scheduler, 0, config, wall_before,
                             started_at)

    # What this process spent before its first step (imports, data, model, calibration, the
    # epoch-0 evaluation): the cost of starting a run, which epoch_seconds never sees. A row that
    # started beside its baseline counts from the baseline's finish: the rest overlapped row 0.
    startup = ({"startup_seconds": time.time() - start_waited[0],
                "baseline_wait_seconds": start_waited[1]} if start_waited is not None else
               {"startup_seconds": process_age_seconds()})
    for epoch in range(start_epoch, config.optim.epochs):
        epoch_start = time.time()
        lr = optimizer.param_groups[0]["lr"]
        train_metrics = train_one_epoch(train_model, data.train, optimizer, scheduler, epoch, ctx,
                                        step)
        train_seconds = time.time() - epoch_start
        check_step_sizes(model, epoch + 1)
        # Evaluation needs no DDP: the plain module, or its own compiled wrapper.
        test_metrics = evaluate(eval_model, data.test, ctx, model)
        epoch_seconds = time.time() - epoch_start
        record = _epoch_record(epoch + 1, lr, train_metrics, test_metrics, model, epoch_seconds,
                               train_metrics["train_images"] / max(train_seconds, 1e-9))
        if epoch == start_epoch and startup["startup_seconds"] is not None:
            record.update(startup)
        if is_main:
            rundir.append_metrics(metrics_path, record)
            wall = wall_before + time.time() - started
            _save_checkpoint(checkpoint_path, model, optimizer, scheduler, epoch + 1, config, wall,
                             started_at)
            log(f"{config.dataset}/{config.profile}/{config.run_name}/seed{config.seed} "
                f"epoch {epoch + 1}/{config.optim.epochs}: loss {record['train_loss']:.4f} "
                f"test top-1 {record['test_top1']:.2f}% ({epoch_seconds:.1f}s, "
                f"{record['images_per_second']:.0f} img/s)")

    if world_size > 1:
        check_replicas_in_sync(model)
    summary = None
    if is_main:
        summary = _summary(config, run_dir, data, device, wall_before + time.time() - started,
                           started_at, compiled=compile_model, cuda_graphs=cuda_graphs)
        rundir.write_json(summary_path, summary)
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


def _build(config: RunConfig, device: torch.device, rank: int, world_size: int,
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


def warm_compile_cache(config: RunConfig, runs_dir: str | Path = "runs", *, log=print) -> bool:
    """Compile a run's graphs into torch.compile's on-disk caches, so the run itself starts warm.

    Nothing of the run is needed or written: the model starts from a random float network
    instead of the row-0 baseline (the graphs depend on shapes, not values), and no run directory
    is touched. A row started beside its baseline (``fit_after_baseline``, what ``make -j`` does
    on CUDA) runs this while row 0 trains, and keeps the compiled code in memory
    (``warm_and_keep_compiled``); run alone (``--warm-compile-cache``), it leaves the graphs in
    the on-disk cache for another process. On an H200, four cold compiles at once had made each
    row's first epoch 20-29 s; after separate warm-up processes, with MPS on too, 11-17 s.
    Runs the same calibration, evaluation and training steps as ``fit`` (CUDA-graph capture
    included, which is not cached but checks the path). Returns whether anything was compiled:
    False for a finished run or one that does not compile.
    """
    if (config.run_dir(Path(runs_dir)) / rundir.SUMMARY).exists():
        log(f"{config.run_dir(Path(runs_dir))}: already done, nothing to warm")
        return False
    share_cpu_threads()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    run = _build(config, device, 0, 1, None, progress=False)
    if not run.compile_model:
        log(f"{config.run_name}: this run does not compile (--no-compile, or a short CPU run), "
            "nothing to warm")
        return False
    started = time.time()
    model, ctx = run.model, run.ctx
    if quantizers(model):
        calibrate(model, run.data.train, ctx)
        # As fit's epoch-0 record: the evaluation's graphs (and the eager LSQ kernels of a last
        # batch of another size), and the integer codes behind the sparsity metrics.
        evaluate(_eval_model(model, True, device), run.data.test, ctx, model)
        _model_metrics(model)
    step = TrainStep(_wrap(model, True, device, 1), run.optimizer, ctx, eager_model=model)
    model.train()
    run.data.train.set_epoch(0)
    batches = iter(run.data.train)
    for _ in range(WARMUP_STEPS + 1 if run.cuda_graphs else 2):
        images, labels = next(batches)
        step(ctx.prepare(images), labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    log(f"{config.dataset}/{config.profile}/{config.run_name}: compile cache warmed in "
        f"{time.time() - started:.0f} s")
    return True


def warm_and_keep_compiled(config: RunConfig, runs_dir: str | Path, *, log=print) -> None:
    """``warm_compile_cache`` in the process that will then train the run: the warm-up's model,
    data and CUDA graph are freed, but dynamo's compiled code stays in memory, so the run that
    follows does not trace or compile again. Its guards (shapes, dtypes, layouts, the modules'
    types and flags) hold for the run's own model, which is what makes that reuse safe; a guard
    that failed would mean a recompile, never a wrong graph. On this repository's 2-core CPU that
    took a row-4 run's first epoch from 11.9 s (tracing and loading from the on-disk cache, after
    ``torch._dynamo.reset()``) to 3.6 s, its steady epoch. ``tests/test_parallel_runs.py`` checks
    that the run compiles no graph and gives the numbers of a run in a fresh process.
    """
    warm_compile_cache(config, runs_dir, log=log)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _process_threads() -> list[int]:
    """This process's thread ids (Linux), else 0 for the calling thread."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@contextlib.contextmanager
def lower_cpu_priority(steps: int = 10):
    """Run the block ``steps`` nice levels lower, then return to the old priority where the OS
    allows it (raising priority back needs root, as on the lent GPU machines; otherwise the
    process stays lower, like under ``nice``). Linux keeps a nice value per thread, so every
    thread of the process is lowered (torch's OpenMP pool included), not just the caller; threads
    started inside the block inherit the lower value and are restored with the rest."""
    main = os.getpriority(os.PRIO_PROCESS, 0)
    before = {}
    for tid in _process_threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that has just ended
            before[tid] = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(before[tid] + steps, 19))
    try:
        yield
    finally:
        for tid in _process_threads():
            with contextlib.suppress(PermissionError, ProcessLookupError):
                os.setpriority(os.PRIO_PROCESS, tid, before.get(tid, main))


def mps_daemon_running(environ=os.environ) -> bool:
    """Whether a CUDA MPS control daemon is listening where this process's CUDA would look for
    it: the ``control`` pipe in ``$CUDA_MPS_PIPE_DIRECTORY`` (default ``/tmp/nvidia-mps``)."""
    return (Path(environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps") / "control").exists()


# Measured on one H200 (benchmarks/results/2026-11-27-h200-session6*): rows 1-4 of the CIFAR
# table at 1.60-1.86 s per epoch under MPS, 2.36-2.84 s without.
MPS_HINT = ("the CUDA MPS daemon is not running, so rows training together time-slice the GPU "
            "(about 1.4-1.6x slower per epoch measured on an H200); start it with "
            "`nvidia-cuda-mps-control -d` before make -jN (README, \"GPU and multi-GPU\")")


# How long a row started beside its baseline waits for the baseline to start training: make -j
# starts both at once, and the baseline's own start-up (imports, data) takes seconds to a minute.
BASELINE_START_GRACE_SECONDS = 300.0


def fit_after_baseline(config: RunConfig, runs_dir: str | Path = "runs", *, progress: bool = True,
                       log=print, grace_seconds: float = BASELINE_START_GRACE_SECONDS) -> dict:
    """Start a quantized row while its float baseline is still training, then ``fit`` it.

    The row compiles its graphs (``warm_and_keep_compiled``) and waits for the baseline's
    ``summary.json``, so that once the baseline is done only loading it, the data, calibration and
    the epoch-0 evaluation stand between it and the row's first step. Process start, imports
    and the compile happen while the baseline trains, at a lower CPU priority than the
    baseline. The row's start-up is counted from the baseline's finish (its summary's mtime):
    where the warm-up outlasts the baseline, as with four compiles on two CPU cores, its tail is
    start-up the table waits for. ``make -j`` does this on CUDA. A baseline that stops without
    finishing, or does not start within ``grace_seconds``, ends the wait with an error
    (``lsq.runlock``). The run itself is exactly ``fit``'s, so its result is what the row would
    give started after the baseline.
    """
    if config.quant.is_float:
        raise TrainingError("--wait-for-baseline is for the quantized rows 1-4; row 0 is the baseline")
    runs_dir = Path(runs_dir)
    baseline_dir = config.baseline().run_dir(runs_dir)
    baseline_done = baseline_dir / rundir.SUMMARY
    start_waited = None
    if not baseline_done.exists() and not (config.run_dir(runs_dir) / rundir.SUMMARY).exists():
        if resolve_device(config.device).type == "cuda" and not mps_daemon_running():
            log(f"{config.run_dir(runs_dir)}: note: {MPS_HINT}")
        with lower_cpu_priority():  # the baseline is what everything waits for
            warm_and_keep_compiled(config, runs_dir, log=log)
            log(f"{config.run_dir(runs_dir)}: waiting for the float baseline {baseline_dir}")
            try:
                waited = runlock.wait_until_finished(baseline_dir, baseline_done,
                                                     grace_seconds=grace_seconds)
            except runlock.BaselineFailedError as error:
                raise TrainingError(f"the float baseline of this row: {error}") from None
        log(f"{config.run_dir(runs_dir)}: baseline finished after {waited:.0f} s of waiting")
        start_waited = (baseline_done.stat().st_mtime, waited)
    return fit(config, runs_dir, progress=progress, log=log, start_waited=start_waited)


def _resume(checkpoint_path: Path, metrics_path: Path, model, optimizer, scheduler,
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
        kept = [r for r in rundir.read_metrics(metrics_path) if r["epoch"] <= start_epoch]
        rundir.rewrite_metrics(metrics_path, kept)
    return start_epoch, checkpoint.get("wall_seconds", 0.0), checkpoint.get("started_at")


def _epoch_record(epoch: int, lr: float, train_metrics: dict | None, test_metrics: dict,
                  model: nn.Module, epoch_seconds: float, images_per_second: float | None) -> dict:
    """One line of metrics.jsonl (docs/run-format.md); epoch 0 has no training metrics."""
    train = {} if train_metrics is None else {
        "train_loss": train_metrics["train_loss"], "train_top1": train_metrics["train_top1"]}
    return {"epoch": epoch, "lr": lr, **train, **test_metrics, **_model_metrics(model),
            "epoch_seconds": epoch_seconds, "images_per_second": images_per_second}


# Auto-compile on the CPU from this many training steps. Compiling ResNet-20 takes 5-40 s here
# (warm or cold compiler cache) and then saves 20-35% of a step (README, "Benchmarks"): at 2,000
# steps of about 0.25 s that is 100-175 s saved against at most 40 s spent.
CPU_COMPILE_MIN_STEPS = 2000


def resolve_fast_path(config: RunConfig, device: torch.device, world_size: int,
                      train_steps: int | None = None) -> tuple[bool, bool]:
    """(torch.compile, CUDA graphs) for this run: each is the config's choice, or when that is
    ``None`` (auto): compile on CUDA, and on the CPU for runs of at least
    ``CPU_COMPILE_MIN_STEPS`` training steps (``train_steps``); graphs on one CUDA device only
    (DDP's all-reduce is not captured here)."""
    on_cuda = device.type == "cuda"
    # Without a C++ compiler "auto" stays eager on the CPU rather than warn per graph.
    long_run = (train_steps is not None and train_steps >= CPU_COMPILE_MIN_STEPS
                and cxx_compiler_available())
    compile_model = (on_cuda or long_run) if config.compile_model is None else config.compile_model
    cuda_graphs = (on_cuda and world_size == 1) if config.cuda_graphs is None else config.cuda_graphs
    if cuda_graphs and not on_cuda:
        raise TrainingError(f"--cuda-graphs needs a CUDA device, not {device}; drop the flag "
                            "or use --device cuda")
    if cuda_graphs and world_size > 1:
        raise TrainingError("--cuda-graphs is not supported under torchrun (DDP); drop the flag "
                            "(graphs are off by default there)")
    if compile_model and not torch._dynamo.is_dynamo_supported():
        if config.compile_model:
            raise TrainingError("--compile: torch.compile is not supported on this Python/torch; "
                                "drop the flag")
        compile_model = False  # auto: quietly eager where the compiler cannot run
    return compile_model, cuda_graphs


def _eval_model(model: nn.Module, compile_model: bool, device: torch.device) -> nn.Module:
    """The module evaluation runs: compiled along with the training step, except a float model
    on CUDA. Eager evaluation of a quantized model pays two kernel calls per quantizer and
    batch; compiled, ResNet-20 row 4 evaluates 1.6-2.4x faster on the 2-core development CPU,
    float 1.2-1.6x (``benchmarks/eval_time.py``; README, "Benchmarks"). On an H200 the eager
    float evaluation took 0.09 s per epoch, less than its compile would add to row 0, which the
    whole table waits for."""
    if not compile_model or (device.type == "cuda" and not quantizers(model)):
        return model
    return torch.compile(model)


def _wrap(model: nn.Module, compile_model: bool, device: torch.device, world_size: int) -> nn.Module:
    """The module the loop steps: DDP across ranks and/or ``torch.compile``; ``model`` itself
    stays the unwrapped one for checkpoints, metrics and evaluation."""
    wrapped = model
    if world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_model:
        # A graph the compiler cannot handle runs eagerly (with a warning) instead of failing
        # the run: compilation is a speed-up, never part of the result.
        torch._dynamo.config.suppress_errors = True
        wrapped = torch.compile(wrapped)
    return wrapped


def check_replicas_in_sync(model: nn.Module) -> None:
    """Every rank must hold rank 0's parameters (step sizes included) after training."""
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    if not torch.equal(flat, reference):
        raise TrainingError(
            f"rank {dist.get_rank()} parameters differ from rank 0's after training "
            f"(max |diff| {(flat - reference).abs().max().item():.3g}); DDP replicas went out of sync"
        )


def _model_metrics(model: nn.Module) -> dict:
    sparsity, per_layer = weight_sparsity(model)
    at_floor = sum(int((p.detach() <= MIN_STEP_SIZE).sum()) for p in step_size_params(model))
    return {"step_sizes": step_size_summary(model), "step_sizes_at_floor": at_floor,
            "weight_sparsity": sparsity, "layer_sparsity": per_layer}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _save_checkpoint(path, model, optimizer, scheduler, epoch, config, wall_seconds, started_at) -> None:
    rundir.atomic_torch_save({
        "started_at": started_at,
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": rng_state(), "epoch": epoch,
        "config": config.to_dict(), "git_sha": rundir.git_sha(), "wall_seconds": wall_seconds,
    }, path)


def _summary(config, run_dir, data, device, wall_seconds, started_at, *, compiled: bool,
             cuda_graphs: bool) -> dict:
    records = rundir.read_metrics(run_dir / rundir.METRICS)
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
        "device": rundir.device_description(device), "torch_version": torch.__version__,
        # What "auto" resolved to (for the last segment of a resumed run): part of the wall time.
        "compiled": compiled, "cuda_graphs": cuda_graphs,
        "git_sha": rundir.git_sha(), "hostname": os.uname().nodename,
        "started_at": started_at, "finished_at": _now(),
        "baseline_run": None if config.quant.is_float else
        str(config.baseline().run_dir(Path(".")).as_posix()),
    }
