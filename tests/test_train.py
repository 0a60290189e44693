"""The training engine end to end on synthetic data: run directories, resume, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from lsq import runs as runfmt
from lsq.config import ConfigError, RunConfig, make_config
from lsq.quant.kernels import cxx_compiler_available
from lsq.engine.recipe import lr_factor

from cli_helpers import lsq_cli

TIMING_KEYS = runfmt.TIMING_KEYS
SUMMARY_VOLATILE = {"wall_seconds", "started_at", "finished_at", "hostname", "git_sha"}


SMALL = ["--dataset", "synthetic", "--profile", "smoke", "--set", "data.train_subset=128",
         "--set", "data.test_subset=64", "--batch-size", "32"]


def run_dir(runs: Path, row: int, seed: int = 0) -> Path:
    return runs / "synthetic" / "smoke" / f"row{row}" / f"seed{seed}"


@pytest.fixture(scope="module")
def finished_runs(tmp_path_factory):
    """Float baseline and row 4 (everything quantized) on tiny synthetic data, 2 epochs each."""
    runs = tmp_path_factory.mktemp("runs")
    for row in (0, 4):
        lsq_cli("train", *SMALL, "--row", str(row), "--epochs", "2", runs_dir=runs)
    return runs


def test_run_directory_is_complete(finished_runs):
    for row in (0, 4):
        directory = run_dir(finished_runs, row)
        assert {p.name for p in directory.iterdir()} == {
            "config.yaml", "metrics.jsonl", "checkpoint.pt", "summary.json", "tensorboard"}
        config = RunConfig.from_yaml(directory / "config.yaml")
        assert config.row == row and config.optim.epochs == 2
        records = runfmt.read_metrics(directory / "metrics.jsonl")
        expected_epochs = [0, 1, 2] if row else [1, 2]
        assert [r["epoch"] for r in records] == expected_epochs
        summary = json.loads((directory / "summary.json").read_text())
        assert summary["data_kind"] == "synthetic"
        assert summary["train_images"] == 128 and summary["test_images"] == 64
        assert summary["final_top1"] == records[-1]["test_top1"]
        assert summary["torch_version"] == torch.__version__
        assert summary["compiled"] is False and summary["cuda_graphs"] is False  # a short CPU run
        assert summary["wall_seconds"] > 0


def test_first_epoch_records_the_process_start_up(finished_runs):
    for row in (0, 4):
        records = runfmt.read_metrics(run_dir(finished_runs, row) / "metrics.jsonl")
        trained = [r for r in records if r["epoch"] > 0]
        # Importing torch alone takes a second; a whole run here takes well under 5 minutes.
        assert 0.5 < trained[0]["startup_seconds"] < 300
        assert all("startup_seconds" not in r for r in records if r is not trained[0])


def test_quantized_metrics_have_step_sizes_and_sparsity(finished_runs):
    records = runfmt.read_metrics(run_dir(finished_runs, 4) / "metrics.jsonl")
    for record in records:
        assert record["step_sizes"], "every quantizer reports its step size"
        assert all(v["min"] > 0 for v in record["step_sizes"].values())
        assert 0.0 <= record["weight_sparsity"] <= 1.0
        assert "conv1" in record["layer_sparsity"] and "fc" in record["layer_sparsity"]  # quan_lr=yes
    float_records = runfmt.read_metrics(run_dir(finished_runs, 0) / "metrics.jsonl")
    assert float_records[-1]["step_sizes"] == {} and float_records[-1]["weight_sparsity"] is None


def test_quantized_row_starts_from_its_float_baseline(finished_runs):
    float_state = torch.load(run_dir(finished_runs, 0) / "checkpoint.pt", weights_only=False)["model"]
    # Epoch 0 of row 4 evaluates the converted float model: its BN statistics are the baseline's.
    quant_start = runfmt.read_metrics(run_dir(finished_runs, 4) / "metrics.jsonl")[0]
    assert quant_start["epoch"] == 0
    quant_state = torch.load(run_dir(finished_runs, 4) / "checkpoint.pt", weights_only=False)["model"]
    assert quant_state["layer1.0.conv1.weight"].shape == float_state["layer1.0.conv1.weight"].shape
    assert "layer1.0.conv1.weight_quantizer.step_size" in quant_state
    assert bool(quant_state["layer1.0.conv1.weight_quantizer.initialized"])


def test_finished_run_is_a_no_op(finished_runs):
    directory = run_dir(finished_runs, 0)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    result = lsq_cli("train", *SMALL, "--row", "0", "--epochs", "2", runs_dir=finished_runs)
    assert "already done" in result.stdout
    assert before == {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def test_sigkill_then_resume_is_bit_identical(tmp_path, finished_runs):
    """Kill row 4 mid-training with SIGKILL, rerun the same command: same metrics, same summary."""
    reference = run_dir(finished_runs, 4)
    runs = tmp_path / "runs"
    # The float baseline is reused; only the killed run is new.
    baseline = run_dir(runs, 0)
    baseline.parent.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(run_dir(finished_runs, 0)), str(baseline)], check=True)

    args = ["train", *SMALL, "--row", "4", "--epochs", "2"]
    process = lsq_cli(*args, runs_dir=runs, background=True)
    metrics = run_dir(runs, 4) / "metrics.jsonl"
    deadline = time.time() + 240
    # Wait until epoch 1 is under way (the epoch-0 evaluation is logged), then kill mid-epoch.
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and any(r["epoch"] == 0 for r in runfmt.read_metrics(metrics)):
            break
        time.sleep(0.05)
    time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not (run_dir(runs, 4) / "summary.json").exists(), "the kill must land before the end"
    assert not list(run_dir(runs, 4).glob("*.tmp")), "no half-written files"

    lsq_cli(*args, runs_dir=runs)
    resumed = runfmt.read_metrics(metrics)
    assert _comparable(resumed) == _comparable(runfmt.read_metrics(reference / "metrics.jsonl"))
    summary = json.loads((run_dir(runs, 4) / "summary.json").read_text())
    expected = json.loads((reference / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k not in SUMMARY_VOLATILE} == {
        k: v for k, v in expected.items() if k not in SUMMARY_VOLATILE}


def test_missing_baseline_names_the_command(tmp_path):
    result = lsq_cli("train", *SMALL, "--row", "2", runs_dir=tmp_path, check=False)
    assert result.returncode != 0
    assert "python -m lsq train --dataset synthetic --row 0 --profile smoke --seed 0" in result.stderr
    assert not any(tmp_path.rglob("*.yaml")), "nothing written for the failed row"


@pytest.mark.parametrize("args, message", [
    (["--dataset", "mnist", "--row", "0"], "invalid choice: 'mnist'"),
    (["--dataset", "synthetic", "--row", "7"], "unknown row 7"),
    (["--dataset", "synthetic", "--row", "0", "--profile", "huge"], "invalid choice: 'huge'"),
    (["--dataset", "synthetic", "--row", "0", "--set", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["--dataset", "synthetic", "--row", "0", "--set", "optim.epochs=many"], "optim.epochs must be an integer"),
    (["--dataset", "synthetic", "--row", "0", "--set", "optim.lr=["], "is not a valid value"),
    (["--dataset", "cifar10", "--row", "0", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
])
def test_bad_input_is_one_clear_error(tmp_path, args, message):
    result = lsq_cli("train", *args, runs_dir=tmp_path, check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.rglob("*")), "nothing half-written"


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    directory = run_dir(tmp_path, 0)
    directory.mkdir(parents=True)
    config = make_config("synthetic", 0, "smoke", 0).with_overrides(
        "data.train_subset=128", "data.test_subset=64", "optim.batch_size=32")
    (directory / "config.yaml").write_text(config.to_yaml())
    (directory / "checkpoint.pt").write_bytes(b"not a checkpoint")
    result = lsq_cli("train", *SMALL, "--row", "0", runs_dir=tmp_path, check=False)
    assert result.returncode != 0
    assert "checkpoint" in result.stderr and "corrupt" in result.stderr and "delete it" in result.stderr


def test_nan_loss_names_epoch_and_step(tmp_path):
    result = lsq_cli("train", *SMALL, "--row", "0", "--lr", "1e30", "--epochs", "1",
                     runs_dir=tmp_path, check=False)
    assert result.returncode != 0
    assert "non-finite loss in epoch 1 at step" in result.stderr
    assert not (run_dir(tmp_path, 0) / "summary.json").exists()


def test_changed_config_in_existing_run_dir_is_refused(tmp_path):
    lsq_cli("train", *SMALL, "--row", "0", "--epochs", "1", runs_dir=tmp_path)
    (run_dir(tmp_path, 0) / "summary.json").unlink()
    result = lsq_cli("train", *SMALL, "--row", "0", "--epochs", "3", runs_dir=tmp_path, check=False)
    assert result.returncode != 0 and "another configuration" in result.stderr


def test_print_config_reflects_overrides(tmp_path):
    result = lsq_cli("train", "--dataset", "fashion-mnist", "--row", "3", "--profile", "quick",
                     "--ablation", "init-x4", "--lr", "0.02", "--print-config", runs_dir=tmp_path)
    config = RunConfig.from_dict(yaml.safe_load(result.stdout))
    assert config.optim.lr == 0.02 and config.quant.init_scale == 4.0
    assert config.quant.act_levels == "[0,1,2,3]" and config.data.train_subset == 10000


def test_lr_schedules():
    assert lr_factor("cosine", 0, 100) == 1.0
    assert lr_factor("cosine", 100, 100) == pytest.approx(0.0)
    assert lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert [lr_factor("step", s, 100) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor("constant", 77, 100) == 1.0


def test_full_profile_trains_all_of_fashion_mnist_at_its_own_budget():
    float_row, quant_row = make_config("fashion-mnist", 0, "full"), make_config("fashion-mnist", 3, "full")
    assert (float_row.data.train_subset, float_row.data.test_subset) == (None, None)
    assert (float_row.optim.epochs, quant_row.optim.epochs) == (20, 8)
    assert (float_row.optim.lr, quant_row.optim.lr) == (0.1, 0.01)


def test_config_rejects_unknown_keys_and_profiles():
    with pytest.raises(ConfigError, match="unknown config key 'quant.bits'"):
        make_config("synthetic", 1).with_overrides("quant.bits=2")
    with pytest.raises(ConfigError, match="unknown profile"):
        make_config("synthetic", 1, "weekend")
    with pytest.raises(ConfigError, match="profile 'full' is not defined for cifar10; choose one of"):
        make_config("cifar10", 1, "full")
    with pytest.raises(ConfigError, match="ablation init-x4 applies to quantized rows"):
        make_config("synthetic", 0, ablation="init-x4")
    with pytest.raises(ValueError, match="unknown ablation"):
        make_config("synthetic", 1, ablation="init-x100")


def test_report_renders_from_real_runs(finished_runs, tmp_path):
    """The report reads what `lsq train` wrote: rows that ran show numbers, the others 'not run'."""
    from lsq.report import build_report

    index = build_report(finished_runs, tmp_path / "report", execute_notebooks=False)
    page = (tmp_path / "report" / "synthetic-smoke.md").read_text()
    assert index.exists() and (index.parent / "synthetic-smoke.html").exists()
    assert "not run" in page  # rows 1-3 were not trained here
    summary = json.loads((run_dir(finished_runs, 4) / "summary.json").read_text())
    assert f"{summary['final_top1']:.2f}" in page
    assert "SYNTHETIC" in (index.parent / "synthetic-smoke.html").read_text()


def test_resume_may_change_where_a_run_executes_but_not_what_it_computes(tmp_path):
    from lsq.engine.run import _check_same_config
    from lsq.errors import TrainingError

    config = make_config("synthetic", 1).with_overrides("data.workers=2")
    directory = tmp_path / "run"
    directory.mkdir()
    (directory / "config.yaml").write_text(config.to_yaml())
    moved = config.with_overrides("device=cpu", "data.data_dir=/elsewhere", "data.workers=8",
                                  "data.download=true")
    _check_same_config(directory, moved)  # same results: allowed
    with pytest.raises(TrainingError, match="another configuration"):
        _check_same_config(directory, config.with_overrides("optim.lr=0.5"))


def test_evaluation_compiles_with_the_run_except_a_float_model_on_cuda():
    from lsq.models import build_model
    from lsq.engine.fastpath import eval_model

    float_model = build_model("resnet20", num_classes=10, in_channels=3)
    assert eval_model(float_model, False, torch.device("cpu")) is float_model
    assert eval_model(float_model, True, torch.device("cuda")) is float_model  # nothing compiles yet
    assert isinstance(eval_model(float_model, True, torch.device("cpu")), torch._dynamo.eval_frame.OptimizedModule)
    quantized = make_config("synthetic", 4, "smoke")
    from lsq.engine.recipe import build_run_model
    assert isinstance(eval_model(build_run_model(quantized), True, torch.device("cuda")),
                      torch._dynamo.eval_frame.OptimizedModule)


@pytest.mark.skipif(not cxx_compiler_available(), reason="torch.compile needs a C++ compiler on the CPU")
def _compiled_and_eager_evaluation(row: int):
    """(compiled, eager, batch sizes the eager fallback saw) for one smoke row on 40 test images
    in batches of 16, 16 and 8."""
    from dataclasses import replace

    from lsq.engine.fastpath import eval_model
    from lsq.engine.recipe import calibrate, evaluate
    from lsq.engine.run import build_run

    config = replace(make_config("synthetic", row, "smoke").with_overrides(
        "data.train_subset=64", "data.test_subset=40", "optim.eval_batch_size=16"), device="cpu")
    cpu = torch.device("cpu")
    run = build_run(config, cpu, 0, 1, None, progress=False)
    if row:
        calibrate(run.model, run.data.train, run.ctx)
    eager = evaluate(run.model, run.data.test, run.ctx)

    class Spy(torch.nn.Module):  # the eager model, recording the batches it is given
        def __init__(self, inner):
            super().__init__()
            self.inner, self.sizes = inner, []

        def forward(self, images):
            self.sizes.append(images.shape[0])
            return self.inner(images)

    spy = Spy(run.model)
    compiled = evaluate(eval_model(run.model, True, cpu), run.data.test, run.ctx, spy)
    return compiled, eager, spy.sizes


# Inductor's C++ kernels sum in another order than eager ATen, and the order depends on the CPU's
# vector width (AVX2 or AVX-512/AMX). A float32 dot product of K terms in a different order
# differs by at most about K * eps relative; ResNet-20's widest reduction is 3x3x64 = 576 terms,
# over 19 conv layers and the classifier, so 20 * 576 * eps bounds the float model's loss.
FLOAT32_EVAL_RTOL = 20 * 576 * float(torch.finfo(torch.float32).eps)


def test_compiled_evaluation_of_the_float_model_matches_eager_within_float32_error():
    compiled, eager, sizes = _compiled_and_eager_evaluation(0)
    assert sizes == [8], "batches of 16, 16 and 8: only the 8 runs eagerly"
    assert compiled["test_loss"] == pytest.approx(eager["test_loss"], rel=FLOAT32_EVAL_RTOL)
    assert abs(compiled["test_top1"] - eager["test_top1"]) <= 100 / 40


def test_compiled_evaluation_of_a_quantized_model_predicts_as_eager_and_runs_an_odd_last_batch_eagerly():
    # A last-bit difference can move a value across a rounding boundary of a quantizer, which
    # changes that activation by a whole step: no float32 bound holds for the loss here, so the
    # quantized model is compared by its predictions.
    compiled, eager, sizes = _compiled_and_eager_evaluation(4)
    assert sizes == [8], "batches of 16, 16 and 8: only the 8 runs eagerly"
    assert abs(compiled["test_top1"] - eager["test_top1"]) <= 100 / 40  # at most one image flips
