"""``python -m lsq compare-runs``: do two trees of runs hold the same results (``make reproduce``)?"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from lsq.__main__ import main
from lsq.compare import compare_trees
from lsq.config import make_config

from test_train import REPO, lsq_cli

RUN = Path("row1") / "seed0"


def fabricate(root: Path, *, top1=(60.0, 70.0), epochs: int = 2, device: str = "cpu (x, 1 threads)",
              seconds: float = 1.0, finished: bool = True, step_size: float = 0.5,
              extra: dict | None = None) -> Path:
    """A run directory as ``lsq train`` writes it: config, epoch 0 and trained epochs, summary."""
    run = root / RUN
    run.mkdir(parents=True)
    config = make_config("fashion-mnist", 1, "quick").with_overrides(f"optim.epochs={epochs}")
    (run / "config.yaml").write_text(replace(config, device=device.split()[0]).to_yaml())
    records = [{"epoch": 0, "test_top1": 50.0, "test_loss": 1.5, "epoch_seconds": 0.0}]
    for epoch, accuracy in enumerate(top1, start=1):
        records.append({"epoch": epoch, "test_top1": accuracy, "test_loss": 1.0 / epoch,
                        "epoch_seconds": seconds, "images_per_second": 100 / seconds,
                        "step_sizes": {"layer1.0.conv1": {"mean": step_size, "min": step_size}},
                        **(extra or {})})
    records[1]["startup_seconds"] = 3 * seconds
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (run / "summary.json").write_text(json.dumps({
            "final_top1": top1[-1], "final_test_loss": 1.0 / len(top1), "epochs": epochs,
            "wall_seconds": 10 * seconds, "device": device, "git_sha": f"{seconds}",
            "hostname": f"host{seconds}", "started_at": "then", "finished_at": f"{seconds}"}))
    return root


def compare(reference: Path, candidate: Path, *extra: str, capsys) -> tuple[int, str]:
    code = main(["compare-runs", str(reference), str(candidate), *extra])
    return code, capsys.readouterr().out


def test_runs_that_differ_only_in_timing_and_provenance_match(tmp_path, capsys):
    reference = fabricate(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", seconds=7.0, device="cuda (H200)")
    code, out = compare(reference, candidate, capsys=capsys)
    assert code == 0
    assert "| row1/seed0 | 3 | identical | 0 | 0 | — |" in out and "1 of 1 runs match" in out


def test_a_changed_accuracy_is_found_with_its_epoch_and_size(tmp_path, capsys):
    reference = fabricate(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", top1=(60.0, 70.25))
    code, out = compare(reference, candidate, capsys=capsys)
    assert code == 1
    assert "differs" in out and "epoch 2: test_top1 70.0 -> 70.25" in out
    assert "| 0.25 |" in out and "0 of 1 runs match" in out
    # A tolerance that covers the difference counts it as a match.
    code, out = compare(reference, candidate, "--tolerance", "0.3", capsys=capsys)
    assert code == 0 and "1 of 1 runs match within 0.3" in out


def test_nested_values_are_compared(tmp_path):
    [result] = compare_trees(fabricate(tmp_path / "a"), fabricate(tmp_path / "b", step_size=0.5001))
    assert result.verdict == "differs"
    assert result.first_difference.startswith("epoch 1: step_sizes.layer1.0.conv1.mean 0.5 -> 0.5001")
    assert result.max_top1_difference == 0


def test_a_field_on_one_side_only_is_listed_not_failed(tmp_path, capsys):
    reference = fabricate(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", extra={"step_sizes_at_floor": 0})
    code, out = compare(reference, candidate, capsys=capsys)
    assert code == 0
    assert "on one side only (fields the run format gained later): step_sizes_at_floor" in out


@pytest.mark.parametrize("candidate_args, verdict", [
    (dict(epochs=3, top1=(60.0, 70.0, 71.0)), "config differs"),
    (dict(finished=False), "unfinished"),
    (dict(top1=(60.0,)), "differs"),  # a record missing: the run stopped early
])
def test_runs_that_cannot_match(tmp_path, candidate_args, verdict):
    [result] = compare_trees(fabricate(tmp_path / "a"), fabricate(tmp_path / "b", **candidate_args))
    assert result.verdict == verdict


@pytest.mark.parametrize("arguments, message", [
    (("{a}", "{missing}"), "is not a directory of runs"),
    (("{a}", "{a}/row1"), "hold no run at the same path"),
    (("{a}", "{a}", "--tolerance", "-1"), "--tolerance must be >= 0"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, arguments, message):
    fabricate(tmp_path / "a")
    paths = {"a": tmp_path / "a", "missing": tmp_path / "missing"}
    code = main(["compare-runs", *(argument.format(**paths) for argument in arguments)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err


def test_the_same_run_trained_twice_matches_bit_for_bit(tmp_path):
    """What ``make reproduce`` relies on: same config, seed and thread count, same results."""
    tiny = ("--dataset", "synthetic", "--profile", "smoke", "--set", "data.train_subset=64",
            "--set", "data.test_subset=32", "--batch-size", "16", "--epochs", "2")
    for tree in ("a", "b"):
        for row in (0, 1):
            lsq_cli("train", *tiny, "--row", str(row), runs_dir=tmp_path / tree,
                    env={"OMP_NUM_THREADS": "1"})
    result = subprocess.run(
        [os.sys.executable, "-m", "lsq", "compare-runs", str(tmp_path / "a"), str(tmp_path / "b")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("identical") == 2


def test_make_reproduce_retrains_seed_0_on_one_cpu_thread(tmp_path):
    """The Makefile recipe, dry-run: make -n still runs the recursive make, printing its trains."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(["make", "-n", "reproduce"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=60)
    trains = [line for line in result.stdout.splitlines() if " -m lsq train " in line]
    assert [int(line.split("--row ")[1].split()[0]) for line in trains] == [0, 1, 2, 3, 4]
    for line in trains:
        assert all(flag in line for flag in ("--device cpu", "--no-compile", "--dataset fashion-mnist",
                                             "--profile quick", "--seed 0", str(tmp_path)))
        assert "--wait-for-baseline" not in line
    assert "OMP_NUM_THREADS=1" in result.stdout


def test_the_comparison_is_written_for_the_report(tmp_path, capsys):
    reference = fabricate(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", top1=(60.0, 70.5), device="cpu (y, 1 threads)")
    out = tmp_path / "a" / "reproduction.json"
    code, _ = compare(reference, candidate, "--json", str(out), capsys=capsys)
    record = json.loads(out.read_text())
    assert code == 1
    assert (record["compared"], record["matched"], record["tolerance"]) == (1, 0, 0.0)
    assert record["candidate_devices"] == ["cpu (y, 1 threads)"] and record["candidate_git_shas"] == ["1.0"]
    [run] = record["runs"]
    assert run["run"] == "row1/seed0" and run["verdict"] == "differs"
    assert run["reference_finished_at"] == "1.0"  # the reference summary's: the report's staleness check
    assert run["max_top1_difference"] == 0.5 and "test_top1 70.0 -> 70.5" in run["first_difference"]
