"""The machine a run trains on: device, CPU threads when runs share the cores, priority, the CUDA
MPS daemon, torchrun's process group. Nothing here changes a result."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lsq.errors import TrainingError

PARALLEL_RUNS_ENV = "LSQ_PARALLEL_RUNS"  # set by the Makefile to make's -j

def share_cpu_threads(environ=os.environ) -> int | None:
    """Give this process its share of the CPU cores when ``$LSQ_PARALLEL_RUNS`` runs share the
    machine (``make -jN`` sets it to N); returns the thread count set, or None.

    Every torch process otherwise starts one intra-op thread per core, and N of them
    oversubscribe the cores N-fold; OpenMP's spinning threads make that far worse than N times
    slower (docs/parallel-runs.md). An explicit ``OMP_NUM_THREADS``
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


def device_description(device: torch.device) -> str:
    """``cuda (<GPU name>)`` or ``cpu (<CPU model>, <n> threads)``, as summaries record it."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu ({model}, {torch.get_num_threads()} threads)"


def distributed_context() -> tuple[int, int]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("LSQ_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return (dist.get_rank(), world_size) if world_size > 1 else (0, 1)

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
