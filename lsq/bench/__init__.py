"""Benchmarks run as ``python -m lsq bench <name>``; each module has ``main(argv) -> int``."""

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
