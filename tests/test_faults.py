"""The fault campaign, kept as tests: kills, signals, a full disk, torn files, locks across
temp directories, bad input. docs/guarantees.md maps each promise of a run directory to these.

Cheap by construction: a 3-epoch float run of 128 synthetic images; runs that must match an
uninterrupted one bit for bit go through the CLI in a subprocess like that reference, the rest
call ``lsq.__main__.main`` in this process.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lsq import runlock
from lsq import runs as runfmt
from lsq.__main__ import main

from cli_helpers import REPO, cli, lsq_cli

SMALL = ["--dataset", "synthetic", "--profile", "smoke", "--set", "data.train_subset=128",
         "--set", "data.test_subset=64", "--batch-size", "32"]
ROW0 = ["train", *SMALL, "--row", "0", "--epochs", "3"]
RUN_FILES = {"config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json"}
RUN_ENTRIES = RUN_FILES | {"tensorboard"}  # what a finished run directory holds


def run_dir(runs: Path, row: int = 0) -> Path:
    return runs / "synthetic" / "smoke" / f"row{row}" / "seed0"


def results(directory: Path) -> tuple[list[dict], dict]:
    """What must match bit for bit: the epoch records and the summary, timing and provenance
    left out."""
    records = [{k: v for k, v in r.items() if k not in runfmt.TIMING_KEYS}
               for r in runfmt.read_metrics(directory / runfmt.METRICS)]
    summary = {k: v for k, v in runfmt.read_summary(directory).items()
               if k not in runfmt.PROVENANCE_KEYS}
    return records, summary


def snapshot(root: Path) -> dict:
    """Every file with its size and mtime, every folder by name (taking and releasing a lock
    touches a folder's mtime, not its contents)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file()
            else None for p in root.rglob("*")}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, and its process's wall time and start-up."""
    runs = tmp_path_factory.mktemp("reference")
    started = time.monotonic()
    lsq_cli(*ROW0, runs_dir=runs)
    seconds = time.monotonic() - started
    startup = runfmt.read_metrics(run_dir(runs) / runfmt.METRICS)[0]["startup_seconds"]
    return run_dir(runs), seconds, startup


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A resumable run as a kill leaves it between an epoch's log line and its checkpoint:
    metrics.jsonl holds epochs 1 and 2, checkpoint.pt is after epoch 1."""
    import lsq.engine.run

    runs = tmp_path_factory.mktemp("interrupted")
    real_save, calls = lsq.engine.run.save_checkpoint, []

    def save_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # epoch 0, epoch 1, then the one after epoch 2 never happens
            raise KeyboardInterrupt
        real_save(*args, **kwargs)

    lsq.engine.run.save_checkpoint = save_then_stop
    try:
        assert main([*ROW0, "--runs-dir", str(runs), "--no-progress"]) == 130
    finally:
        lsq.engine.run.save_checkpoint = real_save
    directory = run_dir(runs)
    assert [r["epoch"] for r in runfmt.read_metrics(directory / runfmt.METRICS)] == [1, 2]
    assert torch.load(directory / runfmt.CHECKPOINT, weights_only=False)["epoch"] == 1
    return directory


def copy_run(directory: Path, runs: Path) -> Path:
    target = run_dir(runs)
    shutil.copytree(directory, target)
    return target


# --- kills and signals -------------------------------------------------------------------------


def test_sigkill_at_random_points_then_resume_is_bit_identical(reference, tmp_path):
    reference_dir, seconds, startup = reference
    rng = random.Random(1902_08153)
    killed = 0
    for _ in range(3):
        process = lsq_cli(*ROW0, runs_dir=tmp_path, background=True)
        # From halfway through the start-up to the end of a whole run: imports, the first
        # writes, mid-epoch, between an epoch's writes.
        deadline = time.monotonic() + rng.uniform(0.5 * startup, seconds)
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.wait(timeout=60)
        process.stdout.close()
    assert killed, "at least one kill must land before the run ends"
    lsq_cli(*ROW0, runs_dir=tmp_path)
    assert results(run_dir(tmp_path)) == results(reference_dir)
    assert {p.name for p in run_dir(tmp_path).iterdir()} == RUN_ENTRIES, "no .tmp, no .lock left"


def _signal_mid_run(runs: Path, signum: int) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "lsq", *ROW0, "--runs-dir", str(runs), "--no-progress"], cwd=REPO,
        env={**os.environ, "LSQ_COMPILE": "0"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    metrics = run_dir(runs) / runfmt.METRICS
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and not metrics.exists():
        time.sleep(0.01)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_clean_up_and_say_how_to_resume(reference, tmp_path, signum, status):
    result = _signal_mid_run(tmp_path, signum)
    assert result.returncode == status, result.stderr
    assert result.stderr.splitlines() == [
        f"interrupted ({signal.Signals(signum).name}): run the same command again to resume"]
    directory = run_dir(tmp_path)
    assert not (directory / runfmt.LOCK).exists(), "the lock is released and its file removed"
    assert not runfmt.temp_files(directory)
    assert not runfmt.is_done(directory)
    if signum == signal.SIGTERM:
        lsq_cli(*ROW0, runs_dir=tmp_path)
        assert results(directory) == results(reference[0])


def _handler_installed(pid: int) -> bool:
    """Whether the process catches SIGTERM yet (Python's own start-up catches only SIGINT)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True  # it has exited: nothing to wait for
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_the_first_milliseconds_is_one_line_not_a_traceback(tmp_path, signum, status):
    """The handler is installed before lsq's imports: a signal from then on (here the moment the
    process catches SIGTERM, tens of milliseconds after it starts) ends it with one line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "lsq", *ROW0, "--runs-dir", str(tmp_path), "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not _handler_installed(process.pid) and time.monotonic() < deadline:
        time.sleep(0.001)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == status and "Traceback" not in err, err
    assert err.splitlines() == [
        f"interrupted ({signal.Signals(signum).name}): run the same command again to resume"]
    assert not any(tmp_path.rglob("*"))


def test_stale_temp_files_of_a_killed_write_are_removed_by_the_next_run(interrupted, tmp_path, capsys):
    directory = copy_run(interrupted, tmp_path)
    stale = [directory / f".{name}.k1ll3d.tmp" for name in sorted(RUN_FILES)]
    for path in stale:
        path.write_bytes(b"half a file")
    code, out, err = cli(capsys, *ROW0, runs=tmp_path)
    assert code == 0, err
    assert not runfmt.temp_files(directory)
    for path in stale:
        assert f"removed {path.name}" in out
    assert {p.name for p in directory.iterdir()} == RUN_ENTRIES


# --- one writer per run ------------------------------------------------------------------------


def test_the_run_lock_is_seen_across_temp_directories(tmp_path, monkeypatch):
    """Two trainers with different TMPDIRs: the second is refused, because the lock is a file
    of the run directory, not of a temp directory."""
    directory = run_dir(tmp_path / "runs")
    (tmp_path / "tmp-a").mkdir()
    (tmp_path / "tmp-b").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lsq import runlock\n"
         "with runlock.holding(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
         str(directory)],
        cwd=REPO, env={**os.environ, "TMPDIR": str(tmp_path / "tmp-a")}, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp-b"))
        assert runlock.is_running(directory)  # what --wait-for-baseline watches
        result = lsq_cli(*ROW0, runs_dir=tmp_path / "runs", env={"TMPDIR": str(tmp_path / "tmp-b")},
                         check=False)
        assert result.returncode == 2
        assert error_lines(result.stderr) == [
            f"error: {directory} is being trained by another process; wait for it to finish or "
            "stop it, then run this again"]
        assert "Traceback" not in result.stderr
        assert {p.name for p in directory.iterdir()} == {runfmt.LOCK}, "nothing written"
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
    assert not runlock.is_running(directory)


# --- a full disk -------------------------------------------------------------------------------


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (part of the write
    that crosses it lands first, as on a real disk)."""

    def __init__(self, handle, room: int):
        self._handle, self._room = handle, room

    def write(self, data) -> int:
        if len(data) > self._room:
            self._handle.write(bytes(data[:self._room]))
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def fill_disk(monkeypatch, name: str, *, after_writes: int = 0, room: int = 10) -> None:
    """From the ``after_writes + 1``-th write of the run file ``name`` on, the disk is full."""
    real_fdopen, seen = os.fdopen, []

    def fdopen(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(f".{name}."):
            seen.append(name)
            if len(seen) > after_writes:
                return _FullDisk(handle, room)
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)


def assert_disk_full_error(err: str, path: Path) -> None:
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: no space left on the disk mounted at /")
    assert f"free): {path} was not written" in lines[0]
    assert "its previous version, if any, is intact" in lines[0]


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="names files by /proc (Linux)")
@pytest.mark.parametrize("name, after_writes", [
    ("config.yaml", 0),      # the first write of a run
    ("metrics.jsonl", 1),    # epoch 2's line: epoch 1's log must survive
    ("checkpoint.pt", 1),    # torch.save turns ENOSPC into "[enforce fail at inline_container.cc]"
    ("summary.json", 0),     # the last write: the run must stay resumable, not "done"
])
def test_a_full_disk_is_one_line_and_the_previous_file_survives(tmp_path, monkeypatch, capsys,
                                                                name, after_writes):
    directory = run_dir(tmp_path)
    fill_disk(monkeypatch, name, after_writes=after_writes, room=100)
    code, _, err = cli(capsys, *ROW0, runs=tmp_path)
    assert code == 2
    assert_disk_full_error(err, directory / name)
    if directory.exists():
        assert not runfmt.temp_files(directory) and not (directory / runfmt.LOCK).exists()
        assert not runfmt.is_done(directory)
    monkeypatch.undo()
    assert cli(capsys, *ROW0, runs=tmp_path)[0] == 0, "space freed: the same command finishes"
    assert [r["epoch"] for r in runfmt.read_metrics(directory / runfmt.METRICS)] == [1, 2, 3]


def test_a_save_that_fails_without_naming_enospc_on_a_full_disk_is_still_a_full_disk(
        interrupted, tmp_path, monkeypatch, capsys):
    """torch.save can lose the OSError behind a failed write; with (almost) no free space left,
    the failure is still put down to the disk."""
    directory = copy_run(interrupted, tmp_path)
    before = (directory / runfmt.CHECKPOINT).read_bytes()

    def torn_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(torch, "save", torn_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=4096))
    code, _, err = cli(capsys, *ROW0, runs=tmp_path)
    assert code == 2
    assert_disk_full_error(err, directory / runfmt.CHECKPOINT)
    assert "(4.0 KiB free)" in err
    assert (directory / runfmt.CHECKPOINT).read_bytes() == before
    assert not runfmt.temp_files(directory)


def test_a_failed_save_with_room_on_the_disk_is_a_bug_with_its_traceback(tmp_path, monkeypatch):
    def broken_save(obj, handle, *args, **kwargs):
        raise RuntimeError("a serializer bug")

    monkeypatch.setattr(torch, "save", broken_save)
    target = tmp_path / runfmt.CHECKPOINT
    with pytest.raises(RuntimeError, match="a serializer bug"):
        runfmt.atomic_torch_save({}, target)
    assert not any(tmp_path.iterdir())


# --- torn and unreadable files -----------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_and_the_run_goes_on(
        interrupted, tmp_path, capsys):
    directory = copy_run(interrupted, tmp_path)
    metrics = directory / runfmt.METRICS
    text = metrics.read_text()
    metrics.write_text(text[:len(text) - len(text.splitlines()[-1]) // 2 - 1])  # epoch 2, cut
    code, out, err = cli(capsys, *ROW0, runs=tmp_path)
    assert code == 0, err
    assert f"warning: {metrics}: its last line (line 2) is cut short" in out
    assert [r["epoch"] for r in runfmt.read_metrics(metrics)] == [1, 2, 3]


def test_a_metrics_log_missing_a_checkpointed_epoch_is_one_error(interrupted, tmp_path, capsys):
    directory = copy_run(interrupted, tmp_path)
    metrics = directory / runfmt.METRICS
    metrics.write_text(metrics.read_text().splitlines()[0][:40])  # epoch 1, which the checkpoint has
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *ROW0, runs=tmp_path)
    assert code == 2
    assert error_lines(err) == [
        f"error: {metrics} holds the records of epochs none, but {directory / runfmt.CHECKPOINT} "
        f"is after epoch 1: the log lost records the checkpoint cannot give back; delete "
        f"{directory} and train it again"]
    assert snapshot(tmp_path).keys() == before.keys()


def test_a_resume_without_config_yaml_checks_the_checkpoint_config_and_writes_it_back(
        interrupted, tmp_path, capsys):
    directory = copy_run(interrupted, tmp_path)
    original = (directory / runfmt.CONFIG).read_text()
    (directory / runfmt.CONFIG).unlink()
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *[a if a != "3" else "2" for a in ROW0], runs=tmp_path)
    assert code == 2
    assert error_lines(err) == [
        f"error: {directory} holds a run with another configuration (checkpoint.pt: "
        f"optim.epochs 3 → 2); ask for the run it holds, use another --runs-dir, or delete "
        f"{directory} to start over"]
    assert snapshot(tmp_path) == before, "nothing written"
    code, out, err = cli(capsys, *ROW0, runs=tmp_path)
    assert code == 0, err
    assert "config.yaml was missing; written back from checkpoint.pt" in out
    assert (directory / runfmt.CONFIG).read_text() == original


# --- a committed baseline without its checkpoint ----------------------------------------------


def test_retrain_baseline_retrains_a_checkpointless_baseline_apart_and_checks_it(reference, tmp_path):
    """A fresh clone's baseline has results but no checkpoint.pt: --retrain-baseline trains it
    again into <runs>/.baselines/, says it is bit-identical, and the row starts from it."""
    committed = run_dir(tmp_path)
    shutil.copytree(reference[0], committed, ignore=shutil.ignore_patterns(runfmt.CHECKPOINT))
    before = snapshot(committed)
    row = ["train", *SMALL, "--row", "2", "--epochs", "1"]
    result = lsq_cli(*row, "--retrain-baseline", runs_dir=tmp_path)
    retrained = run_dir(tmp_path / ".baselines")
    assert f"{retrained}: bit-identical to {committed}" in result.stdout
    assert f"starting from the retrained baseline {retrained / runfmt.CHECKPOINT}" in result.stdout
    assert runfmt.is_done(run_dir(tmp_path, 2)) and results(retrained) == results(committed)
    assert snapshot(committed) == before, "the committed run is left as it was"
    assert [run_id.run_name for run_id, _ in runfmt.discover(tmp_path)] == ["row0", "row2"], (
        "the retrained copy is not a run of the tree")


def test_a_retrained_baseline_that_differs_names_the_first_difference(reference, tmp_path):
    from lsq.engine.run import _first_result_difference

    other = tmp_path / "other"
    shutil.copytree(reference[0], other)
    records = runfmt.read_metrics(other / runfmt.METRICS)
    records[1]["test_loss"] += 1e-9
    runfmt.rewrite_metrics(other / runfmt.METRICS, records)
    assert _first_result_difference(reference[0], other).startswith("epoch 2: test_loss ")
    assert _first_result_difference(reference[0], reference[0]) is None


# --- results are finite, strict JSON -----------------------------------------------------------


def test_a_diverged_run_stops_with_one_line_and_writes_no_nan(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *SMALL, "--row", "0", "--epochs", "1", "--lr", "1e6",
                       runs=tmp_path)
    directory = run_dir(tmp_path)
    assert code == 2
    assert error_lines(err) == [
        f"error: test loss is nan after epoch 1: the run diverged (lr 1e+06); recorded in "
        f"{directory / 'diverged.json'} (the report shows the run as diverged); to train it "
        f"again, delete {directory}, or use another --runs-dir with a lower --lr"]
    assert not runfmt.is_done(directory)
    assert (directory / "diverged.json").exists()
    for path in directory.glob("*.json*"):  # strict JSON: no NaN in what was written
        texts = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for text in texts:
            json.loads(text, parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))


def test_json_files_refuse_nan_and_infinity_naming_the_file_and_key(tmp_path):
    from lsq.errors import NonFiniteValueError

    with pytest.raises(NonFiniteValueError, match=r"summary.json not written: final_test_loss is nan"):
        runfmt.write_json(tmp_path / "summary.json", {"final_top1": 10.0, "final_test_loss": float("nan")})
    with pytest.raises(NonFiniteValueError, match=r"step_sizes.conv1.max is inf"):
        runfmt.append_metrics(tmp_path / "metrics.jsonl",
                              {"epoch": 1, "step_sizes": {"conv1": {"max": float("inf")}}})
    assert not any(tmp_path.iterdir())


# --- bad input: one line, exit 2, nothing written ----------------------------------------------


def _finished_baseline_without_checkpoint(runs: Path) -> None:
    """What a fresh clone holds of a committed baseline: its results, no checkpoint."""
    from lsq.config import make_config

    directory = run_dir(runs)
    directory.mkdir(parents=True)
    config = make_config("synthetic", 0, "smoke").with_overrides(
        "data.train_subset=128", "data.test_subset=64", "optim.batch_size=32", "optim.epochs=3")
    (directory / runfmt.CONFIG).write_text(config.to_yaml())
    (directory / runfmt.METRICS).write_text('{"epoch": 1, "test_top1": 10.0}\n')
    (directory / runfmt.SUMMARY).write_text('{"final_top1": 10.0}\n')


def _unreadable_summary(runs: Path) -> None:
    _finished_baseline_without_checkpoint(runs)
    (run_dir(runs) / runfmt.SUMMARY).write_text('{"final_top1": 1')


def _corrupt_checkpoint(runs: Path) -> None:
    _finished_baseline_without_checkpoint(runs)
    (run_dir(runs) / runfmt.SUMMARY).unlink()
    (run_dir(runs) / runfmt.CHECKPOINT).write_bytes(b"not a checkpoint")


def _nothing(runs: Path) -> None:
    pass


BAD_INPUTS = [
    # (arguments after `train`, what the runs directory holds first, text of the one error line)
    (["--dataset", "mnist", "--row", "0"], _nothing, "invalid choice: 'mnist'"),
    ([*SMALL, "--row", "7"], _nothing, "unknown row 7"),
    ([*SMALL, "--row", "0", "--set", "optim.lrr=1"], _nothing, "unknown config key 'optim.lrr'"),
    ([*SMALL, "--row", "0", "--set", "optim.lr=["], _nothing, "is not a valid value"),
    (["--dataset", "cifar10", "--row", "0", "--data-dir", "/nonexistent/cifar"], _nothing,
     "/nonexistent/cifar"),
    ([*SMALL, "--row", "2"], _nothing,
     "make it first: python -m lsq train --dataset synthetic --row 0 --profile smoke --seed 0"),
    ([*SMALL, "--row", "2", "--epochs", "1"], _finished_baseline_without_checkpoint,
     "add --retrain-baseline to this command to retrain them"),
    ([*SMALL, "--row", "0", "--retrain-baseline"], _nothing,
     "--retrain-baseline is for the quantized rows 1-4"),
    ([*SMALL, "--row", "2", "--retrain-baseline", "--wait-for-baseline"], _nothing,
     "--wait-for-baseline and --retrain-baseline do not go together"),
    ([*SMALL, "--row", "0", "--epochs", "5"], _finished_baseline_without_checkpoint,
     "holds a run with another configuration (config.yaml: optim.epochs 3 → 5)"),
    ([*SMALL, "--row", "0", "--epochs", "3"], _unreadable_summary, "summary.json is unreadable"),
    ([*SMALL, "--row", "0", "--epochs", "3"], _corrupt_checkpoint,
     "is corrupt or unreadable (UnpicklingError"),
]


@pytest.mark.parametrize("args, setup, message", BAD_INPUTS,
                         ids=[m.split(":")[0][:40] for *_, m in BAD_INPUTS])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(tmp_path, capsys, args, setup, message):
    setup(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, "train", *args, runs=tmp_path)
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before, "nothing written"


def test_compare_runs_reads_an_unreadable_summary_as_the_same_one_error(tmp_path, capsys):
    for side in ("reference", "candidate"):
        _finished_baseline_without_checkpoint(tmp_path / side)
    (run_dir(tmp_path / "reference") / runfmt.SUMMARY).write_text("{")
    code = main(["compare-runs", str(tmp_path / "reference"), str(tmp_path / "candidate")])
    err = capsys.readouterr().err
    assert code == 2
    assert error_lines(err) == [
        f"error: {run_dir(tmp_path / 'reference') / runfmt.SUMMARY} is unreadable (Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)); restore it (git "
        "checkout, for a committed run) or delete it and run the same lsq train command again, "
        "which finishes the run from its checkpoint"]


def test_an_interrupt_inside_a_write_stays_an_interrupt(tmp_path):
    # torch.save's zip writer fails on the torn stream after a signal inside it, and its
    # RuntimeError would otherwise hide the interrupt (a traceback instead of the one line).
    class TornZip:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    def write(handle):
        with TornZip():
            raise KeyboardInterrupt("SIGTERM")

    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        runfmt.atomic_write(target, write)
    assert target.read_bytes() == b"old" and not runfmt.temp_files(tmp_path)


def test_a_run_names_the_code_it_started_with_not_a_later_commit(monkeypatch):
    """git_sha is read once per process (fit asks first): a commit or an edit of the tree while
    a run trains must not change the SHA its summary names."""
    from lsq import runs as run_format

    calls = []
    real_run = run_format.subprocess.run

    def counting(command, *args, **kwargs):
        calls.append(command)
        return real_run(command, *args, **kwargs)

    run_format.git_sha.cache_clear()
    monkeypatch.setattr(run_format.subprocess, "run", counting)
    first = run_format.git_sha()
    asked = len(calls)
    assert run_format.git_sha() == first and len(calls) == asked  # cached: git not asked again
    run_format.git_sha.cache_clear()
