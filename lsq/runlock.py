"""Which runs are being trained right now: one advisory lock per run directory.

``fit`` holds its run's lock for as long as it trains, so a second process training the same run
(two ``make`` invocations at once) is refused instead of interleaving checkpoints. A quantized
row started beside its float baseline (``lsq train --wait-for-baseline``, what ``make -j`` does
on CUDA) watches the baseline's lock: held means "still training", released without a
``summary.json`` means the baseline died, and the row stops with an error instead of waiting
forever.

The lock is an ``flock`` on ``<run_dir>/.lock`` (``lsq.runs.LOCK``): it lives with the run, so
every process that names the run directory, whatever its ``TMPDIR`` or user, sees the same lock.
The holder removes the file when it lets go, and the run directory with it if the run wrote
nothing else (a run refused for bad input leaves nothing behind); a killed holder leaves the
file, unlocked: the kernel releases a lock when its process ends, however it ends (SIGKILL
included), which is what the waiter relies on. Because the file can be removed, a lock counts
only while the file at the path is still the one locked (the usual lock-file protocol). Linux
and macOS only (``fcntl``), like the rest of the Make pipeline; a shared network file system
must support ``flock`` for it to hold across machines.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from lsq import runs
from lsq.errors import BaselineFailedError, RunLockedError  # noqa: F401 - raised here


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / runs.LOCK


def _is_current(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a releasing holder may have removed
    it after this process opened it)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def holding(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block; :class:`RunLockedError` if another process has it.
    Creates ``run_dir`` for its lock file; on leaving, removes the lock file and every directory
    it created that is empty again."""
    run_dir = Path(run_dir)
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]
    path = lock_path(run_dir)
    while True:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:
            continue  # another releasing holder removed the empty directory: make it again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{run_dir} is being trained by another process; wait for it to finish or stop "
                "it, then run this again") from None
        if _is_current(fd, path):
            break
        os.close(fd)  # locked a file its holder had just removed: take the one there now
    try:
        yield
    finally:
        # Remove the file while still holding it, so no process can lock it in between.
        path.unlink(missing_ok=True)
        os.close(fd)
        for directory in created:  # deepest first
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (the run wrote files): keep it and everything above


def is_running(run_dir: str | Path) -> bool:
    """Whether some process holds ``run_dir``'s lock now. Creates nothing."""
    path = lock_path(run_dir)
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            if _is_current(fd, path):
                return False
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
