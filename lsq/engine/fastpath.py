"""The fast path: whether a run is ``torch.compile``d and replays CUDA graphs, and the modules it
steps and evaluates. A speed-up only: compiled or not, a run computes the same recipe."""

from __future__ import annotations

import torch
from torch import nn

from lsq.config import RunConfig
from lsq.errors import TrainingError
from lsq.quant.convert import quantizers
from lsq.quant.kernels import cxx_compiler_available

# Auto-compile on the CPU from this many training steps: a compile costs tens of seconds once and
# saves a fraction of every step, so it pays back only over a long run (docs/performance.md).
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

def eval_model(model: nn.Module, compile_model: bool, device: torch.device) -> nn.Module:
    """The module evaluation runs: compiled along with the training step, except a float model
    on CUDA. Eager evaluation of a quantized model pays two kernel calls per quantizer and batch,
    which the compiled model fuses; a float model on CUDA evaluates faster than its compile
    would take, and row 0 is what the whole table waits for (``benchmarks/eval_time.py``)."""
    if not compile_model or (device.type == "cuda" and not quantizers(model)):
        return model
    return torch.compile(model)

def wrap_model(model: nn.Module, compile_model: bool, device: torch.device, world_size: int) -> nn.Module:
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
