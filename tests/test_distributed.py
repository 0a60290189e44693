"""DistributedDataParallel under torchrun: 2 CPU processes, gloo backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lsq import runs as runfmt

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "synthetic", "--profile", "smoke", "--set", "data.train_subset=256",
         "--set", "data.test_subset=96", "--batch-size", "32", "--no-progress"]

pytestmark = pytest.mark.slow


def torchrun(*args, runs: Path, background: bool = False):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "lsq", "train", *SMALL, *args, "--runs-dir", str(runs)]
    env = {**os.environ, "LSQ_COMPILE": "0", "LSQ_DIST_BACKEND": "gloo", "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_ddp_trains_float_and_lsq_rows_and_resumes(tmp_path):
    runs = tmp_path / "runs"
    torchrun("--row", "0", "--epochs", "1", runs=runs)
    float_dir = runs / "synthetic/smoke/row0/seed0"
    summary = json.loads((float_dir / "summary.json").read_text())
    # Each rank trains on its half of every epoch; the metrics are reduced over both.
    assert summary["train_images"] == 256 and summary["test_images"] == 96
    records = runfmt.read_metrics(float_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1]
    assert 0.0 <= records[0]["test_top1"] <= 100.0

    # A quantized row: step sizes are calibrated on rank 0's batch and broadcast by DDP; the loop
    # itself checks at the end that every rank holds rank 0's parameters (it raises otherwise).
    row_dir = runs / "synthetic/smoke/row4/seed0"
    process = torchrun("--row", "4", "--epochs", "3", runs=runs, background=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        done = [r["epoch"] for r in runfmt.read_metrics(row_dir / "metrics.jsonl")] if (
            row_dir / "metrics.jsonl").exists() else []
        if 1 in done:
            break
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert not (row_dir / "summary.json").exists(), "killed before the end"
    before = {r["epoch"]: r for r in runfmt.read_metrics(row_dir / "metrics.jsonl")}

    torchrun("--row", "4", "--epochs", "3", runs=runs)
    after = runfmt.read_metrics(row_dir / "metrics.jsonl")
    assert [r["epoch"] for r in after] == [0, 1, 2, 3]
    timing = runfmt.TIMING_KEYS
    assert {k: v for k, v in after[1].items() if k not in timing} == {
        k: v for k, v in before[1].items() if k not in timing}, "resumed epochs match"
    assert all(v["min"] > 0 for v in after[-1]["step_sizes"].values())
    assert (row_dir / "summary.json").exists()
    # Only rank 0 writes: no stray files from rank 1.
    assert {p.name for p in row_dir.iterdir()} == {"config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json",
                                                "tensorboard"}
