"""build_report end to end on fabricated runs: every file, banner, provenance; notebooks once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from report_fixtures import built_report, shared_dir

from lsq.report import build_report, main

PAGES = ["fashion-mnist-quick", "cifar10-paper", "imagenet-quick", "synthetic-smoke"]
ANALYSIS = ["fashion-mnist-quick", "synthetic-smoke"]
FIGURES = ["acc-weight-only", "acc-full", "step-sizes", "sparsity"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    return built_report("full", shared_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def with_notebooks(tmp_path_factory):
    return built_report("notebooks", shared_dir(tmp_path_factory))


def test_writes_every_expected_file(full):
    out = full.out
    expected = ["index.md", *(f"{p}.md" for p in PAGES), *(f"{p}-analysis.md" for p in ANALYSIS),
                "site/index.html", "site/style.css", "site/pygments.css",
                *(f"site/{p}.html" for p in PAGES), *(f"site/{p}-analysis.html" for p in ANALYSIS),
                *(f"site/figures/{p}-{f}.png" for p in PAGES for f in FIGURES),
                *(f"site/figures/{p}-ablation-{factor}.png" for p in ANALYSIS
                  for factor in ("step_init", "step_lr", "scheduler")),
                "site/figures/fashion-mnist-quick-ablation-step_init-nonzero.png"]
    missing = [name for name in expected if not (out / name).is_file()]
    assert not missing
    assert not (out / "cifar10-paper-analysis.md").exists()  # no ablation runs there
    assert not (out / "site" / "notebooks").exists()  # execute_notebooks=False
    for png in (out / "site" / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_and_html_show_the_same_table(full):
    markdown = (full.out / "cifar10-paper.md").read_text()
    html = (full.out / "site" / "cifar10-paper.html").read_text()
    for cell in ("91.30 ± 0.14", "+1.61", "87.24", "not run", "-0.10 ± 0.14"):
        assert cell in markdown and cell in html
    header = next(line for line in markdown.splitlines() if line.startswith("| ID |"))
    assert header.count("|") == 14  # 13 columns: 7 settings + (measured, paper, Δ) x (acc, drop)
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table[:7]}) == 1  # header, rule, rows 0-4 aligned


def test_claims_tables_show_intervals_in_markdown_and_html(full):
    markdown = (full.out / "fashion-mnist-quick.md").read_text()
    html = (full.out / "site" / "fashion-mnist-quick.html").read_text()
    header = ("| claim (its source's words) | test | comparison | mean | 95 % CI | seeds | threshold | "
              "verdict | seeds to settle | on the paper's numbers | caveat |")
    assert header in markdown
    line = next(row for row in markdown.splitlines() if "| drop row 4 |" in row)
    assert "| +2.90 | [+1.63, +4.17] | 2 | > 2.00 | inconclusive | 3 |" in line
    assert '<td class="verdict v-none">inconclusive</td>' in html
    assert '<td class="num">[+1.63, +4.17]</td>' in html
    assert "95 % Student-t interval" in markdown and "95 % Student-t interval" in html


def test_synthetic_pages_carry_the_banner(full):
    banner = "SYNTHETIC DATA: numbers measure nothing about LSQ"
    for name in ("site/synthetic-smoke.html", "site/synthetic-smoke-analysis.html",
                 "synthetic-smoke.md", "synthetic-smoke-analysis.md"):
        assert banner in (full.out / name).read_text(), name
    for name in ("site/cifar10-paper.html", "cifar10-paper.md", "site/fashion-mnist-quick.html"):
        assert banner not in (full.out / name).read_text(), name


def test_provenance_and_notes_on_every_page(full):
    for name in PAGES:
        for text in ((full.out / f"{name}.md").read_text(),
                     (full.out / "site" / f"{name}.html").read_text()):
            assert "fab0001" in text  # git SHA
            assert "2.14.1" in text  # torch
            assert "cpu (fabricated, 2 threads)" in text
            assert "device-hours" in text
            assert "the normalised image" in text  # quan_lr interpretation
    fashion = (full.out / "fashion-mnist-quick.md").read_text()
    assert "float baseline 4 epochs; quantized rows 2 epochs (the paper: 90)" in fashion
    assert "| total | 27 | 2.700 |" in fashion
    cifar = (full.out / "cifar10-paper.md").read_text()
    assert "row 2 implies 89.54" in cifar
    imagenet = (full.out / "imagenet-quick.md").read_text()
    assert "pretrained weights, evaluated only" in imagenet
    # Whether torch.compile ran (it changes the wall time) is in each run's provenance line.
    assert "| wall time | compiled | device |" in fashion
    assert "| fashion-mnist/quick/row4/seed0 | real | 2 | 6.0 min | yes |" in fashion
    assert "| fashion-mnist/quick/row1/seed0 | real | 2 | 6.0 min | no |" in fashion


def test_in_progress_and_corrupt_runs_are_reported_not_used(full):
    index = (full.out / "index.md").read_text()
    assert "fashion-mnist/quick/row4/seed2 | 1 of 2" in index
    assert "fashion-mnist/quick/row1/seed0/metrics.jsonl: line 4 is not valid JSON" in index
    fashion = (full.out / "fashion-mnist-quick.md").read_text()
    assert "| 2 (+1 running) | 89.30 ± 0.42 | 87.24 | +2.06 | +2.90 ± 0.14 | 2.32 | +0.58 |" \
        in fashion


def test_analysis_page(full):
    text = (full.out / "fashion-mnist-quick-analysis.md").read_text()
    for title in ("Step-size initial value", "Step-size learning rate", "Learning-rate scheduler"):
        assert f"## {title}" in text
    assert "LSQ init x4 costs 3.00 points on row 1 (95 % CI [-3.00, -3.00], 2 seeds)" in text
    assert "| LSQ init x4 | 1 | 89.00 ± 0.14 (n=2) | -3.00 | [-3.00, -3.00] | 2 | ±0.00 | costs |" \
        in text
    assert "constant lr on row 3: not run." in text


def _build_fashion(tmp_path, started_only: bool) -> Path:
    import warnings

    from report_fixtures import write_fake_runs, write_full_runs

    runs = write_full_runs(write_fake_runs(tmp_path / "runs", ("fashion-mnist",)), started_only)
    with warnings.catch_warnings():  # the fabricated corrupt line's warning is tested elsewhere
        warnings.simplefilter("ignore")
        build_report(runs, tmp_path / "report", execute_notebooks=False,
                     results_dir=tmp_path / "no-results")
    return tmp_path / "report"


def test_index_opens_with_the_full_profile_once_it_has_finished_runs(tmp_path):
    out = _build_fashion(tmp_path, started_only=False)
    markdown = (out / "index.md").read_text()
    html = (out / "site" / "index.html").read_text()
    for text in (markdown, html):
        lead = text.index("Strongest evidence: fashion-mnist · full profile")
        assert lead < text.index("Pages")  # before everything else
        assert "stands in for CIFAR-10" in text and "cannot be downloaded" in text
        assert "fashion-mnist-full-acc-weight-only.png" in text  # its curves
        assert "fashion-mnist-full-acc-full.png" in text
    # The table: mean ± std, drops, the CIFAR-10 rows and Δ; rows in training say so.
    assert ("| 1 | no | [-1,0,1] | none | 0.01 | 8 | 3 | 93.10 ± 0.20 | 89.69 | +3.41 | "
            "+0.10 ± 0.20 | -0.13 | +0.23 |") in markdown
    assert "| 0 (+1 running) | in progress | 89.55 | — | in progress | -0.01 | — |" in markdown
    assert "| — | not run | 87.24 | — | not run | 2.32 | — |" in markdown
    # Each claim with its interval and verdict.
    assert "| drop row 1 | +0.10 | [-0.40, +0.60] | 3 | < 1.00 | holds | — |" in markdown
    assert "row 2 in progress; row 4 not run" in markdown
    assert markdown.count("Strongest evidence") == 1
    # The quick profile is now a secondary page that points to the longer one.
    quick = (out / "fashion-mnist-quick.md").read_text()
    assert "A longer profile of this dataset has runs: [fashion-mnist · full]" in quick
    assert "A longer profile" not in (out / "fashion-mnist-full.md").read_text()
    assert 'href="fashion-mnist-full.html">fashion-mnist · full</a>' in (
        out / "site" / "fashion-mnist-quick.html").read_text()


def test_full_profile_with_only_runs_in_progress_is_named_not_led_with(tmp_path):
    out = _build_fashion(tmp_path, started_only=True)
    markdown = (out / "index.md").read_text()
    assert "*Coming: [fashion-mnist · full](fashion-mnist-full.md), a longer profile, has 2 runs " \
           "in progress and none finished yet" in markdown
    assert "## Strongest evidence: fashion-mnist · quick profile" in markdown
    full = (out / "fashion-mnist-full.md").read_text()
    assert "| 0 | no | none | none | 0.1 | — | 0 (+2 running) | in progress |" in full
    assert "| fashion-mnist/full/row0/seed1 | 1 of 20 |" in full
    assert "stands in for CIFAR-10" in full
    assert "No finished run, no figure." in full


def test_the_lead_is_the_longest_real_profile_and_never_synthetic(full, tmp_path):
    # The fabricated tree: cifar10 at the paper profile outranks the quick and smoke pages.
    import warnings

    from report_fixtures import write_fake_runs

    index = (full.out / "index.md").read_text()
    assert "## Strongest evidence: cifar10 · paper profile" in index
    only_synthetic = write_fake_runs(tmp_path / "runs", ("synthetic",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_report(only_synthetic, tmp_path / "report", execute_notebooks=False)
    assert "Strongest evidence" not in (tmp_path / "report" / "index.md").read_text()


def test_empty_runs_dir_renders_a_page(tmp_path):
    (tmp_path / "none").mkdir()  # empty, not missing: a missing one is an error (test_faults_inputs)
    index = build_report(tmp_path / "none", tmp_path / "report", execute_notebooks=False)
    assert "No run directories found" in index.read_text()
    assert (tmp_path / "report" / "index.md").is_file()
    # The published tables still get their pages: the paper's numbers beside "not run".
    for dataset, published in (("cifar10", "89.69"), ("imagenet", "69.43")):
        page = (tmp_path / "report" / f"{dataset}-paper.md").read_text()
        assert "not run" in page and published in page
        assert (index.parent / f"{dataset}-paper.html").is_file()


def test_main_cli(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    status = main(["--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                   "--no-notebooks"])
    assert status == 0
    assert (tmp_path / "out" / "site" / "index.html").is_file()
    assert "index.html" in capsys.readouterr().out


def test_notebooks_execute_into_the_site(with_notebooks):
    assert with_notebooks.errors == []
    site = with_notebooks.out / "site"
    for kind in ("table", "analysis"):
        notebook = site / "notebooks" / f"{kind}-synthetic-smoke.ipynb"
        html = site / "notebooks" / f"{kind}-synthetic-smoke.html"
        assert notebook.is_file() and html.is_file()
        cells = json.loads(notebook.read_text())["cells"]
        outputs = json.dumps([c.get("outputs", []) for c in cells])
        assert '"output_type": "error"' not in outputs
        assert "image/png" in outputs  # the figures rendered inline
        # papermill ran the notebook with this environment's interpreter (the venv's bin/)
        streams = "".join("".join(o.get("text", "")) for c in cells for o in c.get("outputs", []))
        kernel = next(line for line in streams.splitlines() if line.startswith("kernel: "))
        assert Path(kernel.removeprefix("kernel: ")).parent == Path(sys.executable).parent
        assert "SYNTHETIC DATA" in html.read_text()
        assert f"notebooks/{kind}-synthetic-smoke.html" in (site / "index.html").read_text()
    table = json.dumps(json.loads((site / "notebooks" / "table-synthetic-smoke.ipynb").read_text()))
    assert "10.50" in table and "+1.50" in table  # row 2 of the seed-format table


def test_notebooks_land_in_a_relative_out_dir_and_leave_the_cwd_alone(tmp_path, monkeypatch):
    """``make report`` passes relative paths and runs the notebooks' kernels in threads."""
    import contextlib
    import os
    import shutil
    import time
    import warnings

    import papermill
    from report_fixtures import write_fake_runs

    def execute_like_papermill(source, target, cwd=None, **kwargs):
        # papermill chdirs the whole process to cwd while the kernel runs, and writes the
        # output notebook, relative to the then-current directory, as cells finish.
        with contextlib.chdir(cwd or "."):
            time.sleep(0.2)  # the table and analysis notebooks run at once
            shutil.copy(source, target)

    write_fake_runs(tmp_path / "runs", ("synthetic",))
    monkeypatch.setattr(papermill, "execute_notebook", execute_like_papermill)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():  # the fabricated corrupt line's warning is tested elsewhere
        warnings.simplefilter("ignore")
        build_report(Path("runs"), Path("report"), execute_notebooks=True)
    assert build_report.last_errors == []
    assert os.getcwd() == str(tmp_path)
    for kind in ("table", "analysis"):
        assert (tmp_path / "report" / "site" / "notebooks" / f"{kind}-synthetic-smoke.html").exists()


FINISHED = "2026-11-27T04:16:00Z"  # the fabricated runs' summary.json finished_at


NOISE_RUN = {"verdict": "within seed noise", "final_top1_difference": -0.56, "first_difference": "x",
             "reason": "|Δ final top-1| 0.56 points < seed std 2.43 of row1 (3 seeds)"}
DIFFERS_RUN = {"verdict": "differs", "final_top1_difference": 0.25, "seed_std": None, "seeds": 1,
               "first_difference": "epoch 2: test_top1 70.0 -> 70.25",
               "reason": "|Δ final top-1| 0.25 points, but the reference holds 1 finished seed(s) of row1"}
MADE_ON = "2026-11-27, against the runs above made on Intel Xeon: "


@pytest.mark.parametrize("run, seen, expected", [
    ({"verdict": "identical"}, FINISHED,
     f"retrained at commit abc123 on AMD EPYC, {MADE_ON}all identical bit for bit"),
    (NOISE_RUN, FINISHED, f"retrained at commit abc123 on AMD EPYC, {MADE_ON}1 within seed noise "
                          "(|Δ final top-1| at most 0.56 points, below the seed standard deviation of its row)"),
    (DIFFERS_RUN, FINISHED, f"retrained at commit abc123 on AMD EPYC, {MADE_ON}1 differs (first: "
                            "row1/seed0, |Δ final top-1| 0.25 points, but the reference holds 1 finished seed(s)"),
    # A record from before the CPU kinds (the committed one): the devices, the reference's from the page.
    ({"verdict": "differs", "first_difference": "epoch 2: test_top1 70.0 -> 70.25", "old": True}, FINISHED,
     "retrained at commit abc123 on cpu (x, 1 threads), 2026-11-27, against the runs above made on "
     "cpu (fabricated, 2 threads): 1 differs (first: row1/seed0, differs, epoch 2: test_top1 70.0 -> 70.25)"),
    # The compared run has been retrained since: the check no longer speaks for it.
    ({"verdict": "identical"}, "2026-11-26T00:00:00Z",
     "a reproduction check from 2026-11-27 no longer applies: row1/seed0 changed since"),
    (None, FINISHED, None),  # unreadable: a problem on the page, no reproduction line
])
def test_a_page_shows_what_make_reproduce_found(tmp_path, run, seen, expected):
    import warnings

    from report_fixtures import write_fake_runs

    runs = write_fake_runs(tmp_path / "runs", ("synthetic",))
    run = dict(run or {})
    old = run.pop("old", False)
    record = {"compared_at": "2026-11-27T12:00:00+00:00", "candidate_git_shas": ["abc123"],
              "candidate_devices": ["cpu (x, 1 threads)"], "compared": 1,
              "runs": [{"run": "row1/seed0", "epochs": 3, "reference_finished_at": seen,
                        "max_top1_difference": 0.0, "max_loss_difference": 0.0,
                        "first_difference": "", **run}]}
    if not old:
        record.update(candidate_cpu_kinds=["AMD EPYC"], reference_cpu_kinds=["Intel Xeon"])
    path = runs / "synthetic" / "smoke" / "reproduction.json"
    path.write_text(json.dumps(record) if expected is not None else "{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_report(runs, tmp_path / "report", execute_notebooks=False)
    page = (tmp_path / "report" / "synthetic-smoke.md").read_text()
    html = (tmp_path / "report" / "site" / "synthetic-smoke.html").read_text()
    if expected is None:
        assert "Reproduction:" not in page and "<dt>Reproduction</dt>" not in html
        assert "synthetic/smoke/reproduction.json: unreadable" in html  # the page's problems
    else:
        assert (f"- Reproduction: 1 run (row1/seed0) {expected}" in page
                or f"- Reproduction: {expected}" in page), page
        assert "<dt>Reproduction</dt>" in html and "<code>make reproduce</code>" in html


def test_make_report_runs_real_notebooks_quietly_from_relative_paths(tmp_path):
    """``lsq report`` as make calls it (relative paths), with real kernels: the notebooks land in
    the site and the kernels' own log lines stay out of the console."""
    import subprocess
    import warnings

    from report_fixtures import write_fake_runs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_fake_runs(tmp_path / "runs", ("synthetic",))
    result = subprocess.run([sys.executable, "-m", "lsq", "report", "--runs-dir", "runs", "--out", "report"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "notebook error" not in result.stderr
    assert "IPKernelApp" not in result.stderr, result.stderr
    for kind in ("table", "analysis"):
        assert (tmp_path / "report" / "site" / "notebooks" / f"{kind}-synthetic-smoke.html").exists()
