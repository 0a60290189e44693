"""The paper's recipe, the part a reader checks against the paper: the model of a row, SGD with
momentum and the step sizes in their own group, the lr schedule, the step-size initialisation
on one calibration batch, one training epoch and the evaluation.

A quantized row is the float model of the same dataset, profile and seed, converted with
:func:`lsq.quant.quantize_model`, its step sizes initialised on one calibration batch, then
trained with the same loop; the only difference is one more optimizer group (step sizes: no
weight decay, lr times ``step_size_lr_factor``).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from lsq.config import SCHEDULERS, RunConfig
from lsq.levels import parse_levels
from lsq.engine.step import Context, TrainStep, first_nonfinite_layer
from lsq.errors import NonFiniteLossError, TrainingError
from lsq.experiments import get_table
from lsq.models import build_model
from lsq.quant.convert import is_step_size, quantize_model, quantizers
from lsq.quant.inspect import unwrap

TORCHVISION_WEIGHT_NAMES = ("IMAGENET1K_V1", "DEFAULT")

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
            first_last_weight_levels=parse_levels(q.first_last_weight_levels),
            first_last_act_levels=parse_levels(q.first_last_act_levels),
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
    raise TrainingError(f"unknown scheduler {schedule!r}; choose one of {list(SCHEDULERS)}")


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

def check_step_sizes(model: nn.Module, epoch: int) -> None:
    for name, quantizer in quantizers(unwrap(model)):
        s = quantizer.step_size.detach()
        if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
            raise TrainingError(
                f"step size of {name} became non-positive or non-finite ({s.min().item():.3g}) "
                f"in epoch {epoch}; lower the step-size lr (--set optim.step_size_lr_factor=0.1) "
                "or the base lr"
            )

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
                "lower the learning rate (--lr) or check the data",
                epoch=epoch + 1, step=bad + 1, layer=layer)

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
