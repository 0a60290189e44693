"""Which runs are being trained right now, on this machine: one advisory lock per run directory.

``fit`` holds its run's lock for as long as it trains, so a second process training the same run
(two ``make`` invocations at once) is refused instead of interleaving checkpoints. A quantized
row started beside its float baseline (``lsq train --wait-for-baseline``, what ``make -j`` does
on CUDA) watches the baseline's lock: held means "still training", released without a
``summary.json`` means the baseline died, and the row stops with an error instead of waiting
forever.

The locks are ``flock`` locks on files under the system's temp directory, named by the run
directory's absolute path, so run directories hold only the run's files. The kernel releases a
lock when its process ends, however it ends (SIGKILL included), which is what the waiter relies
on. Linux and macOS only (``fcntl``), like the rest of the Make pipeline.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from lsq.errors import BaselineFailedError, RunLockedError  # noqa: F401 - raised here

LOCK_DIR = Path(tempfile.gettempdir()) / "lsq-run-locks"


def lock_path(run_dir: Path) -> Path:
    key = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return LOCK_DIR / f"{key}.lock"


def _open(run_dir: Path) -> int:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    return os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o666)


@contextlib.contextmanager
def holding(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; :class:`RunLockedError` if another process has it."""
    fd = _open(run_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(
                f"{run_dir} is being trained by another process on this machine; wait for it to "
                "finish or stop it, then run this again") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def is_running(run_dir: Path) -> bool:
    """Whether some process on this machine holds ``run_dir``'s lock now."""
    fd = _open(run_dir)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def wait_until_finished(run_dir: Path, done: Path, *, grace_seconds: float,
                        poll_seconds: float = 1.0) -> float:
    """Block until ``done`` (the run's summary.json) exists; returns the seconds waited.

    Raises :class:`BaselineFailedError` if the run was seen training and then stopped without
    ``done``, or was not seen training within ``grace_seconds`` (it has to be started: the
    caller's process may start first, as under ``make -j``).
    """
    started = time.monotonic()
    seen_running = False
    while not done.exists():
        if is_running(run_dir):
            seen_running = True
        elif done.exists():  # it finished between the two checks
            break
        elif seen_running:
            raise BaselineFailedError(
                f"{run_dir} stopped without finishing (no {done.name}); see its log, then run "
                "it and this row again")
        elif time.monotonic() - started > grace_seconds:
            raise BaselineFailedError(
                f"{run_dir} is not being trained and has no {done.name} after "
                f"{grace_seconds:.0f} s; start it first (make does), or drop --wait-for-baseline")
        time.sleep(poll_seconds)
    return time.monotonic() - started
