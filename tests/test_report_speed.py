"""The report's Speed page: read from benchmarks/results-style folders, never typed; the latest
check per device only."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lsq.config import make_config
from lsq.report import build_report
from lsq.report.speed import (DEFAULT_RESULTS, bench_table, checks, latest_checks, left_out,
                              table_timings, table_walls)

REPO = Path(__file__).resolve().parents[1]


def _bench(path: Path, compile_model: bool) -> None:
    path.write_text(json.dumps({
        "dataset": "cifar10", "batch_size": 128, "device": "cuda (Test GPU)", "torch": "9.9",
        "amp": True, "channels_last": True, "compile": compile_model, "cuda_graphs": True,
        "rows": [
            {"row": 0, "seconds_per_step": 0.002, "images_per_second": 64000, "ratio_to_float": 1.0,
             "paper_epochs": 90, "estimated_hours": 0.02, "setup_seconds": 5.0},
            {"row": 4, "seconds_per_step": 0.003, "images_per_second": 42667, "ratio_to_float": 1.5,
             "paper_epochs": 90, "estimated_hours": 0.03, "setup_seconds": 9.0},
        ]}))


def _run(table: Path, row: int, epochs_done: int, finished: bool, first_epoch: float = 3.0,
         startup: float | None = None) -> None:
    config = make_config("synthetic", row, "paper")
    run = config.run_dir(table)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
    records = [{"epoch": e, "epoch_seconds": (3.0 if e > 1 else first_epoch) if e else 99.0,
                "images_per_second": 1.0} for e in range(epochs_done + 1)]
    if startup is not None and epochs_done:
        records[1]["startup_seconds"] = startup
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if finished:
        (run / "summary.json").write_text(json.dumps({
            "wall_seconds": 250.0, "device": "cuda (Test GPU)", "torch_version": "9.9",
            "data_kind": "synthetic", "compiled": False, "cuda_graphs": True}))


def _results(tmp_path: Path) -> Path:
    check = tmp_path / "results" / "2030-01-01-test"
    (check / "table").mkdir(parents=True)
    _bench(check / "bench-default.json", True)
    _bench(check / "bench-graphs-only.json", False)
    _run(check / "table", 0, 90, finished=True)
    _run(check / "table", 4, 10, finished=False, first_epoch=20.0, startup=13.0)
    _run(check / "table", 3, 10, finished=False)  # written before start-up was recorded
    (check / "gpu-check-table.log").write_text(
        "== phase 3: synthetic CIFAR-shaped table (t=12 s)\n"
        "== table: exit 124, 300 s wall (limit 300 s), MPS on (t=312 s)\n")
    return tmp_path / "results"


def _finished_check(results: Path, log_line: str | None) -> Path:
    check = results / "2030-01-02-done"
    for row in range(5):
        _run(check / "table", row, 90, finished=True)
    if log_line is not None:
        (check / "gpu-check.log").write_text(f"== card and software (t=0 s)\n{log_line}\n== done\n")
    return check


def test_bench_lines_come_from_the_json(tmp_path):
    frame = bench_table(_results(tmp_path))
    assert len(frame) == 4
    line = frame[(frame["row"] == 4) & frame["mode"].str.contains("no compile")].iloc[0]
    assert (line["ms/step"], line["img/s"], line["x float"], line["setup s"]) == ("3.00", "42,667", "1.50", "9")
    assert line["device"] == "cuda (Test GPU)" and line["check"] == "2030-01-01-test"


def test_table_lines_finish_or_project_from_the_metrics(tmp_path):
    frame = table_timings(_results(tmp_path)).set_index("row")
    assert frame.loc["row0", "epochs done"] == "90/90"
    assert frame.loc["row0", "wall or projection for all epochs, s"] == "250 (finished)"
    # 13 s of start-up, 10 epochs done, the first 20 s (compiling), the others 3 s (epoch 0, the
    # untrained evaluation, is left out): 60 s so far and 80 more epochs at the median, 240 s.
    assert frame.loc["row4", "epochs done"] == "10/90"
    assert frame.loc["row4", "median s/epoch"] == "3.00"
    assert frame.loc["row4", "start-up s"] == "13"
    assert frame.loc["row4", "wall or projection for all epochs, s"] == "300 (projected: stopped by the time limit)"
    assert frame.loc["row3", "start-up s"] == "—"
    assert frame.loc["row3", "wall or projection for all epochs, s"] == (
        "270 (projected: stopped by the time limit; start-up not recorded)")
    assert frame.loc["row4", "device"] == "cuda (Test GPU)"  # taken from the finished run
    assert frame.loc["row4", "data"] == "synthetic"
    assert "compile: auto" in frame.loc["row4", "mode"] and "CUDA graphs: auto" in frame.loc["row4", "mode"]
    # A finished run's summary says what "auto" resolved to.
    assert frame.loc["row0", "mode"] == "fp32, no compile, CUDA graphs"


def test_whole_table_wall_comes_from_the_check_log(tmp_path):
    results = _results(tmp_path)
    # Before session 4 the script logged no MPS state.
    _finished_check(results, "== table: exit 0, 283 s wall (limit 420 s) (t=295 s)")
    frame = table_walls(results).set_index("check")
    cut = frame.loc["2030-01-01-test"]
    assert (cut["rows finished"], cut["table wall s"], cut["time limit s"], cut["MPS"]) == ("1/3", "300", "300", "on")
    assert cut["whole table"] == "stopped by the time limit"
    done = frame.loc["2030-01-02-done"]
    assert (done["rows finished"], done["MPS"], done["whole table"]) == ("5/5", "not recorded", "finished in 283 s")
    assert (done["device"], done["torch"]) == ("cuda (Test GPU)", "9.9")


def test_whole_table_wall_says_failed_or_incomplete_and_skips_checks_without_a_table_line(tmp_path):
    results = tmp_path / "results"
    check = _finished_check(results, "== table: exit 2, 40 s wall (limit 300 s), MPS off (t=50 s)")
    assert table_walls(results).set_index("check").loc[check.name, "whole table"] == "failed (exit 2)"
    (check / "table" / "synthetic" / "paper" / "row4" / "seed0" / "summary.json").unlink()
    (check / "gpu-check.log").write_text("== table: exit 0, 40 s wall (limit 300 s), MPS off\n")
    assert table_walls(results).set_index("check").loc[check.name, "whole table"] == (
        "incomplete: 4 of 5 rows finished")
    (check / "gpu-check.log").write_text("== phase 1: CUDA tests (t=4 s)\n== done (diagnose)\n")
    assert table_walls(results).empty


def test_no_results_gives_empty_tables(tmp_path):
    missing = tmp_path / "missing"
    assert bench_table(missing).empty and table_timings(missing).empty and table_walls(missing).empty


def test_only_the_latest_check_of_each_device_is_read(tmp_path):
    results = _results(tmp_path)  # 2030-01-01-test
    newer = results / "2030-02-01-test"
    (newer / "table").mkdir(parents=True)
    _bench(newer / "bench-default.json", True)
    (results / "session-7-notes").mkdir()  # not a <date>-<device> folder
    assert [p.name for p in latest_checks(results)] == ["2030-02-01-test"]
    assert set(bench_table(results)["check"]) == {"2030-02-01-test"}
    assert table_timings(results).empty  # the older check's timed table is not read
    assert left_out(results) == [
        "2030-01-01-test: an older check of test",
        "session-7-notes: not a <date>-<device> folder (e.g. 2026-11-27-h200)"]
    # Another device keeps its own latest check.
    _finished_check(results, "== table: exit 0, 283 s wall (limit 420 s), MPS on")
    assert [p.name for p in latest_checks(results)] == ["2030-01-02-done", "2030-02-01-test"]


def test_a_variant_folder_is_read_beside_its_check(tmp_path):
    results = tmp_path / "results"
    check = _finished_check(results, "== table: exit 0, 283 s wall (limit 420 s), MPS on")
    variant = check / "no-mps"
    _run(variant / "table", 0, 90, finished=True)
    _run(variant / "table", 4, 10, finished=False)
    (variant / "gpu-check-table.log").write_text(
        "== table: exit 124, 240 s wall (limit 240 s), MPS off (t=250 s)\n")
    assert [name for name, _ in checks(results)] == ["2030-01-02-done", "2030-01-02-done/no-mps"]
    walls = table_walls(results).set_index("check")
    assert walls.loc["2030-01-02-done", ["MPS", "whole table"]].tolist() == ["on", "finished in 283 s"]
    assert walls.loc["2030-01-02-done/no-mps", ["MPS", "rows finished", "whole table"]].tolist() == [
        "off", "1/2", "stopped by the time limit"]
    timings = table_timings(results)
    assert timings["check"].value_counts().to_dict() == {"2030-01-02-done": 5,
                                                         "2030-01-02-done/no-mps": 2}


def test_committed_results_hold_one_latest_check_per_device_and_no_session_names():
    results = REPO / DEFAULT_RESULTS
    folders = [p for p in results.rglob("*") if p.is_dir()]
    assert not [p for p in folders if "session" in p.name.lower()]
    assert left_out(results) == []
    assert [p.name for p in latest_checks(results)] == ["2026-11-27-h200"]
    walls = table_walls(results).set_index("check")
    assert walls.loc["2026-11-27-h200", "whole table"] == "finished in 283 s"
    assert walls.loc["2026-11-27-h200/no-mps", "MPS"] == "off"


def test_speed_has_its_own_page_linked_from_the_index(tmp_path):
    results = _results(tmp_path)
    (tmp_path / "runs").mkdir()  # no runs: the Speed page needs none
    build_report(tmp_path / "runs", tmp_path / "report", execute_notebooks=False, results_dir=results)
    out = tmp_path / "report"
    markdown, html = (out / "speed.md").read_text(), (out / "site" / "speed.html").read_text()
    for text in (markdown, html):
        assert "Measured speed" in text and "cuda (Test GPU)" in text and "42,667" in text
        assert "300 (projected" in text
        assert "stopped by the time limit" in text and "The whole table" in text
    index_md, index_html = (out / "index.md").read_text(), (out / "site" / "index.html").read_text()
    assert "[Speed page](speed.md)" in index_md and 'href="speed.html"' in index_html
    for text in (index_md, index_html):
        assert "42,667" not in text and "cuda (Test GPU)" not in text  # no benchmark rows there
    # Every page's navigation links the Speed page.
    assert '<a href="speed.html">Speed</a>' in (out / "site" / "cifar10-paper.html").read_text()
    build_report(tmp_path / "runs", tmp_path / "report2", execute_notebooks=False,
                 results_dir=tmp_path / "none")
    assert "No speed measurements" in (tmp_path / "report2" / "speed.md").read_text()
    assert "there are none yet" in (tmp_path / "report2" / "index.md").read_text()
