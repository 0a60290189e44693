"""Running ``python -m lsq`` from the tests: the repository root, a subprocess helper and an
in-process one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cli(capsys, *argv: str, runs: Path) -> tuple[int, str, str]:
    """``python -m lsq ARGV --runs-dir RUNS --no-progress`` in this process: (status, out, err)."""
    from lsq.__main__ import main

    try:
        code = main([*argv, "--runs-dir", str(runs), "--no-progress"])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines the CLI printed."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


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
