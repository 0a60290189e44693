"""The run-directory format, in one place and without torch: where a run lives, what its files
are called, how they are written and read. docs/run-format.md describes the same contract.

A run is ``<runs>/<dataset>/<profile>/row<k>[-<ablation>]/seed<s>/`` holding

* ``config.yaml``: the full :class:`lsq.config.RunConfig`, written when the run starts;
* ``metrics.jsonl``: one JSON object per finished epoch (epoch 0: the model before any step);
* ``checkpoint.pt``: everything a resume needs (written by :mod:`lsq.engine.checkpoint`);
* ``summary.json``: the results, written last: its presence means "done";
* ``diverged.json``: instead of a summary, where the loss became non-finite: where it did (epoch,
  step, first non-finite layer) and the provenance; divergence is a result, not a crash;
* ``.lock``: the run's lock (:mod:`lsq.runlock`), there while a process trains it (and after a
  kill); readers ignore it.

Every file is replaced atomically (temp file beside it, fsync, rename), so a reader or a resumed
run after a kill sees the old file or the whole new one, never half of it. Every JSON file is
strict JSON: a NaN or infinity is refused before anything is written. docs/guarantees.md lists
what a run directory promises and the tests that check it.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lsq.errors import DiskFullError, NonFiniteValueError, RunFileError

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
EXPORT = "export.pt"  # python -m lsq export RUN_DIR: the compact integer weights
DEPLOYED = "deployed.json"  # python -m lsq export RUN_DIR --format onnx: ONNX Runtime's results
DIVERGED = "diverged.json"  # written instead of summary.json by a run whose loss became non-finite
LOCK = ".lock"
WRITTEN = (CONFIG, METRICS, CHECKPOINT, SUMMARY, DIVERGED)  # each replaced atomically by atomic_write

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
    ``path``. A full disk is a :class:`DiskFullError` naming the disk, the file and the free
    space; ``path`` is then as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise survive the rename
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        interrupt = _interrupt_behind(error)
        if interrupt is not None and interrupt is not error:
            # Ctrl-C or SIGTERM inside torch.save: its zip writer then fails on the torn stream
            # and hides the interrupt; the interrupt is what happened.
            raise interrupt from None
        if isinstance(error, Exception) and _is_disk_full(error, path):
            raise DiskFullError(disk_full_message(path)) from error
        raise


def _interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt ``error`` is, or was raised while handling, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__context__
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode()))


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch  # only the trainer and the export save tensors; the report never does

    atomic_write(path, lambda handle: torch.save(obj, handle))


def write_json(path: str | Path, data: dict) -> None:
    atomic_write_text(path, strict_json(data, path, indent=2, sort_keys=False) + "\n")


def temp_files(run_dir: str | Path) -> list[Path]:
    """The temp files ``atomic_write`` leaves in ``run_dir`` when its process is killed mid-write."""
    return sorted(p for name in WRITTEN for p in Path(run_dir).glob(f".{name}.*.tmp"))


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Remove ``temp_files(run_dir)``; returns them. Only the holder of the run's lock may call
    this: any other process's temp file could be a write still in progress."""
    found = temp_files(run_dir)
    for path in found:
        path.unlink(missing_ok=True)
    return found


# --- strict JSON and full disks ----------------------------------------------------------------


def strict_json(data, path: str | Path, **dumps) -> str:
    """``json.dumps`` that refuses NaN and infinity (Python's default writes them, and the file is
    then not JSON) with a :class:`NonFiniteValueError` naming ``path`` and the key."""
    try:
        return json.dumps(data, allow_nan=False, **dumps)
    except ValueError:
        found = _first_non_finite(data, "")
        if found is None:
            raise
        key, value = found
        raise NonFiniteValueError(
            f"{path} not written: {key or 'the value'} is {value}, and strict JSON has no NaN or "
            "infinity; the run's numbers are not finite (it diverged): lower --lr, delete the run "
            "directory and train it again") from None


def _first_non_finite(data, key: str) -> tuple[str, float] | None:
    if isinstance(data, float) and not math.isfinite(data):
        return key, data
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(
        data, (list, tuple)) else ()
    for name, value in items:
        found = _first_non_finite(value, f"{key}.{name}" if key else str(name))
        if found is not None:
            return found
    return None


def _reject_constant(name: str):
    raise ValueError(f"{name} is not strict JSON")


def _strict_loads(text: str):
    return json.loads(text, parse_constant=_reject_constant)


# Below this much free space a failed write is put down to the disk, even when the serializer
# lost the OSError behind it (torch.save reports ENOSPC as "[enforce fail at
# inline_container.cc] ... unexpected pos"): no checkpoint fits there anyway.
LOW_SPACE_BYTES = 1 << 20


def _is_disk_full(error: BaseException, path: Path) -> bool:
    seen = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    free = _free_bytes(path)
    return free is not None and free < LOW_SPACE_BYTES


def _existing_parent(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing_parent(path)).free
    except OSError:
        return None


def _mount_point(path: Path) -> Path:
    path = _existing_parent(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def disk_full_message(path: str | Path) -> str:
    path = Path(path)
    free = _free_bytes(path)
    free_text = "unknown" if free is None else _size(free)
    return (f"no space left on the disk mounted at {_mount_point(path)} ({free_text} free): {path} "
            "was not written "
            "(its previous version, if any, is intact); free some space there or train into "
            "another --runs-dir, then run the same command again")


# --- the metrics log and the summary -----------------------------------------------------------


def read_metrics(path: str | Path, *, on_torn_last: Callable[[str], object] | None = None
                 ) -> list[dict]:
    """The records of ``metrics.jsonl`` ([] without the file). A line that does not parse is a
    :class:`RunFileError` naming the file and the line, except, with ``on_torn_last``, a last
    line cut short (a copy or a disk that lost the file's tail): that one is dropped and
    ``on_torn_last(warning)`` called. A resume may do so; its checkpoint says which epochs the
    log must hold."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = _strict_loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("not a JSON object with an integer 'epoch'")
        except ValueError as error:
            if on_torn_last is not None and not any(rest.strip() for rest in lines[number:]):
                on_torn_last(f"warning: {path}: its last line (line {number}) is cut short "
                             f"({error}); dropped")
                break
            raise RunFileError(
                f"{path}: line {number} is not a valid record ({error}); restore the file (git "
                "checkout, for a committed run) or delete the run directory and train it again"
            ) from None
        records.append(record)
    return records


def rewrite_metrics(path: str | Path, records: list[dict]) -> None:
    """Replace the log with ``records`` (after a resume drops epochs newer than the checkpoint)."""
    atomic_write_text(path, "".join(strict_json(r, path) + "\n" for r in records))


def append_metrics(path: str | Path, record: dict) -> None:
    # Rewriting the whole small file keeps every state of it complete, even under SIGKILL.
    rewrite_metrics(path, read_metrics(path) + [record])


def _read_object(path: Path, fix: str) -> dict | None:
    """A strict JSON object file, or None without the file; anything else is a
    :class:`RunFileError` naming the file and ``fix``."""
    if not path.exists():
        return None
    try:
        data = _strict_loads(path.read_text(errors="replace"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        raise RunFileError(f"{path} is unreadable ({error}); {fix}") from None
    return data


def read_summary(run_dir: str | Path) -> dict | None:
    """A run's ``summary.json``, or None while the run is unfinished. One that does not parse as
    a strict JSON object is a :class:`RunFileError` naming the file and the fix, for every
    reader alike (``lsq train``, ``compare-runs``)."""
    return _read_object(
        Path(run_dir) / SUMMARY,
        "restore it (git checkout, for a committed run) or delete it and run the same lsq "
        "train command again, which finishes the run from its checkpoint")


def read_diverged(run_dir: str | Path) -> dict | None:
    """A run's ``diverged.json`` (where its loss became non-finite), or None."""
    return _read_object(
        Path(run_dir) / DIVERGED,
        "restore it (git checkout, for a committed run) or delete it and run the same lsq "
        "train command again, which trains the run on from its checkpoint")


def where_diverged(record: dict, *, layer: bool = False) -> str:
    """Where a ``diverged.json`` record says its run diverged: "epoch 1, step 244", with
    ", first non-finite output L" when ``layer`` and it names one. A missing step (the test
    loss found it) is left out; NaN counts as missing (a DataFrame row)."""
    def given(value):
        return value is not None and value == value and value != ""
    text = f"epoch {int(record['epoch'])}" if given(record.get("epoch")) else "epoch ?"
    if given(record.get("step")):
        text += f", step {int(record['step'])}"
    if layer and given(record.get("layer")):
        text += f", first non-finite output {record['layer']}"
    return text


def is_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / SUMMARY).exists()


# --- provenance --------------------------------------------------------------------------------


@functools.cache
@functools.cache
def git_sha() -> str:
    """The source tree's commit, with ``-dirty`` when it has uncommitted changes to tracked files.

    Read once per process: the code a process runs is what it imported when it started, so a
    commit or an edit of the tree while it trains must not change the SHA its files name
    (lsq.engine.run.fit asks at its start)."""
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
