"""``lsq train --warm-compile-cache``: a quantized row compiles ahead of its float baseline, and
the run itself then compiles from the cache; ``make -j`` schedules it beside row 0."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from lsq.config import make_config
from lsq.quantizer import cxx_compiler_available
from lsq.train import fit, warm_compile_cache

REPO = Path(__file__).resolve().parent.parent
SMALL = ("data.train_subset=64", "data.test_subset=32", "optim.batch_size=32", "optim.epochs=1")


def small_config(row: int, **changes):
    return replace(make_config("synthetic", row, "smoke").with_overrides(*SMALL), device="cpu",
                   **changes)


@pytest.mark.skipif(not cxx_compiler_available(), reason="torch.compile needs a C++ compiler on the CPU")
@pytest.mark.parametrize("layout", [dict(), dict(amp=True, channels_last=True)], ids=["fp32", "bf16-nhwc"])
def test_run_after_warm_up_compiles_from_the_cache(tmp_path, monkeypatch, layout):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    runs, log = tmp_path / "runs", []
    row4 = small_config(4, compile_model=True, **layout)

    assert warm_compile_cache(row4, runs, log=log.append) is True
    assert not runs.exists(), "the warm-up writes no run directory and needs no baseline"
    assert "compile cache warmed" in log[-1]

    fit(small_config(0, **layout), runs, progress=False, log=log.append)
    torch._dynamo.reset()  # forget the warm-up's in-process compiles: only the disk cache is left
    counters.clear()
    summary = fit(row4, runs, progress=False, log=log.append)
    assert summary["compiled"] is True
    assert counters["inductor"]["fxgraph_cache_miss"] == 0, dict(counters["inductor"])
    assert counters["inductor"]["fxgraph_cache_hit"] >= 2  # the training step's forward and backward


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


@pytest.mark.parametrize("variables, rows_warmed", [
    (["DEVICE=cuda"], [1, 2, 3, 4]),
    (["DEVICE=cuda:1"], [1, 2, 3, 4]),
    (["DEVICE=cuda", "WARM="], []),
    (["DEVICE=cpu"], []),
    (["DEVICE=cpu", "WARM=1"], [1, 2, 3, 4]),
])
def test_make_warms_quantized_rows_on_cuda(tmp_path, variables, rows_warmed):
    commands = make_dry_run(*variables, runs=tmp_path).splitlines()
    warmed = [int(c.split("--row ")[1].split()[0]) for c in commands if "--warm-compile-cache" in c]
    assert warmed == rows_warmed
    trained = [c for c in commands if "--row " in c and "--warm-compile-cache" not in c]
    assert len(trained) == 5


def test_make_does_not_warm_a_finished_row(tmp_path):
    done = tmp_path / "synthetic" / "paper" / "row2" / "seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text("{}")
    commands = make_dry_run("DEVICE=cuda", runs=tmp_path)
    assert "--row 2 --warm-compile-cache" not in commands
    assert "--row 3 --warm-compile-cache" in commands
