"""Run locks: one trainer per run, and a waiter that notices a baseline that died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lsq import runlock
from lsq.config import make_config
from lsq.engine.launch import fit_after_baseline
from lsq.engine.run import fit
from lsq.errors import TrainingError

REPO = Path(__file__).resolve().parent.parent


def test_a_second_holder_is_refused_and_the_lock_frees_on_exit(tmp_path):
    run = tmp_path / "run"
    assert not runlock.is_running(run)
    with runlock.holding(run):
        assert runlock.is_running(run)
        with pytest.raises(runlock.RunLockedError, match="being trained by another process"):
            with runlock.holding(run):
                pass
    assert not runlock.is_running(run)
    assert not run.exists(), "the lock file, and the folder made for it, go with the lock"


def test_the_lock_is_a_file_of_the_run_directory_and_a_run_that_wrote_keeps_its_folder(tmp_path):
    run = tmp_path / "runs" / "row0" / "seed0"
    with runlock.holding(run):
        assert (run / ".lock").is_file()
        (run / "config.yaml").write_text("{}")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_watching_a_run_creates_nothing(tmp_path):
    assert not runlock.is_running(tmp_path / "not" / "there")
    assert not any(tmp_path.iterdir())


def test_fit_refuses_a_run_another_process_trains(tmp_path):
    config = make_config("synthetic", 0, "smoke")
    with runlock.holding(config.run_dir(tmp_path)):
        with pytest.raises(runlock.RunLockedError):
            fit(config, tmp_path, progress=False, log=lambda *_: None)
        assert {p.name for p in config.run_dir(tmp_path).iterdir()} == {".lock"}, (
            "nothing written by the refused run")


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lsq import runlock\n"
         "with runlock.holding(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(run)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert runlock.is_running(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert not runlock.is_running(run)


def hold_for(run: Path, seconds: float, then=None) -> threading.Thread:
    """Another trainer, in a thread: holds ``run``'s lock for ``seconds``, then calls ``then``."""
    held = threading.Event()

    def body():
        with runlock.holding(run):
            held.set()
            time.sleep(seconds)
            if then is not None:
                then()

    thread = threading.Thread(target=body)
    thread.start()
    held.wait(10)
    return thread


def test_the_wait_ends_when_the_run_finishes(tmp_path):
    run, done = tmp_path / "row0", tmp_path / "row0" / "summary.json"
    run.mkdir()
    thread = hold_for(run, 0.5, then=lambda: done.write_text("{}"))
    waited = runlock.wait_until_finished(run, done, grace_seconds=10, poll_seconds=0.05)
    thread.join()
    assert 0.3 < waited < 10


def test_the_wait_fails_when_the_run_stops_unfinished(tmp_path):
    run = tmp_path / "row0"
    thread = hold_for(run, 0.3)
    with pytest.raises(runlock.BaselineFailedError, match="stopped without finishing"):
        runlock.wait_until_finished(run, run / "summary.json", grace_seconds=60, poll_seconds=0.05)
    thread.join()


def test_the_wait_fails_when_the_run_never_starts(tmp_path):
    run = tmp_path / "row0"
    started = time.monotonic()
    with pytest.raises(runlock.BaselineFailedError, match="not being trained"):
        runlock.wait_until_finished(run, run / "summary.json", grace_seconds=0.5, poll_seconds=0.05)
    assert time.monotonic() - started < 5


def test_waiting_for_a_missing_baseline_is_one_clear_error(tmp_path):
    config = make_config("synthetic", 2, "smoke").with_overrides(
        "data.train_subset=64", "data.test_subset=32", "optim.batch_size=32")
    with pytest.raises(TrainingError, match="float baseline of this row: .* not being trained"):
        fit_after_baseline(config, tmp_path, progress=False, log=lambda *_: None, grace_seconds=0.2)
    assert not any(tmp_path.rglob("*")), "nothing written for the row"
    with pytest.raises(TrainingError, match="row 0 is the baseline"):
        fit_after_baseline(make_config("synthetic", 0, "smoke"), tmp_path, progress=False)


def test_mps_daemon_is_found_by_its_control_pipe(tmp_path):
    from lsq.engine.host import mps_daemon_running

    assert not mps_daemon_running({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)})
    (tmp_path / "control").touch()
    assert mps_daemon_running({"CUDA_MPS_PIPE_DIRECTORY": str(tmp_path)})


@pytest.mark.parametrize("daemon", [False, True])
def test_rows_waiting_on_cuda_without_mps_say_how_to_start_it(tmp_path, monkeypatch, daemon):
    import torch

    import lsq.engine.launch

    class Stop(Exception):
        pass

    def stop(*_, **__):
        raise Stop

    # The CUDA branch on a CPU machine: the device resolves to CUDA, and the run stops at its
    # compile warm-up, after the hint would have been given.
    monkeypatch.setattr(lsq.engine.launch, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(lsq.engine.launch, "warm_and_keep_compiled", stop)
    pipes = tmp_path / "mps"
    pipes.mkdir()
    if daemon:
        (pipes / "control").touch()
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipes))
    lines = []
    with pytest.raises(Stop):
        fit_after_baseline(make_config("synthetic", 2, "smoke"), tmp_path / "runs", progress=False,
                           log=lines.append)
    assert any("nvidia-cuda-mps-control -d" in line for line in lines) is not daemon
