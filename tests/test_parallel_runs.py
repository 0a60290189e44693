"""Rows trained side by side (``make -jN``): a quantized row started beside its float baseline
(``--wait-for-baseline``) compiles while the baseline trains and keeps its compiled code, and each
process takes its share of the cores."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lsq import runs as runfmt
from lsq.config import make_config
from lsq.quant.kernels import cxx_compiler_available
from lsq.engine.host import share_cpu_threads
from lsq.engine.launch import warm_compile_cache
from lsq.engine.run import fit

from cli_helpers import REPO, lsq_cli

SMALL = ("data.train_subset=64", "data.test_subset=32", "optim.batch_size=32", "optim.epochs=1")


def small_config(row: int, **changes):
    return replace(make_config("synthetic", row, "smoke").with_overrides(*SMALL), device="cpu",
                   **changes)


# Each step in a fresh process, as make runs them: in one process, dynamo's memory of earlier
# compiles (other tests' too) would change what the second compile asks the cache for.
CACHE_DRIVER = """
import json, sys
from dataclasses import replace
from torch._dynamo.utils import counters
from lsq.config import make_config
from lsq.engine.launch import warm_and_keep_compiled
from lsq.engine.run import fit

step, runs, layout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
small = json.loads(sys.argv[4])
def config(row, **changes):
    return replace(make_config("synthetic", row, "smoke").with_overrides(*small), device="cpu",
                   **layout, **changes)
if step == "baseline":
    fit(config(0), runs, progress=False, log=print)
else:
    if step == "warm-then-run":  # what lsq train --wait-for-baseline does in one process
        warm_and_keep_compiled(config(4, compile_model=True), runs, log=print)
        counters.clear()
    assert fit(config(4, compile_model=True), runs, progress=False, log=print)["compiled"]
    print("INDUCTOR", json.dumps(dict(counters["inductor"])))
    print("DYNAMO", json.dumps(dict(counters["stats"])))
"""


@pytest.mark.skipif(not cxx_compiler_available(), reason="torch.compile needs a C++ compiler on the CPU")
def test_a_row_warmed_in_its_own_process_compiles_nothing_and_trains_as_a_fresh_process(tmp_path):
    # bf16 and channels-last: the layout the CUDA tables train in, the most guards to hold.
    layout = dict(amp=True, channels_last=True)
    runs = tmp_path / "runs"
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}

    def step(name: str) -> dict:
        result = subprocess.run([sys.executable, "-c", CACHE_DRIVER, name, str(runs), json.dumps(layout),
                                 json.dumps(SMALL)], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    step("baseline")
    output = step("warm-then-run")
    # The warm-up's compiled code serves the run itself: nothing traced, nothing loaded.
    assert json.loads(output.split("DYNAMO ", 1)[1]).get("unique_graphs", 0) == 0, output
    assert not json.loads(output.split("INDUCTOR ", 1)[1].splitlines()[0])
    # ... and it trains as a run in a fresh process, whose graphs come from the on-disk cache.
    fresh = tmp_path / "fresh"
    shutil.copytree(runs / "synthetic" / "smoke" / "row0", fresh / "synthetic" / "smoke" / "row0")
    runs, kept = fresh, runs
    inductor = json.loads(step("run").split("INDUCTOR ", 1)[1].splitlines()[0])
    assert metrics(kept, 4) == metrics(fresh, 4)
    assert inductor.get("fxgraph_cache_miss", 0) == 0, inductor
    assert inductor["fxgraph_cache_hit"] >= 2  # the training step's forward and backward


def test_warm_up_skips_finished_and_uncompiled_runs(tmp_path):
    runs, log = tmp_path / "runs", []
    float_row = small_config(0)
    assert warm_compile_cache(float_row, runs, log=log.append) is False  # smoke on the CPU: eager
    assert "does not compile" in log[-1] and not runs.exists()
    fit(float_row, runs, progress=False, log=log.append)
    assert warm_compile_cache(replace(float_row, compile_model=True), runs, log=log.append) is False
    assert "already done" in log[-1]


def make_dry_run(*variables: str, runs: Path) -> str:
    result = subprocess.run(["make", "-n", "synthetic", "PROFILE=paper", f"RUNS={runs}", *variables],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


@pytest.mark.parametrize("variables, rows_early", [
    (["DEVICE=cuda"], [1, 2, 3, 4]),
    (["DEVICE=cuda:1"], [1, 2, 3, 4]),
    (["DEVICE=cuda", "WARM="], []),
    (["DEVICE=cpu"], []),
    (["DEVICE=cpu", "WARM=1"], [1, 2, 3, 4]),
])
def test_make_starts_quantized_rows_beside_row_0_on_cuda(tmp_path, variables, rows_early):
    commands = [c for c in make_dry_run(*variables, runs=tmp_path).splitlines() if " -m lsq train " in c]
    assert len(commands) == 5
    early = [c for c in commands if "--wait-for-baseline" in c]
    assert [int(c.split("--row ")[1].split()[0]) for c in early] == rows_early


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_a_single_rows_target_trains_its_baseline_first(tmp_path, device):
    """Rows start early only where the same make starts row 0: a row asked for alone would
    otherwise wait for a baseline nobody trains."""
    target = tmp_path / "synthetic" / "paper" / "row2" / "seed0" / "summary.json"
    result = subprocess.run(["make", "-n", str(target), "PROFILE=paper", f"RUNS={tmp_path}", f"DEVICE={device}"],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    trains = [c for c in result.stdout.splitlines() if " -m lsq train " in c]
    assert [int(c.split("--row ")[1].split()[0]) for c in trains] == [0, 2]
    assert not any("--wait-for-baseline" in c for c in trains)


@pytest.mark.parametrize("jobs, expected", [("-j5", "LSQ_PARALLEL_RUNS=5 "), ("-j2", "LSQ_PARALLEL_RUNS=2 "),
                                            (None, "LSQ_PARALLEL_RUNS= ")])
def test_make_tells_each_run_how_many_run_beside_it(tmp_path, jobs, expected):
    commands = make_dry_run(*([jobs] if jobs else []), "DEVICE=cpu", runs=tmp_path).splitlines()
    trains = [c for c in commands if " -m lsq train " in c]
    assert len(trains) == 5 and all(c.startswith(expected) for c in trains), trains


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("environ, expected", [
    ({"LSQ_PARALLEL_RUNS": "2"}, 4),
    ({"LSQ_PARALLEL_RUNS": "3"}, 2),
    ({"LSQ_PARALLEL_RUNS": "16"}, 1),
    ({"LSQ_PARALLEL_RUNS": "1"}, None),
    ({"LSQ_PARALLEL_RUNS": ""}, None),  # make's unlimited -j
    ({}, None),
    ({"LSQ_PARALLEL_RUNS": "4", "OMP_NUM_THREADS": "3"}, None),  # the user's choice wins
])
def test_parallel_runs_share_the_cores(monkeypatch, restore_threads, environ, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    torch.set_num_threads(1)
    assert share_cpu_threads(environ) == expected
    assert torch.get_num_threads() == (expected or 1)


TINY = ("--dataset", "synthetic", "--profile", "smoke", "--set", "data.train_subset=64",
        "--set", "data.test_subset=32", "--batch-size", "16")


def train_alone(runs: Path, **env) -> dict:
    """A tiny float run in its own process, with ``env`` instead of the suite's thread setting."""
    lsq_cli("train", *TINY, "--row", "0", runs_dir=runs,
            env={"OMP_NUM_THREADS": None, "LSQ_PARALLEL_RUNS": None, **env})
    return json.loads((runs / "synthetic" / "smoke" / "row0" / "seed0" / "summary.json").read_text())


def test_a_run_beside_others_equals_a_run_alone_with_its_thread_count(tmp_path):
    """make -jN changes a CPU run's thread count, hence its float reduction order: the result is
    that of a run alone with the same thread count, and the summary's device names it."""
    cores = len(os.sched_getaffinity(0))
    shared = train_alone(tmp_path / "shared", LSQ_PARALLEL_RUNS=str(cores))  # 1 thread each
    alone = train_alone(tmp_path / "alone", OMP_NUM_THREADS="1")
    assert "1 threads" in shared["device"] and shared["device"] == alone["device"]
    for key in ("final_test_loss", "final_top1", "final_top5"):
        assert shared[key] == alone[key]


def lsq_train(runs: Path, row: int, *extra: str, background: bool = False):
    """A tiny synthetic run in its own process, one thread (the results compare across runs)."""
    return lsq_cli("train", *TINY, "--epochs", "2", "--row", str(row), *extra, runs_dir=runs,
                   env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}, check=False,
                   background=background)


def metrics(runs: Path, row: int) -> list[dict]:
    path = runs / "synthetic" / "smoke" / f"row{row}" / "seed0" / "metrics.jsonl"
    return [{k: v for k, v in json.loads(line).items() if k not in runfmt.TIMING_KEYS}
            for line in path.read_text().splitlines()]


def test_a_row_started_beside_its_baseline_equals_one_started_after_it(tmp_path):
    early = tmp_path / "early"
    waiting = lsq_train(early, 1, "--wait-for-baseline", background=True)
    lines = []
    for line in waiting.stdout:  # the row is up and waiting before its baseline starts
        lines.append(line)
        if "waiting for the float baseline" in line:
            break
    time.sleep(1)
    assert lsq_train(early, 0).returncode == 0
    rest, _ = waiting.communicate(timeout=300)
    output = "".join(lines) + rest
    assert waiting.returncode == 0, output
    assert "baseline finished after" in output

    after = tmp_path / "after"
    for row in (0, 1):
        assert lsq_train(after, row).returncode == 0
    assert metrics(early, 1) == metrics(after, 1)
    first = json.loads((early / "synthetic" / "smoke" / "row1" / "seed0" / "metrics.jsonl")
                       .read_text().splitlines()[1])
    # Its start-up counts from the end of the wait, which lasted while row 0 started and trained
    # (the 1 s sleep and more); counted from the process start it would exceed the wait.
    assert first["baseline_wait_seconds"] > 1
    assert 0 < first["startup_seconds"] < first["baseline_wait_seconds"]


def test_waiting_runs_at_a_lower_priority_then_returns_where_allowed():
    from lsq.engine.host import lower_cpu_priority

    def nice(thread: int = 0) -> int:
        return os.getpriority(os.PRIO_PROCESS, thread)

    before = nice()
    if before > 9:
        pytest.skip("already at low priority")
    # Linux keeps nice values per thread: a thread started before the block (as torch's OpenMP
    # pool is) must be lowered too, and one started inside it restored with the rest.
    stop, ids = threading.Event(), {}

    def worker(name: str) -> None:
        ids[name] = threading.get_native_id()
        stop.wait()

    older = threading.Thread(target=worker, args=("older",))
    older.start()
    while "older" not in ids:
        time.sleep(0.01)
    with lower_cpu_priority():
        assert nice() == before + 10
        assert nice(ids["older"]) == before + 10
        newer = threading.Thread(target=worker, args=("newer",))
        newer.start()
        while "newer" not in ids:
            time.sleep(0.01)
        assert nice(ids["newer"]) == before + 10
    # Raising priority needs root; elsewhere the process stays lower, as under nice.
    after = before if os.geteuid() == 0 else before + 10
    try:
        assert [nice(), nice(ids["older"]), nice(ids["newer"])] == [after] * 3
    finally:
        stop.set()
        older.join()
        newer.join()
