"""The LSQ paper's table beside the seed's: its rows as data (w/a 2/2, 3/3, 4/4, 8/8, first and
last layers at 8 bits), training from the seed table's float models, `make imagenet-paper` /
`make fashion-mnist-paper`, and its page: no unconfirmed number, its own claim, its audit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from cli_helpers import REPO
from report_fixtures import WALL_SECONDS, write_run

from lsq.config import make_config
from lsq.errors import ConfigError
from lsq.experiments import PROTOCOLS, TABLES
from lsq.report import analysis, audit, claims, figures, run_tables, tables
from lsq.report.collect import load_runs

PAPER_TABLES = ("imagenet-paper", "fashion-mnist-paper")


@pytest.mark.parametrize("name", PAPER_TABLES)
def test_the_paper_rows_are_whole_b_bit_precisions_with_first_last_at_8_bits(name):
    table = TABLES[name]
    quantized = [row for row in table.rows if not row.is_float]
    assert [row.bits for row in quantized] == [2, 3, 4, 8]
    # Signed weights [-2^(b-1), 2^(b-1)-1]: 2 bits is {-2..1}, not the seed's ternary {-1, 0, 1}.
    assert [row.constr_w for row in quantized] == [(-2, 1), (-4, 3), (-8, 7), (-128, 127)]
    assert [row.constr_a for row in quantized] == [(0, 3), (0, 7), (0, 15), (0, 255)]
    assert all(row.quan_lr and row.first_last_w == (-128, 127) and row.first_last_a == (0, 255)
               for row in quantized)
    assert table.trained_rows == (1, 2, 3, 4)  # row 0 is the seed table's float model
    # Nothing published that could not be confirmed; the page says why.
    assert not any(row.published for row in table.rows)
    assert all(row.bits is None for row in TABLES["cifar10"].rows)  # ternary is not 2-bit
    assert table.source == "paper"
    assert {TABLES[t].source for t in TABLES if t not in PAPER_TABLES} == {"seed"}


def test_a_paper_row_converts_its_first_and_last_layers_at_8_bits():
    from lsq.engine.recipe import build_run_model
    from lsq.quant.inspect import quantizers

    config = make_config("fashion-mnist-paper", 1, "smoke")
    assert (config.quant.weight_levels, config.quant.act_levels) == ("[-2,-1,0,1]", "[0,1,2,3]")
    levels = {name: (q.q_min, q.q_max) for name, q in quantizers(build_run_model(config))}
    assert levels["conv1.weight_quantizer"] == levels["fc.weight_quantizer"] == (-128, 127)
    assert levels["fc.input_quantizer"] == (0, 255)
    inner = {v for k, v in levels.items() if not k.startswith(("conv1.", "fc."))}
    assert inner == {(-2, 1), (0, 3)}


def test_a_paper_row_trains_on_the_seed_tables_data_from_its_float_model():
    config = make_config("fashion-mnist-paper", 3, "full", seed=2)
    assert TABLES[config.dataset].data_name == "fashion-mnist"
    assert config.optim.epochs == make_config("fashion-mnist", 3, "full").optim.epochs
    assert config.baseline() == make_config("fashion-mnist", 0, "full", seed=2)
    assert str(config.run_dir("runs")) == "runs/fashion-mnist-paper/full/row3/seed2"
    distilled = make_config("fashion-mnist-paper", 1, "full", ablation="distill")
    assert distilled.optim.distill
    assert distilled.baseline() == make_config("fashion-mnist", 0, "full", seed=0)
    with pytest.raises(ConfigError, match="takes its float models from the fashion-mnist table"):
        make_config("fashion-mnist-paper", 0, "full")
    assert make_config("imagenet-paper", 2, "paper").optim.batch_size == 256  # ImageNet's


def _lsq_list(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "lsq", "list", *args], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.split()


def test_lsq_list_gives_make_every_tables_rows_baseline_and_ablations():
    assert "fashion-mnist-paper:fashion-mnist:1,2,3,4:row1-distill" in _lsq_list("tables")
    assert "cifar10:cifar10:0,1,2,3,4:" in _lsq_list("tables")
    assert _lsq_list("rows", "--dataset", "imagenet-paper") == ["1", "2", "3", "4"]
    assert _lsq_list("baseline", "--dataset", "imagenet-paper") == ["imagenet"]
    bad = subprocess.run([sys.executable, "-m", "lsq", "list", "baseline"], cwd=REPO,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "list baseline needs --dataset" in bad.stderr


def test_make_trains_the_paper_table_from_the_seed_tables_float_runs(tmp_path):
    result = subprocess.run(["make", "-n", "fashion-mnist-paper", "PROFILE=full", "SEEDS=0 1",
                             f"RUNS={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    trains = [line.split("--dataset ", 1)[1].strip() for line in result.stdout.splitlines()
              if " lsq train " in line]
    expected = {f"fashion-mnist --profile full --seed {s} --row 0" for s in (0, 1)}
    expected |= {f"fashion-mnist-paper --profile full --seed {s} --row {r}"
                 for s in (0, 1) for r in (1, 2, 3, 4)}
    expected |= {f"fashion-mnist-paper --profile full --seed {s} --row 1 --ablation distill "
                 "--diverged-ok" for s in (0, 1)}
    assert set(trains) == expected
    # Float baselines first: every row of the paper's table waits for fashion-mnist's row 0.
    assert all(trains.index(f"fashion-mnist --profile full --seed {s} --row 0")
               < trains.index(f"fashion-mnist-paper --profile full --seed {s} --row 1")
               for s in (0, 1))


def _paper_run(root, run_name: str, seed: int, final: float):
    """A finished run of the paper's stand-in table (write_run writes fashion-mnist's)."""
    row, _, ablation = run_name[3:].partition("-")
    source = write_run(root, "fashion-mnist", "full", run_name, seed, final)
    target = root / "fashion-mnist-paper" / "full" / run_name / f"seed{seed}"
    target.parent.mkdir(parents=True, exist_ok=True)
    source.rename(target)
    config = make_config("fashion-mnist-paper", int(row), "full", seed, ablation or None)
    (target / "config.yaml").write_text(config.with_overrides("optim.epochs=8").to_yaml())
    summary = json.loads((target / "summary.json").read_text())
    (target / "summary.json").write_text(json.dumps({
        **summary, "dataset": "fashion-mnist-paper", "baseline_run": f"fashion-mnist/full/row0/seed{seed}"}))


def _paper_runs(tmp_path):
    for seed, (base, rows) in enumerate([(93.0, (92.0, 92.8, 93.1, 93.0)),
                                         (93.4, (92.6, 93.0, 93.3, 93.5))]):
        write_run(tmp_path, "fashion-mnist", "full", "row0", seed, base)
        write_run(tmp_path, "fashion-mnist", "full", "row1", seed, 90.0)  # the seed's row: not ours
        for row, final in enumerate(rows, start=1):
            _paper_run(tmp_path, f"row{row}", seed, final)
    return load_runs(tmp_path).select("fashion-mnist-paper", "full")


def test_the_paper_page_takes_its_float_row_from_the_seed_table_and_shows_no_paper_numbers(tmp_path):
    runs = _paper_runs(tmp_path)
    plain = runs.summaries[runs.summaries["ablation"] == ""]
    assert sorted(plain.loc[plain["row"] == 0, "path"]) == [
        "fashion-mnist/full/row0/seed0", "fashion-mnist/full/row0/seed1"]
    assert sorted(plain.loc[plain["row"] == 1, "path"]) == [  # not the seed table's row 1
        "fashion-mnist-paper/full/row1/seed0", "fashion-mnist-paper/full/row1/seed1"]
    numbers = tables.results_table(runs.summaries, runs.in_progress, "fashion-mnist-paper")
    drops = dict(zip(numbers["ID"], numbers["drop_top1_mean"]))
    assert drops[1] == pytest.approx(0.9) and drops[3] == pytest.approx(0.0)
    shown = tables.format_results_table(numbers, "fashion-mnist-paper")
    assert not any("paper" in str(sub) or "Δ" in str(sub) for _, sub in shown.columns)
    # Nor a published epoch count: the readable source states none.
    assert ("epoch", "") in shown.columns and shown[("epoch", "")].tolist() == ["20", "8", "8", "8", "8"]
    # Its own claim, from the paper's abstract, judged on the 3/3 row.
    verdicts = claims.evaluate_claims(runs.summaries, "fashion-mnist-paper", runs.in_progress)
    assert [v.claim.key for v in verdicts] == ["three-bit-full-precision"]
    assert verdicts[0].parts[0].label == "drop row 2" and verdicts[0].paper_verdict == ""
    assert figures.precision_rows("fashion-mnist-paper") == {1: 2, 2: 3, 3: 4, 4: 8}
    assert figures.precision_rows("fashion-mnist") == {}


def test_the_paper_audit_states_only_what_the_paper_says(tmp_path):
    runs = _paper_runs(tmp_path)
    lines = {line["element"]: line for line in
             audit.audit_table(tmp_path, "fashion-mnist-paper", runs.summaries).to_dict("records")}
    assert audit.source("fashion-mnist-paper").startswith("ImageNet (LSQ paper), as the LSQ paper")
    assert lines["optimizer"]["verdict"] == lines["lr schedule"]["verdict"] == audit.MATCHES
    # Secondary summaries are not the source: the 8-bit first/last layers are "not stated".
    assert lines["first/last precision"]["verdict"] == audit.NOT_STATED
    assert lines["first/last precision"]["these runs"] == "w[-128..127], a[0..255]"
    assert lines["row 1: weight levels"] == {"element": "row 1: weight levels",
                                             "published": "[-2,-1,0,1]",
                                             "these runs": "[-2,-1,0,1]", "verdict": audit.MATCHES}
    # The paper's readable text states its precisions, not the rows' lr or first/last setting.
    assert lines["row 1: base lr"]["verdict"] == lines["row 4: first/last quantized"]["verdict"] \
        == audit.NOT_STATED
    assert lines["quantized epochs"]["verdict"] == audit.NOT_STATED
    assert lines["dataset"]["verdict"] == "departs: Fashion-MNIST (real) instead of ImageNet (LSQ paper) (real)"
    assert PROTOCOLS["imagenet-paper"].weight_decay is None  # per-precision decay: unconfirmed


def test_the_paper_page_analyses_its_distilled_row_only(tmp_path):
    runs = _paper_runs(tmp_path)
    assert analysis.factors_for("fashion-mnist-paper", runs.summaries, runs.in_progress) == {}
    for seed in (0, 1):
        _paper_run(tmp_path, "row1-distill", seed, 92.5 + seed)
    runs = load_runs(tmp_path).select("fashion-mnist-paper", "full")
    assert list(analysis.factors_for("fashion-mnist-paper", runs.summaries, runs.in_progress)) == [
        "distillation"]
    assert analysis.ablated_rows(runs.summaries) == [1]
    numbers = analysis.ablation_table(runs.summaries, runs.in_progress, "distillation")
    assert list(numbers["setting"]) == ["no teacher", "distilled from the float baseline"]
    # The seed's tables list the seed's factors even before any ablation ran.
    assert list(analysis.factors_for("fashion-mnist", runs.summaries.iloc[0:0],
                                     runs.in_progress.iloc[0:0])) == ["step_init", "step_lr", "scheduler"]


def test_the_papers_ablations_stand_beside_the_measured_ones_only_where_confirmed(monkeypatch):
    from lsq import experiments

    assert analysis.paper_ablation_note("step_init") == ""  # the paper's ablations: none of init
    note = analysis.paper_ablation_note("scheduler")
    assert "nor its numbers could be confirmed" in note and "no number is shown" in note
    monkeypatch.setitem(experiments.PAPER_ABLATIONS, "scheduler",
                        ("cosine against step decay", {"cosine": 67.6, "step": 67.2}))
    monkeypatch.setattr(analysis, "PAPER_ABLATIONS", experiments.PAPER_ABLATIONS)
    assert analysis.paper_ablation_note("scheduler").endswith("its top-1: cosine 67.6, step 67.2.")


def test_the_paper_page_names_the_paper_as_the_source_of_its_claims(tmp_path):
    from lsq.report import build_report

    _paper_runs(tmp_path)
    for seed in (0, 1):
        _paper_run(tmp_path, "row1-distill", seed, 92.5 + seed)
    build_report(tmp_path, tmp_path / "report", execute_notebooks=False)
    pages = {p.name: p.read_text() for p in (tmp_path / "report").glob("*.md")}
    paper, analysis_page = pages["fashion-mnist-paper-full.md"], pages["fashion-mnist-paper-full-analysis.md"]
    assert "## Claims of the LSQ paper" in paper and "Claims of the seed README" not in paper
    # Its compute is its own runs' (10, each WALL_SECONDS); the 2 borrowed float runs are said
    # apart, counted on the fashion-mnist page.
    own = 10 * WALL_SECONDS / 3600
    assert (f"- Compute: 10 finished runs, {run_tables.format_duration(10 * WALL_SECONDS)} in total "
            f"({own:.3f} device-hours)") in paper
    assert ("besides, the 2 float runs of row 0, taken from the fashion-mnist table, whose page "
            "counts their compute") in paper
    assert f"| cpu (fabricated, 2 threads) | 10 | {own:.3f} |" in paper
    assert "distill" in analysis_page and "The seed README names three factors" not in analysis_page
