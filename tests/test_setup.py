"""``make setup`` on a disk too full for torch: one clear message before pip starts, no ``.venv/``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_setup(directory: Path, *variables: str) -> subprocess.CompletedProcess:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO / name, directory / name)
    return subprocess.run(["make", "setup", *variables], cwd=directory, capture_output=True, text=True,
                          timeout=60)


def test_setup_refuses_a_disk_without_room_for_torch(tmp_path):
    free_gib = shutil.disk_usage(tmp_path).free / 2**30
    result = make_setup(tmp_path, f"SETUP_MIN_FREE_GIB={free_gib * 2 + 1:.0f}")
    assert result.returncode != 0
    assert "GiB free on this disk" in result.stderr and "Free some space" in result.stderr, result.stderr
    assert "pip" not in result.stdout  # refused before anything was installed
    assert not (tmp_path / ".venv").exists()


def test_setup_checks_the_disk_only_until_torch_is_installed(tmp_path):
    """A re-run after ``pyproject.toml`` changed must not need another 6 GiB."""
    (tmp_path / ".venv/lib/python3.11/site-packages/torch").mkdir(parents=True)
    # PYTHON_BOOT=false: the recipe stops at the venv step, which it reaches only past the check.
    result = make_setup(tmp_path, "SETUP_MIN_FREE_GIB=1e9", "PYTHON_BOOT=false")
    assert "GiB free on this disk" not in result.stderr, result.stderr
    assert "false -m venv .venv" in result.stdout, result.stdout
