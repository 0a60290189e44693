"""`make LAUNCH=...`: a cluster launcher put before every training command (Slurm's srun)."""

from __future__ import annotations

import os
import stat
import subprocess

from cli_helpers import REPO

# A stand-in for srun: records its arguments, drops its own options, runs the command.
FAKE_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$SRUN_LOG"
while [[ "$1" == --* ]]; do shift; done
exec "$@"
"""


def test_every_training_runs_as_a_job_step_of_the_launcher(tmp_path):
    srun = tmp_path / "srun"
    srun.write_text(FAKE_SRUN)
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    log, runs = tmp_path / "srun.log", tmp_path / "runs"
    target = runs / "synthetic/smoke/row0/seed0/summary.json"
    result = subprocess.run(
        ["make", "--no-print-directory", str(target), f"RUNS={runs}",
         f"LAUNCH={srun} --ntasks=1 --gres=gpu:1 --exclusive",
         "TRAIN_ARGS=--set data.train_subset=64 --set data.test_subset=64"],
        cwd=REPO, env={**os.environ, "SRUN_LOG": str(log)}, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert target.is_file()
    calls = log.read_text().splitlines()
    assert len(calls) == 1
    assert calls[0].startswith("--ntasks=1 --gres=gpu:1 --exclusive ")
    assert " -m lsq train " in calls[0] and "--row 0" in calls[0]
