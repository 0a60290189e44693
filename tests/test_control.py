"""Row 0's control: the float model trained on exactly as the quantized rows are (their epochs, lr,
weight decay and schedule, nothing quantized), so that a drop can be read at equal training.

Cheap: the engine test trains 128 synthetic images for one epoch twice; the report tests use the
fabricated runs of report_fixtures (TEST ONLY numbers).
"""

from __future__ import annotations

import re
import subprocess

import pytest
from report_fixtures import write_run

from cli_helpers import REPO, lsq_cli
from lsq import runs as runfmt
from lsq.config import make_config
from lsq.errors import ConfigError
from lsq.experiments import controls
from lsq.report import analysis
from lsq.report.collect import load_runs


def test_the_control_is_the_quantized_rows_recipe_with_nothing_quantized():
    control = make_config("fashion-mnist", 0, "full", 1, "finetune")
    row1 = make_config("fashion-mnist", 1, "full", 1)
    assert control.quant.is_float and control.optim.from_baseline and control.starts_from_baseline
    for key in ("epochs", "lr", "weight_decay", "scheduler", "momentum", "batch_size"):
        assert getattr(control.optim, key) == getattr(row1.optim, key), key
    assert control.optim.epochs != make_config("fashion-mnist", 0, "full", 1).optim.epochs
    assert control.run_dir("runs").as_posix() == "runs/fashion-mnist/full/row0-finetune/seed1"
    assert control.baseline().run_dir("runs").as_posix() == "runs/fashion-mnist/full/row0/seed1"


@pytest.mark.parametrize("make, message", [
    (lambda: make_config("fashion-mnist", 3, "full", 0, "finetune"),
     "ablation finetune is a control of the float row 0; use --row 0"),
    (lambda: make_config("fashion-mnist", 0, "full", 0, "init-x4"),
     "ablation init-x4 applies to quantized rows (1-4), not the float row 0"),
    (lambda: make_config("fashion-mnist", 1, "full", 0).with_overrides("optim.from_baseline=true"),
     "optim.from_baseline trains the float row 0 on from its trained model"),
])
def test_a_control_where_it_does_not_apply_is_one_clear_error(make, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make()


def test_the_converging_profiles_train_the_control_and_make_ablations_includes_it():
    assert controls("full") == controls("paper") == ("finetune",)
    assert controls("quick") == controls("smoke") == ()

    def trains(*goals):
        out = subprocess.run(["make", "-n", *goals], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout
        return [line for line in out.splitlines() if "lsq train" in line]

    full = trains("ablations", "PROFILE=full", "ABLATION_SEEDS=0 1", "RUNS=/nonexistent")
    assert [line.split("--dataset ", 1)[1] for line in full if "finetune" in line] == [
        f"fashion-mnist --profile full --seed {s} --row 0 --ablation finetune --diverged-ok"
        for s in (0, 1)]
    quick = trains("ablations", "ABLATION_SEEDS=0", "RUNS=/nonexistent")
    assert quick and not any("finetune" in line for line in quick)


def test_the_control_starts_from_the_trained_float_model(tmp_path):
    small = ["--dataset", "synthetic", "--profile", "smoke", "--set", "data.train_subset=128",
             "--set", "data.test_subset=64", "--batch-size", "32", "--row", "0", "--seed", "0"]
    lsq_cli("train", *small, runs_dir=tmp_path)
    lsq_cli("train", *small, "--ablation", "finetune", runs_dir=tmp_path)
    baseline = tmp_path / "synthetic" / "smoke" / "row0" / "seed0"
    control = tmp_path / "synthetic" / "smoke" / "row0-finetune" / "seed0"
    first = runfmt.read_metrics(control / runfmt.METRICS)[0]
    # Epoch 0 is the model before any step: the baseline's trained one, evaluated again.
    assert first["epoch"] == 0
    assert first["test_top1"] == runfmt.read_summary(baseline)["final_top1"]
    assert first["test_loss"] == runfmt.read_summary(baseline)["final_test_loss"]
    summary = runfmt.read_summary(control)
    assert summary["ablation"] == "finetune" and summary["baseline_run"] == \
        "synthetic/smoke/row0/seed0"


@pytest.fixture
def full_runs(tmp_path):
    """fashion-mnist/full: float 93.0 / 93.4, control +0.4 / +0.6, row 1 93.2 / 93.6, row 3
    91.0 / 91.6, and one row-3 ablation."""
    for seed, (base, control, row1, row3) in enumerate([(93.0, 93.4, 93.2, 91.0),
                                                        (93.4, 94.0, 93.6, 91.6)]):
        write_run(tmp_path, "fashion-mnist", "full", "row0", seed, base)
        write_run(tmp_path, "fashion-mnist", "full", "row0-finetune", seed, control)
        write_run(tmp_path, "fashion-mnist", "full", "row1", seed, row1)
        write_run(tmp_path, "fashion-mnist", "full", "row3", seed, row3)
        write_run(tmp_path, "fashion-mnist", "full", "row3-init-x4", seed, row3 - 2)
    return tmp_path


def test_the_analysis_pairs_the_control_with_row_0_and_leaves_the_other_factors_alone(full_runs):
    runs = load_runs(full_runs).select("fashion-mnist", "full")
    assert analysis.CONTROL in analysis.factors_for("fashion-mnist", runs.summaries,
                                                    runs.in_progress)
    assert analysis.ablated_rows(runs.summaries, "step_init") == [3]
    assert analysis.ablated_rows(runs.summaries, analysis.CONTROL) == [0]
    table = analysis.ablation_table(runs.summaries, runs.in_progress, analysis.CONTROL)
    line = table.set_index("ablation").loc["finetune"]
    assert (line["row"], line["delta_n"]) == (0, 2)
    assert line["delta_mean"] == pytest.approx(0.5)  # +0.4, +0.6


def test_drops_against_the_control_are_paired_per_seed(full_runs):
    runs = load_runs(full_runs).select("fashion-mnist", "full")
    drops = analysis.control_drops(runs.summaries, "fashion-mnist").set_index("row")
    assert list(drops.index) == [1, 3]  # the quantized rows with runs
    assert drops.loc[1, "drop"].mean == pytest.approx(-0.2)  # 93.0-93.2, 93.4-93.6
    assert drops.loc[1, "control_drop"].mean == pytest.approx(0.3)  # 93.4-93.2, 94.0-93.6
    # +0.2 and +0.4: sd 0.1414, t(0.975, 1) = 12.706
    assert drops.loc[1, "control_drop"].lo == pytest.approx(0.3 - 12.706204736 * 0.1)
    shown = analysis.format_control_drops(drops.reset_index())
    assert shown.iloc[0].tolist() == ["1", "w[-1,0,1], first/last float", "2", "-0.20",
                                      "[-0.20, -0.20]", "+0.30", "[-0.97, +1.57]"]
    sentences = analysis.control_sentences(drops.reset_index())
    assert sentences[0] == (
        "Row 1 (w[-1,0,1], first/last float): drop +0.30 points at equal training (95 % CI "
        "[-0.97, +1.57], 2 seeds; the table's drop, against the float model as trained: -0.20): "
        "not distinguishable from the equally trained float model.")
    assert sentences[1].endswith("below the equally trained float model.")  # +2.4, +2.4


def test_the_analysis_page_shows_the_drops_at_equal_training(full_runs, tmp_path):
    from lsq.report import build_report

    build_report(full_runs, tmp_path / "report", execute_notebooks=False)
    page = (tmp_path / "report" / "fashion-mnist-full-analysis.md").read_text()
    assert "## Control: the float model trained as long as the quantized rows" in page
    assert "### Drops at equal training" in page
    assert "| 3 | w[-1,0,1], a[0,1,2,3], first/last float | 2 | +1.90 |" in page
    html = (tmp_path / "report" / "site" / "fashion-mnist-full-analysis.html").read_text()
    assert "Drops at equal training" in html
    table_page = (tmp_path / "report" / "fashion-mnist-full.md").read_text()
    assert ("- **At equal training:** rows 1-4 trained on from row 0 for their own epochs, so the "
            "drops above compare models trained for different budgets. The float control (2 "
            "seeds) trains row 0 on exactly as they are; the drops against it, at equal "
            "training, are on the Analysis page: "
            "[fashion-mnist-full-analysis.md](fashion-mnist-full-analysis.md).") in table_page


def test_the_paper_page_borrows_the_control_with_its_float_row(full_runs):
    """The paper's rows train with the same recipe as the seed table's, so the control that
    trains row 0 on as they are serves the page that borrows row 0 too."""
    from test_paper_table import _paper_run

    for seed, final in enumerate((92.0, 92.5)):
        _paper_run(full_runs, "row1", seed, final)
    runs = load_runs(full_runs).select("fashion-mnist-paper", "full")
    control = runs.summaries[runs.summaries["ablation"] == "finetune"]
    assert sorted(control["path"]) == ["fashion-mnist/full/row0-finetune/seed0",
                                       "fashion-mnist/full/row0-finetune/seed1"]
    drops = analysis.control_drops(runs.summaries, "fashion-mnist-paper").set_index("row")
    assert drops.loc[1, "control_drop"].mean == pytest.approx(((93.4 - 92.0) + (94.0 - 92.5)) / 2)


def test_both_drops_rest_on_the_seeds_the_control_has(full_runs):
    write_run(full_runs, "fashion-mnist", "full", "row0", 2, 80.0)  # no control for seed 2
    write_run(full_runs, "fashion-mnist", "full", "row1", 2, 93.0)
    runs = load_runs(full_runs).select("fashion-mnist", "full")
    drops = analysis.control_drops(runs.summaries, "fashion-mnist").set_index("row")
    assert drops.loc[1, "drop"].n == drops.loc[1, "control_drop"].n == 2
    assert drops.loc[1, "drop"].mean == pytest.approx(-0.2)
