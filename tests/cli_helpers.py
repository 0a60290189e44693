"""Running ``python -m lsq`` from the tests: the repository root and one subprocess helper."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lsq_cli(*args, runs_dir: Path, env: dict | None = None, check: bool = True, **popen):
    command = [sys.executable, "-m", "lsq", *args, "--runs-dir", str(runs_dir), "--no-progress"]
    # A value of None removes the variable (e.g. the suite's OMP_NUM_THREADS).
    full_env = {k: v for k, v in {**os.environ, "LSQ_COMPILE": "0", **(env or {})}.items()
                if v is not None}
    if popen.pop("background", False):
        return subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result
