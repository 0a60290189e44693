"""TensorBoard logs beside each run and the MLflow import of run directories (lsq.track)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lsq.errors import ConfigError
from lsq.track import TensorBoardLog, import_runs, rebuild_tensorboard

from report_fixtures import write_run

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def scalar_steps(run_dir, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_log_has_every_epoch_once(tmp_path):
    run_dir = write_run(tmp_path, "fashion-mnist", "quick", "row1", 0, 80.0)
    kept = records(run_dir)  # epochs 0..2 of a quantized quick run
    log = TensorBoardLog(run_dir)
    for record in kept:  # a first process writes every epoch, then is killed ...
        log.write(record)
    log.close()
    # ... after epoch 2's scalars but before its checkpoint: the resume keeps epochs 0-1,
    # rebuilds the log from them and writes epoch 2 again.
    resumed = TensorBoardLog(run_dir)
    resumed.rebuild(kept[:-1])
    resumed.write(kept[-1])
    resumed.close()
    assert scalar_steps(run_dir, "top1/test") == [r["epoch"] for r in kept]
    assert scalar_steps(run_dir, "loss/train") == [r["epoch"] for r in kept if "train_loss" in r]
    assert any(tag.startswith("step_size/") for tag in _tags(run_dir))


def _tags(run_dir) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return events.Tags()["scalars"]


def test_rebuild_covers_every_run_and_rejects_a_missing_dir(tmp_path):
    for row in (0, 1):
        write_run(tmp_path, "fashion-mnist", "quick", f"row{row}", 0, 80.0)
    assert rebuild_tensorboard(tmp_path) == 2
    with pytest.raises(ConfigError, match="does not exist"):
        rebuild_tensorboard(tmp_path / "nope")


def test_mlflow_import_is_idempotent_and_replaces_a_retrained_run(tmp_path):
    runs = tmp_path / "runs"
    for row in (0, 1):
        write_run(runs, "fashion-mnist", "quick", f"row{row}", 0, 80.0 + row)
    write_run(runs, "fashion-mnist", "quick", "row2", 0, 50.0, done=False, epochs_done=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert import_runs(runs, uri) == {"imported": 2, "replaced": 0, "unchanged": 0,
                                      "unfinished": 1, "unreadable": 0, "diverged": 0}
    assert import_runs(runs, uri)["unchanged"] == 2
    summary_path = runs / "fashion-mnist/quick/row1/seed0/summary.json"
    summary = json.loads(summary_path.read_text())
    summary["finished_at"] = "2026-12-01T00:00:00Z"
    summary_path.write_text(json.dumps(summary))
    assert import_runs(runs, uri)["replaced"] == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fashion-mnist/quick")
    live = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in live) == ["row0/seed0", "row1/seed0"]
    row1 = next(r for r in live if r.info.run_name == "row1/seed0")
    assert row1.data.metrics["final_top1"] == 81.0
    assert row1.data.params["optim.epochs"] == "2"
    assert row1.data.tags["git_sha"] == "fab0001" and row1.data.tags["profile"] == "quick"
    history = client.get_metric_history(row1.info.run_id, "top1/test")
    assert [m.step for m in history] == [r["epoch"] for r in records(summary_path.parent)]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # the store is a plain SQLite file
        assert db.execute("select count(*) from runs where lifecycle_stage = 'active'").fetchone() == (2,)


def test_mlflow_imports_a_diverged_run_as_failed_with_where_it_diverged(tmp_path):
    runs = tmp_path / "runs"
    run_dir = write_run(runs, "fashion-mnist", "quick", "row3-no-gradscale", 1, 50.0, done=False,
                        epochs_done=0)
    (run_dir / "diverged.json").write_text(json.dumps({
        "epoch": 1, "step": 244, "layer": "layer3.2.conv1.input_quantizer",
        "message": "non-finite loss in epoch 1 at step 244", "git_sha": "fab0002",
        "device": "cpu (fabricated)", "diverged_at": "2026-12-01T18:00:00+00:00"}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    counts = import_runs(runs, uri)
    assert (counts["imported"], counts["diverged"], counts["unfinished"]) == (1, 1, 0)
    assert import_runs(runs, uri)["unchanged"] == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fashion-mnist/quick")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
    assert (run.data.tags["lsq.diverged_epoch"], run.data.tags["lsq.diverged_step"],
            run.data.tags["lsq.first_nonfinite"]) == ("1", "244", "layer3.2.conv1.input_quantizer")
    assert not any(key.startswith("final_") for key in run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "top1/test")] == [0]


def test_mlflow_import_of_a_missing_dir_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        import_runs(tmp_path / "nope", f"sqlite:///{tmp_path / 'm.db'}")


def test_a_trained_run_logs_every_epoch_once_also_after_a_resume(tmp_path):
    from dataclasses import replace

    from lsq.config import make_config
    from lsq.engine.run import fit

    runs = tmp_path / "runs"
    float_row = replace(make_config("synthetic", 0, "smoke").with_overrides(
        "data.train_subset=64", "data.test_subset=32", "optim.batch_size=32"), device="cpu")
    row = replace(make_config("synthetic", 1, "smoke").with_overrides(
        "data.train_subset=64", "data.test_subset=32", "optim.batch_size=32", "optim.epochs=2"),
        device="cpu")
    fit(float_row, runs, progress=False, log=lambda *_: None)
    fit(row, runs, progress=False, log=lambda *_: None)
    run_dir = row.run_dir(runs)
    assert scalar_steps(run_dir, "top1/test") == [0, 1, 2]
    assert scalar_steps(run_dir, "loss/train") == [1, 2]
    # Killed after its last checkpoint but before summary.json: the resume rebuilds the log.
    (run_dir / "summary.json").unlink()
    fit(row, runs, progress=False, log=lambda *_: None)
    assert scalar_steps(run_dir, "top1/test") == [0, 1, 2]
