"""Fault campaign, inputs: bad flags and config values, damaged dataset files, two makes on one
runs directory, malformed run files and a mistyped runs directory in the report.

Bad input ends with exit 2 and exactly one ``error:`` line naming the problem, no traceback, and
nothing written. Most cases fail before training starts, so they run in this process through
``lsq.__main__.main`` (the CLI's own code path, torch imported once); a few go through a real
``python -m lsq`` process (``lsq_cli``) to check the process boundary too.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from cli_helpers import REPO, error_lines, lsq_cli
from data_fixtures import write_fashion_mnist
from report_fixtures import write_run

from lsq.__main__ import main as lsq_main
from lsq.config import RunConfig, make_config
from lsq.errors import ConfigError, DataError
from lsq.report import run_tables, tables
from lsq.report.collect import RunWarning, load_runs

SYNTHETIC = ["train", "--dataset", "synthetic", "--row", "0"]


def assert_one_error(status: int, stderr: str, message: str) -> None:
    assert status == 2, stderr
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in lines[0], lines[0]


def run_main(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    monkeypatch.delenv("LSQ_DEBUG", raising=False)  # it would raise instead of printing one line
    status = lsq_main(argv)
    return status, capsys.readouterr().err


# --- config values: each rejected where the config is built, before anything is written -------

BAD_TRAIN_ARGS = [
    (["--epochs", "-1"], "optim.epochs (--epochs) must be an integer >= 0, got -1"),
    (["--batch-size", "0"], "optim.batch_size (--batch-size) must be an integer >= 1, got 0"),
    (["--batch-size", "-5"], "optim.batch_size (--batch-size) must be an integer >= 1, got -5"),
    (["--seed", "-1"], "seed (--seed) must be an integer >= 0, got -1"),
    (["--set", "seed=-2"], "seed (--seed) must be an integer >= 0, got -2"),
    (["--set", "data.train_subset=0"], "data.train_subset must be an integer >= 1 (images), or null"),
    (["--set", "data.test_subset=-3"], "data.test_subset must be an integer >= 1"),
    (["--set", "optim.eval_batch_size=0"], "optim.eval_batch_size must be an integer >= 1"),
    (["--lr", "0"], "optim.lr (--lr) must be a finite number > 0, got 0.0"),
    (["--lr", "-0.1"], "optim.lr (--lr) must be a finite number > 0"),
    (["--lr", "nan"], "optim.lr (--lr) must be a finite number > 0, got nan"),
    (["--lr", "inf"], "optim.lr (--lr) must be a finite number > 0, got inf"),
    (["--set", "optim.momentum=1"], "optim.momentum must be a finite number in [0, 1), got 1.0"),
    (["--set", "optim.momentum=-0.5"], "optim.momentum must be a finite number in [0, 1)"),
    (["--set", "optim.weight_decay=-1e-4"], "optim.weight_decay must be a finite number >= 0"),
    (["--set", "optim.step_size_weight_decay=-1"], "optim.step_size_weight_decay must be a finite number >= 0"),
    (["--set", "optim.scheduler=linear"], "optim.scheduler must be one of cosine, step, constant, got 'linear'"),
    (["--set", "optim.step_size_lr_factor=0"], "optim.step_size_lr_factor must be a finite number > 0"),
    (["--set", "quant.init_method=minmax"], "quant.init_method must be one of lsq, maxabs, got 'minmax'"),
    (["--set", "quant.init_scale=0"], "quant.init_scale must be a finite number > 0"),
    (["--set", "quant.init_scale=-2"], "quant.init_scale must be a finite number > 0"),
    (["--set", "quant.weight_levels=[1,0]"], "quant.weight_levels: "),
    (["--workers", "-1"], "data.workers (--workers) must be an integer >= 0, got -1"),
    (["--set", "model=vgg16"], "model must be one of resnet18, resnet20, got 'vgg16'"),
    (["--set", "dataset=mnist"], "unknown dataset 'mnist'"),
    (["--set", "profile=weekend"], "profile must be one of paper, full, quick, smoke"),
    (["--set", "row=9"], "unknown row 9"),
    (["--set", "ablation=init-x100"], "unknown ablation 'init-x100'"),
    (["--set", "ablation=init-x4"], "ablation init-x4 applies to quantized rows (1-4), not the float row 0"),
    (["--device", "gpu"], "device (--device) must be auto, cpu, cuda or cuda:N, got 'gpu'"),
]


@pytest.mark.parametrize("args, message", BAD_TRAIN_ARGS, ids=[" ".join(a) for a, _ in BAD_TRAIN_ARGS])
def test_bad_config_value_is_one_error_line(args, message, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    status, stderr = run_main([*SYNTHETIC, *args, "--runs-dir", str(runs)], capsys, monkeypatch)
    assert_one_error(status, stderr, message)
    assert not runs.exists(), "nothing written"


@pytest.mark.parametrize("args, message", [
    (["--epochs", "-1"], "optim.epochs (--epochs) must be an integer >= 0"),
    (["--seed", "-1"], "seed (--seed) must be an integer >= 0"),
])
def test_bad_config_value_in_a_real_process(args, message, tmp_path):
    runs = tmp_path / "runs"
    result = lsq_cli(*SYNTHETIC, *args, runs_dir=runs, check=False)
    assert_one_error(result.returncode, result.stderr, message)
    assert not runs.exists()


def test_epochs_zero_stays_valid_evaluate_only():
    # ImageNet's pretrained row 0 trains 0 epochs; a quantized row at 0 epochs is its calibration.
    assert make_config("imagenet", 0, "paper").optim.epochs == 0
    assert make_config("synthetic", 3).with_overrides("optim.epochs=0").optim.epochs == 0


def test_every_constructor_validates():
    config = make_config("synthetic", 1)
    with pytest.raises(ConfigError, match="optim.lr"):
        config.with_overrides("optim.lr=-1")
    with pytest.raises(ConfigError, match="optim.batch_size"):
        RunConfig.from_dict({"optim": {"batch_size": 0}})
    from dataclasses import replace
    with pytest.raises(ConfigError, match="seed"):
        replace(config, seed=-1)
    with pytest.raises(ConfigError, match="data.train_subset"):
        replace(config.data, train_subset=0)


def test_bad_config_yaml_names_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(make_config("synthetic", 1).to_yaml().replace("lr: 0.01", "lr: -1.0"))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: optim.lr (--lr) must be a finite number > 0, got -1.0")):
        RunConfig.from_yaml(path)


def test_every_committed_config_still_loads_unchanged():
    import yaml

    paths = sorted((REPO / "runs").glob("**/config.yaml"))
    assert paths
    for path in paths:
        raw = yaml.safe_load(path.read_text())
        loaded = RunConfig.from_yaml(path).to_dict()
        for key, value in raw.items():  # validation changes no value that was written
            assert loaded[key] == ({**loaded[key], **value} if isinstance(value, dict) else value), path


# --- damaged Fashion-MNIST files ---------------------------------------------------------------

TRAIN_IMAGES = "train-images-idx3-ubyte"


def damage(folder: Path, how: str) -> Path:
    gz = folder / f"{TRAIN_IMAGES}.gz"
    if how == "truncated gz":
        gz.write_bytes(gz.read_bytes()[:200])
    elif how == "garbage gz":
        gz.write_bytes(b"this is not gzip data at all" * 10)
    elif how == "empty gz":
        gz.write_bytes(b"")
    elif how == "gz of garbage":
        gz.write_bytes(gzip.compress(b"\x12\x34"))
    elif how == "truncated idx":  # uncompressed: the header promises more than the file holds
        raw = gzip.decompress(gz.read_bytes())
        gz.unlink()
        gz = folder / TRAIN_IMAGES
        gz.write_bytes(raw[: len(raw) // 2])
    return gz


DAMAGE = ["truncated gz", "garbage gz", "empty gz", "gz of garbage", "truncated idx"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_fashion_mnist_file_is_one_error_line(how, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "fmnist"
    write_fashion_mnist(folder)
    path = damage(folder, how)
    status, stderr = run_main(["check-data", "--dataset", "fashion-mnist", "--data-dir", str(folder)],
                              capsys, monkeypatch)
    assert_one_error(status, stderr, str(path))
    assert "delete it and get it with 'apt-get install dataset-fashion-mnist'" in stderr
    assert "--download" in stderr


def test_damaged_fashion_mnist_in_train_writes_no_result(tmp_path):
    folder = tmp_path / "fmnist"
    write_fashion_mnist(folder)
    path = damage(folder, "truncated gz")
    runs = tmp_path / "runs"
    result = lsq_cli("train", "--dataset", "fashion-mnist", "--row", "0", "--data-dir", str(folder),
                     "--batch-size", "8", runs_dir=runs, check=False)
    assert_one_error(result.returncode, result.stderr, f"{path} is truncated or not gzip data")
    assert not list(runs.rglob("*.json")) and not list(runs.rglob("*.yaml"))


def test_damaged_cifar10_batch_is_a_data_error(tmp_path):
    from data_fixtures import write_cifar10

    from lsq.data.readers import _read_cifar10

    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match=re.escape(f"{batch} is truncated or not a CIFAR-10 batch")):
        _read_cifar10(tmp_path, download=False)


# --- two makes on one runs directory -------------------------------------------------------------

FAKE_TRAIN = """#!/bin/bash
# Stands in for .venv/bin/python -m lsq train: another make finishes this run meanwhile, and this
# one is refused, as lsq train refuses a run another process trains.
while [ $# -gt 0 ]; do
  case $1 in --runs-dir) runs=$2;; --dataset) d=$2;; --profile) p=$2;; --seed) s=$2;; --row) r=$2;; esac
  shift
done
dir=$runs/$d/$p/row$r/seed$s
mkdir -p "$dir"
echo '{"final_top1": 50.0}' > "$dir/summary.json.tmp" && mv "$dir/summary.json.tmp" "$dir/summary.json"
[ -n "$LSQ_FAKE_HANG" ] && exec sleep 30
echo "error: $dir is being trained by another process" >&2
exit 2
"""


def fake_make(tmp_path: Path, *, hang: bool = False) -> tuple[Path, list[str], dict]:
    """(runs dir, make command without its goal, environment): make on a fake venv whose python
    is FAKE_TRAIN, RUNS under tmp_path. ``hang``: the fake sleeps once it wrote the summary."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_TRAIN)
    python.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: make setup does not run
    runs = tmp_path / "runs"
    command = ["make", "-C", str(REPO), "--no-print-directory", f"VENV={venv}", f"RUNS={runs}",
               f"PYTHON_BOOT={sys.executable}", "PROFILE=smoke", "SEEDS=0"]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env["LSQ_FAKE_HANG"] = "1" if hang else ""
    return runs, command, env


def summary_path(runs: Path, row: int) -> Path:
    return runs / "synthetic" / "smoke" / f"row{row}" / "seed0" / "summary.json"


def test_make_keeps_a_summary_its_failed_recipe_did_not_write(tmp_path):
    """make B finished row4/seed0 while make A's recipe for it was refused (exit 2): make A must
    not delete the finished run (it did with .DELETE_ON_ERROR)."""
    runs, command, env = fake_make(tmp_path)
    target, baseline = summary_path(runs, 4), summary_path(runs, 0)
    baseline.parent.mkdir(parents=True)
    baseline.write_text('{"final_top1": 60.0}')
    result = subprocess.run([*command, str(target)], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "being trained by another process" in result.stderr
    assert "Deleting file" not in result.stderr
    assert json.loads(target.read_text()) == {"final_top1": 50.0}


def test_interrupted_make_keeps_a_summary_finished_meanwhile(tmp_path):
    runs, command, env = fake_make(tmp_path, hang=True)
    target = summary_path(runs, 0)
    make = subprocess.Popen([*command, str(target)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # Generous bounds: the 2-core machine may be busy; the wait ends as soon as the file is there.
        deadline = time.monotonic() + 90
        while not target.exists() and make.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if not target.exists():
            os.killpg(make.pid, signal.SIGKILL)  # the group: the fake's sleep holds the pipes
            pytest.fail(f"the fake training never wrote its summary: {make.communicate()}")
        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        _, stderr = make.communicate(timeout=90)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
    assert "Deleting file" not in stderr, stderr
    assert target.exists(), stderr


def test_every_summary_target_is_precious():
    """Every run rule's target, tables and ablations alike, is listed in .PRECIOUS."""
    result = subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "-n", "-p", "-f", "Makefile",
         f"PYTHON_BOOT={sys.executable}", "RUNS=/tmp/lsq-precious-check", "help"],
        capture_output=True, text=True, timeout=120)
    lines = result.stdout.splitlines()
    precious = set(next(line for line in lines if line.startswith(".PRECIOUS:")).split()[1:])
    targets = {line.split(":", 1)[0] for line in lines
               if line.startswith("/tmp/lsq-precious-check/") and ":" in line}
    summaries = {t for t in targets if t.endswith("/summary.json")}
    assert any("-init-" in t for t in summaries) and any("/synthetic/" in t for t in summaries)
    assert summaries <= precious
    assert ".DELETE_ON_ERROR" not in result.stdout


# --- the report: malformed summaries, settings from config.yaml, a mistyped runs directory ------


def quiet_load(root: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RunWarning)
        loaded = load_runs(root)
    return loaded, [str(w.message) for w in caught if issubclass(w.category, RunWarning)]


def shown(loaded, dataset="synthetic", profile="smoke"):
    page = loaded.select(dataset, profile)
    numbers = tables.results_table(page.summaries, page.in_progress, dataset)
    return tables.flatten(tables.format_results_table(numbers, dataset)).set_index("ID")


@pytest.mark.parametrize("value", ["missing", "91.5", None, True, float("nan"), 250.0])
def test_malformed_final_top1_means_in_progress_with_a_warning(value, tmp_path):
    run_dir = write_run(tmp_path, "synthetic", "smoke", "row1", 0, 10.0, data_kind="synthetic")
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    if value == "missing":
        del summary["final_top1"]
    else:
        summary["final_top1"] = value
    path.write_text(json.dumps(summary))
    loaded, messages = quiet_load(tmp_path)
    assert loaded.summaries.empty
    assert loaded.in_progress["path"].tolist() == ["synthetic/smoke/row1/seed0"]
    assert len(messages) == 1 and messages[0].startswith("synthetic/smoke/row1/seed0/summary.json: ")
    assert "treated as not finished" in messages[0]
    assert shown(loaded).loc["1", "test_acc"] == "in progress"


def test_non_numeric_result_field_means_in_progress(tmp_path):
    run_dir = write_run(tmp_path, "synthetic", "smoke", "row0", 0, 10.0, data_kind="synthetic")
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "wall_seconds": "six minutes"}))
    loaded, messages = quiet_load(tmp_path)
    assert loaded.summaries.empty and len(loaded.in_progress) == 1
    assert messages == ["synthetic/smoke/row0/seed0/summary.json: wall_seconds 'six minutes' is "
                        "not a number; the run is treated as not finished"]
    assert run_tables.provenance_table(loaded.summaries).empty


def with_lr(run_dir: Path, lr: float) -> None:
    config = RunConfig.from_yaml(run_dir / "config.yaml").with_overrides(f"optim.lr={lr}")
    (run_dir / "config.yaml").write_text(config.to_yaml())


def test_settings_columns_come_from_the_runs_config(tmp_path):
    with_lr(write_run(tmp_path, "synthetic", "smoke", "row1", 0, 10.0, data_kind="synthetic"), 1e6)
    for seed, lr in ((0, 0.01), (1, 0.5)):
        with_lr(write_run(tmp_path, "synthetic", "smoke", "row3", seed, 10.0, data_kind="synthetic"), lr)
    write_run(tmp_path, "synthetic", "smoke", "row2", 0, 10.0, data_kind="synthetic")
    loaded, messages = quiet_load(tmp_path)
    assert messages == []
    table = shown(loaded)
    assert table.loc["1", "lr_base"] == "1e+06 (recipe 0.01)"  # not the published 0.01
    assert table.loc["3", "lr_base"] == "0.01 / 0.5 (runs differ; recipe 0.01)"
    assert table.loc["2", "lr_base"] == "0.01"
    assert table.loc["4", "lr_base"] == "0.01"  # not run: the recipe it would train with
    assert table.loc["2", ["quan_lr", "constr_w", "constr_a"]].tolist() == ["yes", "[-1,0,1]", "none"]


def test_unreadable_config_shows_unknown_settings_with_a_warning(tmp_path):
    run_dir = write_run(tmp_path, "synthetic", "smoke", "row1", 0, 10.0, data_kind="synthetic")
    text = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(text.replace("lr: 0.01", "lr: -3.0"))
    loaded, messages = quiet_load(tmp_path)
    assert len(messages) == 1 and messages[0].startswith("synthetic/smoke/row1/seed0/config.yaml: ")
    assert "optim.lr" in messages[0]
    assert shown(loaded).loc["1", "lr_base"] == "—"
    assert shown(loaded).loc["1", "test_acc"] == "10.00"  # the result itself still counts


def test_report_of_a_mistyped_runs_dir_is_one_error_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    status, stderr = run_main(["report", "--runs-dir", str(tmp_path / "nonexistent"),
                               "--out", str(out), "--no-notebooks"], capsys, monkeypatch)
    assert_one_error(status, stderr, f"runs directory {tmp_path / 'nonexistent'} does not exist")
    assert not out.exists()
    (tmp_path / "file").write_text("")
    status, stderr = run_main(["report", "--runs-dir", str(tmp_path / "file"), "--out", str(out)],
                              capsys, monkeypatch)
    assert_one_error(status, stderr, "is not a directory")


def test_report_renders_beside_a_string_final_top1(tmp_path):
    """The page builds (it raised a pandas TypeError) and names the malformed file."""
    from lsq.report import build_report

    runs = tmp_path / "runs"
    for row in (0, 1):
        write_run(runs, "synthetic", "smoke", f"row{row}", 0, 10.0 + row, data_kind="synthetic")
    path = runs / "synthetic" / "smoke" / "row1" / "seed0" / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "final_top1": "11.0"}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RunWarning)
        build_report(runs, tmp_path / "report", execute_notebooks=False,
                     results_dir=tmp_path / "no-results")
    page = (tmp_path / "report" / "synthetic-smoke.md").read_text()
    assert "synthetic/smoke/row1/seed0/summary.json: final_top1 '11.0' is not a percentage" in page
    assert "| 1 | no | [-1,0,1] | none | 0.01 | — | 0 (+1 running) | in progress | in progress |" in page
