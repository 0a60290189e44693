"""``python -m lsq compare-runs``: do two trees of runs hold the same results (``make reproduce``)?"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from lsq.__main__ import main
from lsq.compare import compare_trees, cpu_kind
from lsq.config import make_config

from cli_helpers import REPO, lsq_cli

RUN = Path("row1") / "seed0"
XEON = "cpu (Intel(R) Xeon(R) Processor, 1 threads)"
EPYC = "cpu (AMD EPYC 7B13, 1 threads)"


def fabricate(root: Path, *, seed: int = 0, top1=(60.0, 70.0), epochs: int = 2,
              device: str = "cpu (x, 1 threads)", seconds: float = 1.0, finished: bool = True,
              step_size: float = 0.5, extra: dict | None = None) -> Path:
    """A run directory as ``lsq train`` writes it: config, epoch 0 and trained epochs, summary."""
    run = root / "row1" / f"seed{seed}"
    run.mkdir(parents=True)
    config = make_config("fashion-mnist", 1, "quick", seed).with_overrides(f"optim.epochs={epochs}")
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


def committed_table(root: Path, finals=(70.0, 66.0, 74.0)) -> Path:
    """A reference row of three seeds made on a Xeon: final top-1 standard deviation 4."""
    for seed, final in enumerate(finals):
        fabricate(root, seed=seed, top1=(60.0, final), device=XEON)
    return root


def compare(reference: Path, candidate: Path, *extra: str, capsys) -> tuple[int, str]:
    code = main(["compare-runs", str(reference), str(candidate), *extra])
    return code, capsys.readouterr().out


def test_cpu_kind_is_the_model_name_of_the_device():
    assert cpu_kind(XEON) == "Intel(R) Xeon(R) Processor"
    assert cpu_kind("cpu (AMD EPYC 7B13, 2 threads)") == "AMD EPYC 7B13"
    assert cpu_kind("cuda (NVIDIA H200)") == "cuda (NVIDIA H200)"  # no thread count to strip
    assert cpu_kind(None) == "unknown"


def test_runs_that_differ_only_in_timing_and_provenance_are_identical(tmp_path, capsys):
    reference = fabricate(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", seconds=7.0, device="cuda (H200)")
    code, out = compare(reference, candidate, capsys=capsys)
    assert code == 0
    assert "row1/seed0: identical (bit for bit, every epoch record and summary result)" in out
    assert "1 of 1 runs reproduce: 1 identical, 0 within seed noise, 0 not" in out


def test_another_cpu_kind_within_the_rows_seed_spread_is_within_seed_noise(tmp_path, capsys):
    reference = committed_table(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", top1=(60.25, 71.0), device=EPYC)
    code, out = compare(reference, candidate, capsys=capsys)
    assert code == 0
    std = statistics.stdev([70.0, 66.0, 74.0])  # 4: |Δ| 1 lies within it
    assert (f"row1/seed0: within seed noise (|Δ final top-1| 1.00 points < seed std {std:.2f} of row1 "
            "(3 seeds)); first difference: epoch 1: test_top1 60.0 -> 60.25") in out
    assert "reference runs made on: Intel(R) Xeon(R) Processor; retrained on: AMD EPYC 7B13" in out
    assert "1 of 1 runs reproduce: 0 identical, 1 within seed noise, 0 not" in out
    [result] = compare_trees(reference, candidate)
    assert result.seed_std == pytest.approx(std) and result.seeds == 3


def test_a_difference_beyond_the_seed_spread_differs(tmp_path, capsys):
    reference = committed_table(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", top1=(60.0, 75.0), device=EPYC)
    code, out = compare(reference, candidate, capsys=capsys)
    assert code == 1
    assert "row1/seed0: differs (|Δ final top-1| 5.00 points >= seed std 4.00 of row1 (3 seeds))" in out
    assert "first difference: epoch 2: test_top1 70.0 -> 75.0" in out
    assert "0 of 1 runs reproduce: 0 identical, 0 within seed noise, 1 not" in out


def test_a_reference_with_one_seed_has_no_seed_noise_to_be_within(tmp_path, capsys):
    reference = fabricate(tmp_path / "a", device=XEON)
    candidate = fabricate(tmp_path / "b", top1=(60.0, 70.25), device=EPYC)
    code, out = compare(reference, candidate, capsys=capsys)
    assert code == 1
    assert ("row1/seed0: differs (|Δ final top-1| 0.25 points, but the reference holds 1 finished "
            "seed(s) of row1: no seed standard deviation to judge it by (needs 2))") in out
    [result] = compare_trees(reference, candidate)
    assert (result.seed_std, result.seeds, result.max_top1_difference) == (None, 1, 0.25)


@pytest.mark.parametrize("deltas, code", [
    ((0.0, 0.5), 0),  # one identical, one within seed noise
    ((0.0, 9.0), 1),  # one identical, one beyond the spread
    ((0.5, -0.5), 0),  # both within seed noise
])
def test_the_exit_status_is_0_only_when_every_run_is_identical_or_within_seed_noise(
        tmp_path, capsys, deltas, code):
    finals = (70.0, 66.0, 74.0)
    reference = committed_table(tmp_path / "a", finals=finals)
    for seed, delta in enumerate(deltas):
        fabricate(tmp_path / "b", seed=seed, top1=(60.0, finals[seed] + delta), device=EPYC)
    assert compare(reference, tmp_path / "b", capsys=capsys)[0] == code


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
    reference = committed_table(tmp_path / "a")
    [result] = compare_trees(reference, fabricate(tmp_path / "b", **candidate_args))
    # Not within seed noise however close their final top-1: they are not the same run.
    assert result.verdict == verdict and result.reason


def diverge(root: Path, *, seed: int = 0, step: int | None = 244, device: str = XEON) -> Path:
    """``root``'s run, stopped in epoch 2 with a non-finite loss: diverged.json, no summary."""
    run = root / "row1" / f"seed{seed}"
    (run / "summary.json").unlink(missing_ok=True)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    (run / "diverged.json").write_text(json.dumps({
        "epoch": 2, "step": step, "layer": "layer3.2.conv1.input_quantizer",
        "found_in": "training loss", "message": f"non-finite loss at step {step}",
        "last_finite_epoch": 1, "device": device, "git_sha": "x", "diverged_at": device}))
    return root


def test_two_runs_that_diverged_alike_are_identical_else_they_differ(tmp_path, capsys):
    reference = diverge(committed_table(tmp_path / "a"))
    alike = diverge(fabricate(tmp_path / "b", device=EPYC, seconds=2.0), device=EPYC)
    [result] = compare_trees(reference, alike)
    assert (result.verdict, result.reason) == (
        "identical", "both diverged in epoch 2, step 244, first at "
                     "layer3.2.conv1.input_quantizer; every epoch record equal, bit for bit")
    assert compare(reference, alike, capsys=capsys)[0] == 0
    later = diverge(fabricate(tmp_path / "c"), step=245)
    [result] = compare_trees(reference, later)
    assert result.verdict == "differs"
    assert result.reason == ("both diverged, the reference in epoch 2, step 244, the retrained "
                             "run in epoch 2, step 245")
    assert result.first_difference == "where it diverged: step 244 -> 245"
    [result] = compare_trees(reference, fabricate(tmp_path / "d"))
    assert (result.verdict, result.reason) == (
        "differs", "the reference diverged (epoch 2, step 244); the retrained run finished")
    [result] = compare_trees(committed_table(tmp_path / "e"), later)
    assert result.reason == "the retrained run diverged (epoch 2, step 245); the reference finished"
    assert compare(reference, later, capsys=capsys)[0] == 1


@pytest.mark.parametrize("arguments, message", [
    (("{a}", "{missing}"), "is not a directory of runs"),
    (("{a}", "{a}/row1"), "hold no run at the same path"),
    (("{a}", "{a}", "--tolerance", "0.3"), "--tolerance is gone"),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, arguments, message):
    fabricate(tmp_path / "a")
    paths = {"a": tmp_path / "a", "missing": tmp_path / "missing"}
    code = main(["compare-runs", *(argument.format(**paths) for argument in arguments)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1


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
    assert result.stdout.count(": identical (bit for bit") == 2


def dry_run(target: str, tmp_path: Path, *variables: str) -> subprocess.CompletedProcess:
    """``make -n TARGET``: it still runs the recursive make (printing its trains) and the
    comparison, which fails on the empty temp dir before it writes anything."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    return subprocess.run(["make", "-n", target, *variables], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("target, profile, compile_flag", [
    ("reproduce", "quick", "--no-compile"),  # the quick table was made eager
    ("reproduce-full", "full", "--compile"),  # the full table compiled (a long CPU run)
])
def test_make_reproduce_retrains_seed_0_on_one_cpu_thread(tmp_path, target, profile, compile_flag):
    runs = tmp_path / "runs"
    for row in range(5):  # the reference runs the recipe checks for before it trains
        (runs / "fashion-mnist" / profile / f"row{row}" / "seed0").mkdir(parents=True)
        (runs / "fashion-mnist" / profile / f"row{row}" / "seed0" / "summary.json").write_text("{}")
    result = dry_run(target, tmp_path, f"RUNS={runs}")
    trains = [line for line in result.stdout.splitlines() if " -m lsq train " in line]
    assert [int(line.split("--row ")[1].split()[0]) for line in trains] == [0, 1, 2, 3, 4], result.stderr
    for line in trains:
        assert all(flag in line.split() for flag in ("--device", "cpu", compile_flag, "--dataset",
                                                     "fashion-mnist", "--profile", profile, "--seed", "0"))
        assert str(tmp_path / "lsq-reproduce.") in line and str(runs) + " " not in line
        assert "--wait-for-baseline" not in line
    assert "OMP_NUM_THREADS=1" in result.stdout
    assert f"ref={runs}/fashion-mnist/{profile};" in result.stdout  # what it compares with


def test_make_reproduce_full_stops_before_training_when_the_reference_is_missing(tmp_path):
    result = dry_run("reproduce-full", tmp_path, f"RUNS={tmp_path / 'runs'}")
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and " -m lsq train " not in result.stdout
    assert f"{tmp_path}/runs/fashion-mnist/full/row0/seed0/summary.json" in error
    assert "make -j2 fashion-mnist PROFILE=full" in error


def test_the_comparison_is_written_for_the_report(tmp_path, capsys):
    reference = committed_table(tmp_path / "a")
    candidate = fabricate(tmp_path / "b", top1=(60.0, 70.5), device=EPYC)
    out = tmp_path / "a" / "reproduction.json"
    code, _ = compare(reference, candidate, "--json", str(out), capsys=capsys)
    record = json.loads(out.read_text())
    assert code == 0
    assert (record["compared"], record["identical"], record["within_seed_noise"], record["reproduced"]) == (1, 0, 1, 1)
    assert record["candidate_devices"] == [EPYC] and record["reference_devices"] == [XEON]
    assert record["candidate_cpu_kinds"] == ["AMD EPYC 7B13"]
    assert record["reference_cpu_kinds"] == ["Intel(R) Xeon(R) Processor"]
    assert record["candidate_git_shas"] == ["1.0"]
    [run] = record["runs"]
    assert run["run"] == "row1/seed0" and run["verdict"] == "within seed noise"
    assert (run["reference_cpu_kind"], run["candidate_cpu_kind"]) == ("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13")
    assert run["reference_finished_at"] == "1.0"  # the reference summary's: the report's staleness check
    assert (run["final_top1_difference"], run["seeds"]) == (0.5, 3) and run["seed_std"] == pytest.approx(4)
    assert run["max_top1_difference"] == 0.5 and "test_top1 70.0 -> 70.5" in run["first_difference"]
    assert run["reason"].startswith("|Δ final top-1| 0.50 points < seed std 4.00 of row1")
