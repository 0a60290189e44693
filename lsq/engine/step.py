"""One training step, eager or replayed from a CUDA graph.

A step is: forward (under bf16 autocast with ``--amp``), cross-entropy, backward, SGD with
momentum, projection of the step sizes onto ``s >= MIN_STEP_SIZE``, and the epoch's tallies (loss
sum, correct count, index of the first non-finite loss) accumulated on the device. Nothing in it
reads a device value on the host; the loop decides when to look at the tallies.

CUDA graphs (``--cuda-graphs``, on by default on one CUDA device): at the recipe's batch of 128 a
ResNet-20 step is some hundreds of small kernels, and eager PyTorch takes longer to launch them
than the GPU takes to run them. The whole step is captured once and replayed for every batch:

* the first ``WARMUP_STEPS`` batches run eagerly on a side stream, as the CUDA-graph docs require
  (cuDNN autotuning, compiled kernels and the momentum buffers happen there);
* the next batch of the full size is copied into static input tensors, captured, then replayed;
  every later full-size batch is copied into them and replayed;
* a smaller batch (an epoch's last) runs eagerly on the same tensors: gradients are zeroed in
  place, so the graph's gradient buffers stay the parameters' ``.grad``.

A captured kernel's scalars are frozen, but the lr changes every step (cosine schedule). So in
graph mode the update is torch's fused SGD kernel reading the lr from a device tensor per
optimizer group, refreshed from the optimizer's param groups before every step; the momentum
buffers are the optimizer's own state. The scheduler, the optimizer's state dict and the
checkpoints are the same with and without graphs; the fused kernel may round differently from
torch's default (foreach) SGD in the last bit.

Step sizes are initialised before capture (``lsq.engine.recipe.calibrate``), and the quantizers'
"initialised?" flag is a Python attribute, so the captured forward reads no device flag.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F
from torch.optim.sgd import sgd as functional_sgd

from lsq.quant.quantizer import MIN_STEP_SIZE

WARMUP_STEPS = 3
NO_BAD_STEP = torch.iinfo(torch.int64).max  # a MIN over ranks then names the earliest bad step


@dataclass
class Context:
    """What the loop needs besides model, data and optimizer."""

    device: torch.device
    amp: bool = False
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    progress: bool = True
    step_sizes: list = field(default_factory=list)  # projected onto s >= floor after each step
    cuda_graphs: bool = False

    def autocast(self):
        # The cast-weight cache must not outlive a captured region (torch.cuda.graphs docs).
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                              cache_enabled=False if self.cuda_graphs else None)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor, op=op)
        return tensor


@torch.no_grad()
def project_step_sizes(step_sizes: list[torch.Tensor]) -> None:
    """Projected SGD onto ``s >= MIN_STEP_SIZE``: an update that would make a step size
    non-positive (large step-size lr, oversized init) leaves it at the floor, where it still gets
    gradients, instead of below it, where the forward's clamp would freeze it for good."""
    if step_sizes:
        torch._foreach_clamp_min_(step_sizes, MIN_STEP_SIZE)


def first_nonfinite_layer(model: nn.Module, images: torch.Tensor, ctx: Context) -> str | None:
    """Re-run the batch with hooks to name the first module whose output is not finite."""
    found: list[str] = []

    def hook(name):
        def check(_module, _inputs, output):
            if not found and isinstance(output, torch.Tensor) and not torch.isfinite(output).all():
                found.append(name)
        return check

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad(), ctx.autocast():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """The LSQ paper's distillation term, added 1:1 to the cross-entropy:
    ``T^2 * KL(softmax(t / T) || softmax(s / T))``, mean over the batch, with temperature
    ``T = 1`` as the paper uses; zero when student and teacher agree."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, 1), F.log_softmax(teacher_logits.float() / t, 1),
                    log_target=True, reduction="batchmean") * (t * t)


class TrainStep:
    """``step(images, labels)`` trains on one batch; ``tallies()`` reads the epoch's sums.

    Args:
        model: the module to step (maybe DDP-wrapped or compiled).
        optimizer: SGD built by ``lsq.engine.recipe.build_optimizer``.
        ctx: device, autocast, step sizes to project; ``ctx.cuda_graphs`` turns capture on.
        eager_model: the plain module sharing ``model``'s parameters, for batches of another
            size in a single process (a compiled model would recompile for them) and for naming
            a non-finite layer.
        fused_update: update with the fused SGD kernel and device-tensor lrs even without
            graphs (on by itself with graphs; lets CPU tests check that path).
        teacher: a frozen model whose logits the loss distils (:func:`distillation_loss`).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: Context, *,
                 eager_model: nn.Module | None = None, fused_update: bool | None = None,
                 teacher: nn.Module | None = None):
        self.model = model
        self.teacher = teacher
        self.eager_model = eager_model if eager_model is not None else model
        self.optimizer = optimizer
        self.ctx = ctx
        self.fused_update = ctx.cuda_graphs if fused_update is None else fused_update
        if self.fused_update:
            # The fused update bypasses optimizer.step(), which the lr scheduler watches for.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
        device = ctx.device
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.int64)
        self.bad_step = torch.full((), NO_BAD_STEP, device=device, dtype=torch.int64)
        self.step_index = torch.zeros((), device=device, dtype=torch.int64)
        self.lrs = [torch.tensor(float(g["lr"]), device=device) for g in optimizer.param_groups]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self.full_batch: torch.Size | None = None
        self.eager_steps = 0
        self.replays = 0

    def reset(self) -> None:
        """Zero the tallies in place (a captured graph keeps their addresses)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.bad_step.fill_(NO_BAD_STEP)
        self.step_index.zero_()

    def tallies(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss sum, correct count, first non-finite step or ``NO_BAD_STEP``), on the device."""
        return self.loss_sum, self.correct, self.bad_step

    def first_bad_step(self) -> int | None:
        """A host sync: the earliest step (over all ranks) whose loss was not finite."""
        bad = self.bad_step.clone()
        self.ctx.all_reduce(bad, op=dist.ReduceOp.MIN)
        value = int(bad)
        return None if value == NO_BAD_STEP else value

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 check: Callable[[torch.Tensor], None] | None = None) -> None:
        """Train on one batch. ``check(images)``, when given, runs once the batch's loss is
        known: before the update on the eager path, after the replay with graphs."""
        if self.full_batch is None:
            self.full_batch = images.shape
        full = images.shape == self.full_batch
        if self.fused_update:
            for lr, group in zip(self.lrs, self.optimizer.param_groups):
                lr.fill_(group["lr"])
        if self.ctx.cuda_graphs and full and self.eager_steps >= WARMUP_STEPS:
            if self.graph is None:
                self._capture(images, labels)
            static_images, static_labels = self.static_inputs
            static_images.copy_(images)
            static_labels.copy_(labels)
            self.graph.replay()
            self.replays += 1
            if check is not None:
                check(images)
            return
        if self.ctx.cuda_graphs and self.graph is None:
            side = torch.cuda.Stream(self.ctx.device)
            side.wait_stream(torch.cuda.current_stream(self.ctx.device))
            with torch.cuda.stream(side):
                self._step(self.model, images, labels, check)
            torch.cuda.current_stream(self.ctx.device).wait_stream(side)
        else:
            # A batch of another size skips the compiled model (it would recompile), but never
            # DDP: outside it the gradients would not be all-reduced.
            odd_size_model = self.eager_model if self.ctx.world_size == 1 else self.model
            self._step(self.model if full else odd_size_model, images, labels, check)
        self.eager_steps += 1

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.static_inputs = (images.clone(), labels.clone())
        self.optimizer.zero_grad(set_to_none=True)  # backward inside the capture allocates .grad
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step(self.model, *self.static_inputs, None)
        self.graph = graph

    def _step(self, model, images, labels, check) -> None:
        with self.ctx.autocast():
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(images)
                loss = loss + distillation_loss(logits, teacher_logits)
        finite = torch.isfinite(loss.detach())
        self.bad_step.copy_(torch.where((self.bad_step == NO_BAD_STEP) & ~finite,
                                        self.step_index, self.bad_step))
        self.step_index += 1
        if check is not None:
            check(images)
        # After capture the graph's gradient buffers must stay the parameters' .grad.
        self.optimizer.zero_grad(set_to_none=self.graph is None)
        loss.backward()
        if self.fused_update:
            self._fused_sgd()
        else:
            self.optimizer.step()
        project_step_sizes(self.ctx.step_sizes)
        self.loss_sum += loss.detach().double() * labels.shape[0]
        self.correct += (logits.argmax(1) == labels).sum()

    @torch.no_grad()
    def _fused_sgd(self) -> None:
        """The optimizer's SGD, one fused kernel per group, lr read from a device tensor."""
        state = self.optimizer.state
        for lr, group in zip(self.lrs, self.optimizer.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            buffers = [state[p].get("momentum_buffer") for p in params]
            functional_sgd(
                params, [p.grad for p in params], buffers, fused=True,
                weight_decay=group["weight_decay"], momentum=group["momentum"], lr=lr,
                dampening=group["dampening"], nesterov=group["nesterov"],
                maximize=group["maximize"])
            for p, buffer in zip(params, buffers):
                state[p]["momentum_buffer"] = buffer
