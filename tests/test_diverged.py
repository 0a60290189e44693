"""A run whose loss becomes non-finite is a result: ``diverged.json``, not a crash and not a run
"in progress". The engine writes it (where, and on what code and machine), refuses to train the
run again silently, ``--diverged-ok`` turns it into exit 0 (what make does for the ablations),
and the report counts it beside the seeds that finished.

Cheap: the engine tests train 128 synthetic images for 1-2 epochs; the report tests use the
fabricated runs of report_fixtures.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import cli, error_lines
from report_fixtures import write_run

from lsq import runs as runfmt
from lsq.report import analysis, run_tables, tables
from lsq.report.collect import load_runs

SMALL = ["--dataset", "synthetic", "--profile", "smoke", "--set", "data.train_subset=128",
         "--set", "data.test_subset=64", "--batch-size", "32", "--row", "0"]
NAN_LR = ["--epochs", "1", "--lr", "1e6"]  # the test loss is NaN after one epoch


def run_dir(runs: Path) -> Path:
    return runs / "synthetic" / "smoke" / "row0" / "seed0"


# --- the engine --------------------------------------------------------------------------------


def test_a_diverged_run_writes_diverged_json_with_where_and_provenance(tmp_path, capsys):
    # Its one error line, and no NaN in any file: tests/test_faults.py, the same run.
    code, _, _ = cli(capsys, "train", *SMALL, *NAN_LR, runs=tmp_path)
    directory = run_dir(tmp_path)
    assert code == 2
    record = runfmt.read_diverged(directory)  # strict JSON: no NaN in it
    assert not runfmt.is_done(directory)
    assert (record["dataset"], record["row"], record["seed"], record["ablation"]) == (
        "synthetic", 0, 0, None)  # as summary.json has it
    assert (record["epoch"], record["step"], record["found_in"]) == (1, None, "test loss")
    assert record["data_kind"] == "synthetic"
    assert record["lr"] == 1e6 and record["epochs"] == 1
    assert record["last_finite_epoch"] is None  # a float run records no epoch 0
    assert record["git_sha"] == runfmt.git_sha() and "cpu" in record["device"]
    assert record["torch_version"] and record["started_at"] <= record["diverged_at"]
    assert record["wall_seconds"] > 0


def test_a_training_step_divergence_records_its_step_and_first_non_finite_layer(
        tmp_path, capsys, monkeypatch):
    """The second epoch's third step reports a non-finite loss (the finiteness flag is faked:
    a real divergence needs a long run); the record says where, and epoch 1 stays recorded."""
    from lsq.engine import recipe, step

    calls = {"n": 0}
    real = step.TrainStep.first_bad_step

    def first_bad_step(self):
        calls["n"] += 1
        return 2 if calls["n"] == 4 + 3 else real(self)  # 4 steps an epoch: epoch 2, step 3

    monkeypatch.setattr(step.TrainStep, "first_bad_step", first_bad_step)
    monkeypatch.setattr(recipe, "first_nonfinite_layer", lambda *_: "layer1.0.conv1")
    code, _, err = cli(capsys, "train", *SMALL, "--epochs", "2", runs=tmp_path)
    assert code == 2
    assert error_lines(err)[0].startswith(
        "error: non-finite loss in epoch 2 at step 3; first non-finite output: layer1.0.conv1")
    record = runfmt.read_diverged(run_dir(tmp_path))
    assert (record["epoch"], record["step"], record["layer"], record["found_in"]) == (
        2, 3, "layer1.0.conv1", "training loss")
    assert record["last_finite_epoch"] == 1
    assert [r["epoch"] for r in runfmt.read_metrics(run_dir(tmp_path) / runfmt.METRICS)] == [1]


def test_a_diverged_run_is_not_trained_again_unless_its_record_is_deleted(tmp_path, capsys):
    cli(capsys, "train", *SMALL, *NAN_LR, runs=tmp_path)
    directory = run_dir(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}
    code, _, err = cli(capsys, "train", *SMALL, *NAN_LR, runs=tmp_path)
    assert code == 2
    assert error_lines(err) == [
        f"error: {directory} diverged in epoch 1 (diverged.json); not trained again: delete "
        f"{directory / 'diverged.json'} to train on from its checkpoint, or delete {directory} "
        "to start over"]
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == before
    # Another config in the same directory is refused as for any run, naming the key.
    code, _, err = cli(capsys, "train", *SMALL, "--epochs", "1", "--lr", "1e5", runs=tmp_path)
    assert code == 2 and "optim.lr 1000000.0 → 100000.0" in error_lines(err)[0]
    (directory / "diverged.json").unlink()
    code, _, err = cli(capsys, "train", *SMALL, *NAN_LR, runs=tmp_path)
    assert code == 2 and "recorded in" in error_lines(err)[0]  # trained again, diverged again


def test_diverged_ok_exits_0_now_and_when_asked_again(tmp_path, capsys):
    for _ in range(2):
        code, out, err = cli(capsys, "train", *SMALL, *NAN_LR, "--diverged-ok", runs=tmp_path)
        assert code == 0 and not error_lines(err)
        assert [line for line in out.splitlines() if line.startswith("diverged: ")]
    assert runfmt.read_diverged(run_dir(tmp_path))["epoch"] == 1


def test_a_row_whose_baseline_diverged_says_so(tmp_path, capsys):
    cli(capsys, "train", *SMALL, *NAN_LR, runs=tmp_path)
    quantized = [*SMALL[:-1], "1", "--epochs", "1"]  # row 1 of the same seed
    code, _, err = cli(capsys, "train", *quantized, runs=tmp_path)
    assert code == 2
    assert error_lines(err) == [
        f"error: the float baseline of this row diverged ({run_dir(tmp_path) / 'diverged.json'}), "
        f"so this row has no weights to start from; delete {run_dir(tmp_path)} and train row 0 "
        "again with a lower --lr, or train this table into another --runs-dir"]
    # --diverged-ok is about this run diverging, not its baseline's.
    code, _, _ = cli(capsys, "train", *quantized, "--diverged-ok", runs=tmp_path)
    assert code == 2


def test_diverged_ok_does_not_hide_other_errors(tmp_path, capsys):
    code, _, err = cli(capsys, "train", *SMALL, "--epochs", "1", "--diverged-ok",
                       "--set", "optim.momentum=2", runs=tmp_path)
    assert code == 2 and len(error_lines(err)) == 1 and "diverged" not in error_lines(err)[0]


def test_an_unreadable_diverged_json_names_the_file_and_the_fix(tmp_path, capsys):
    directory = run_dir(tmp_path)
    directory.mkdir(parents=True)
    (directory / "diverged.json").write_text('{"epoch": 1, "step": NaN}')
    code, _, err = cli(capsys, "train", *SMALL, *NAN_LR, runs=tmp_path)
    assert code == 2
    assert error_lines(err) == [
        f"error: {directory / 'diverged.json'} is unreadable (NaN is not strict JSON); restore it "
        "(git checkout, for a committed run) or delete it and run the same lsq train command "
        "again, which trains the run on from its checkpoint"]


def test_the_ablation_rule_of_the_makefile_passes_diverged_ok():
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    rule = makefile[makefile.index("define ABLATION_RULE"):]
    rule = rule[:rule.index("endef")]
    assert "--ablation $(5) --diverged-ok" in rule


# --- the report --------------------------------------------------------------------------------


def write_diverged(root: Path, run_name: str, seed: int, *, epoch: int = 1, step: int | None = 244,
                   layer: str | None = "layer3.2.conv1.input_quantizer") -> Path:
    """A fabricated row-3 ablation of fashion-mnist/quick that diverged (TEST ONLY numbers)."""
    directory = write_run(root, "fashion-mnist", "quick", run_name, seed, 50.0, done=False,
                          epochs_done=epoch - 1)
    (directory / "diverged.json").write_text(json.dumps({
        "dataset": "fashion-mnist", "profile": "quick", "row": 3, "seed": seed,
        "ablation": run_name.split("-", 1)[1] if "-" in run_name else "", "epoch": epoch, "step": step, "layer": layer,
        "found_in": "training loss", "epochs": 2, "last_finite_epoch": epoch - 1,
        "last_finite_top1": 41.5, "wall_seconds": 90.0, "device": "cpu (fabricated)",
        "torch_version": "2.14.1", "git_sha": "fab0002"}))
    return directory


@pytest.fixture
def grad_scale_runs(tmp_path):
    """Row 3 with and without grad scale: seed 0 finished both, seed 1's ablation diverged."""
    for seed in (0, 1):
        write_run(tmp_path, "fashion-mnist", "quick", "row0", seed, 92.0)
        write_run(tmp_path, "fashion-mnist", "quick", "row3", seed, 90.0 + seed)
    write_run(tmp_path, "fashion-mnist", "quick", "row3-no-gradscale", 0, 60.0)
    write_diverged(tmp_path, "row3-no-gradscale", 1)
    return tmp_path


def test_collect_keeps_diverged_runs_apart_from_runs_in_progress(grad_scale_runs):
    runs = load_runs(grad_scale_runs).select("fashion-mnist", "quick")
    assert runs.in_progress.empty
    assert runs.diverged[["row", "ablation", "seed", "epoch", "step"]].values.tolist() == [
        [3, "no-gradscale", 1, 1, 244]]
    shown = run_tables.diverged_table(runs.diverged)
    assert shown.iloc[0].tolist() == [
        "fashion-mnist/quick/row3-no-gradscale/seed1", "epoch 1 of 2, step 244",
        "layer3.2.conv1.input_quantizer", "training loss", "41.50 (epoch 0)", "fab0002",
        "cpu (fabricated)"]


def test_a_malformed_diverged_json_leaves_the_run_in_progress_with_a_problem(tmp_path):
    directory = write_diverged(tmp_path, "row3-no-gradscale", 1)
    (directory / "diverged.json").write_text('{"epoch": "one"}')
    with pytest.warns(UserWarning, match="diverged.json: unreadable"):
        runs = load_runs(tmp_path)
    assert runs.diverged.empty and len(runs.in_progress) == 1


def test_the_analysis_counts_diverged_seeds_and_says_where(grad_scale_runs):
    runs = load_runs(grad_scale_runs).select("fashion-mnist", "quick")
    assert analysis.has_ablations(runs.summaries, runs.in_progress, runs.diverged)
    factor = next(a.factor for a in analysis.ABLATIONS if a.name == "no-gradscale")
    table = analysis.ablation_table(runs.summaries, runs.in_progress, factor, runs.diverged)
    line = table.set_index(["ablation", "row"]).loc[("no-gradscale", 3)]
    assert (line["top1_n"], line["diverged"], line["delta_n"]) == (1, 1, 1)
    assert line["delta_mean"] == pytest.approx(-30.0)
    shown = analysis.format_ablation_table(table)
    ablated = shown[(shown["row"] == "3") & ~shown["setting"].str.endswith("(baseline)")]
    ablated = ablated[ablated["final top-1"] != "not run"]
    assert ablated["final top-1"].tolist() == ["60.00 (n=1); 1 of 2 seeds diverged"]
    sentence = next(s for s in analysis.verdicts(table) if "row 3" in s and "costs" in s)
    assert sentence.endswith(
        "(1 seed, no interval: indicative only), ending with 60% nonzero weights; 1 of 2 seeds "
        "diverged (the loss became non-finite: seed 1: epoch 1, step 244, first non-finite "
        "output layer3.2.conv1.input_quantizer), so the numbers rest on the seeds that "
        "finished.")


def test_a_setting_whose_every_seed_diverged_has_the_verdict_diverged(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "fashion-mnist", "quick", "row0", seed, 92.0)
        write_run(tmp_path, "fashion-mnist", "quick", "row3", seed, 90.0)
        write_diverged(tmp_path, "row3-no-gradscale", seed, step=None, layer=None)
    runs = load_runs(tmp_path).select("fashion-mnist", "quick")
    factor = next(a.factor for a in analysis.ABLATIONS if a.name == "no-gradscale")
    assert factor in analysis.factors_for("fashion-mnist", runs.summaries, runs.in_progress,
                                          runs.diverged)
    table = analysis.ablation_table(runs.summaries, runs.in_progress, factor, runs.diverged)
    line = table.set_index(["ablation", "row"]).loc[("no-gradscale", 3)]
    assert (line["verdict"], line["top1_n"], line["diverged"]) == (analysis.DIVERGED, 0, 2)
    shown = analysis.format_ablation_table(table)
    row = shown[(shown["row"] == "3") & (shown["final top-1"] == "2 of 2 seeds diverged")]
    assert row["verdict"].tolist() == ["diverged"]
    assert any(s.endswith("row 3: every seed diverged (the loss became non-finite: seed 0: "
                          "epoch 1; seed 1: epoch 1).") for s in analysis.verdicts(table))


def test_a_diverged_table_row_is_counted_in_the_seeds_column(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path, "fashion-mnist", "quick", "row0", seed, 92.0)
    write_run(tmp_path, "fashion-mnist", "quick", "row3", 0, 90.0)
    write_diverged(tmp_path, "row3", 1)
    runs = load_runs(tmp_path).select("fashion-mnist", "quick")
    numbers = tables.results_table(runs.summaries, runs.in_progress, "fashion-mnist", runs.diverged)
    shown = tables.format_results_table(numbers, "fashion-mnist")
    seeds = dict(zip(shown[("ID", "")], shown[("seeds", "")]))
    assert seeds["3"] == "1 (+1 diverged)" and seeds["0"] == "2"


def test_the_rendered_pages_list_the_diverged_run(grad_scale_runs, tmp_path):
    from lsq.report import build_report

    build_report(grad_scale_runs, tmp_path / "report", execute_notebooks=False)
    page = (tmp_path / "report" / "fashion-mnist-quick.md").read_text()
    assert "Diverged — the loss became non-finite" in page
    assert "fashion-mnist/quick/row3-no-gradscale/seed1" in page
    analysis_page = (tmp_path / "report" / "fashion-mnist-quick-analysis.md").read_text()
    assert "1 of 2 seeds diverged" in analysis_page
    html = (tmp_path / "report" / "site" / "fashion-mnist-quick.html").read_text()
    assert "epoch 1 of 2, step 244" in html
