"""Run-directory I/O: atomic writes, the metrics log, provenance. Format: docs/run-format.md."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"

# What measures the machine and the moment rather than the result (docs/run-format.md): left out
# when runs are compared (lsq.compare, the tests' resume and parallel-run checks).
TIMING_KEYS = frozenset({"epoch_seconds", "images_per_second", "startup_seconds",
                         "baseline_wait_seconds"})
PROVENANCE_KEYS = frozenset({"wall_seconds", "device", "torch_version", "compiled", "cuda_graphs",
                             "git_sha", "hostname", "started_at", "finished_at"})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Call ``write(binary_handle)`` on a temp file beside ``path``, fsync, then rename it over
    ``path``: readers (and a resumed run after a crash) see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise survive the rename
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_torch_save(obj, path: Path) -> None:
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def rewrite_metrics(path: Path, records: list[dict]) -> None:
    """Replace the log with ``records`` (after a resume drops epochs newer than the checkpoint)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(path: Path, record: dict) -> None:
    # Rewriting the whole small file keeps every state of it complete, even under SIGKILL.
    rewrite_metrics(path, read_metrics(path) + [record])


@functools.cache
def git_sha() -> str:
    """The source tree's commit, with ``-dirty`` when it has uncommitted changes to tracked files."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
            check=True, timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "lsq"], cwd=root,
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_description(device: torch.device) -> str:
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
