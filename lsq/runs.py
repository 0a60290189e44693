"""The run-directory format, in one place and without torch: where a run lives, what its files
are called, how they are written and read. docs/run-format.md describes the same contract.

A run is ``<runs>/<dataset>/<profile>/row<k>[-<ablation>]/seed<s>/`` holding

* ``config.yaml``: the full :class:`lsq.config.RunConfig`, written when the run starts;
* ``metrics.jsonl``: one JSON object per finished epoch (epoch 0: the model before any step);
* ``checkpoint.pt``: everything a resume needs (written by :mod:`lsq.engine.checkpoint`);
* ``summary.json``: the results, written last: its presence means "done".

Every file is replaced atomically (temp file beside it, fsync, rename), so a reader or a resumed
run after a kill sees the old file or the whole new one, never half of it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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

_RUN_NAME = re.compile(r"^row(?P<row>\d+)(?:-(?P<ablation>.+))?$")
_SEED_NAME = re.compile(r"^seed(?P<seed>\d+)$")


# --- path <-> identity -------------------------------------------------------------------------


@dataclass(frozen=True)
class RunId:
    """Which run a directory holds: the five keys every table is indexed by."""

    dataset: str
    profile: str
    row: int
    ablation: str  # "" for a table row
    seed: int

    @property
    def run_name(self) -> str:
        return f"row{self.row}" + (f"-{self.ablation}" if self.ablation else "")

    def path(self, root: str | Path) -> Path:
        return Path(root) / self.dataset / self.profile / self.run_name / f"seed{self.seed}"

    def as_dict(self) -> dict:
        return {"dataset": self.dataset, "profile": self.profile, "row": self.row,
                "ablation": self.ablation, "seed": self.seed}


def identify(root: str | Path, run_dir: str | Path) -> RunId | None:
    """The identity of ``run_dir`` from its path below ``root``; None for a folder that is not a
    run directory of the format (a stray folder is not a problem)."""
    parts = Path(run_dir).relative_to(root).parts
    if len(parts) != 4:
        return None
    dataset, profile, run_name, seed_name = parts
    run_match, seed_match = _RUN_NAME.match(run_name), _SEED_NAME.match(seed_name)
    if not run_match or not seed_match:
        return None
    return RunId(dataset, profile, int(run_match["row"]), run_match["ablation"] or "",
                 int(seed_match["seed"]))


def discover(root: str | Path) -> Iterator[tuple[RunId, Path]]:
    """Every run directory under ``root`` (finished or not), in path order."""
    root = Path(root)
    if not root.is_dir():
        return
    for path in sorted(p for p in root.glob("*/*/*/seed*") if p.is_dir()):
        run_id = identify(root, path)
        if run_id is not None:
            yield run_id, path


# --- atomic writes -----------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(binary_handle)`` on a temp file beside ``path``, fsync, then rename it over
    ``path``."""
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


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch  # only the trainer and the export save tensors; the report never does

    atomic_write(path, lambda handle: torch.save(obj, handle))


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# --- the metrics log and the summary -----------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def rewrite_metrics(path: str | Path, records: list[dict]) -> None:
    """Replace the log with ``records`` (after a resume drops epochs newer than the checkpoint)."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_metrics(path: str | Path, record: dict) -> None:
    # Rewriting the whole small file keeps every state of it complete, even under SIGKILL.
    rewrite_metrics(path, read_metrics(path) + [record])


def read_summary(run_dir: str | Path) -> dict | None:
    """A run's ``summary.json``, or None while the run is unfinished."""
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    return json.loads(path.read_text())


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY).exists()


# --- provenance --------------------------------------------------------------------------------


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
