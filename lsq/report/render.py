"""Render the report: markdown pages in ``report/`` and a static site in ``report/site/``.

``build_report(runs_dir)`` reads the runs once (``collect.load_runs``), builds every table as a
DataFrame, draws every figure, and renders each DataFrame through jinja2 twice — once as
markdown, once as HTML — so the two cannot disagree. Notebooks in ``notebooks/`` are executed with
papermill per page (they call the same ``lsq.report`` functions) and converted to HTML.

The site uses relative links only and no external resource, so it opens from disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lsq.errors import ConfigError
from lsq.experiments import LEVELLED_POINTS, TABLES, get_table
from lsq.report import (analysis, audit, claims, convergence, deployed, figures, run_tables, speed,
                        tables)
from lsq.report.collect import Runs, load_runs, profile_rank
from lsq.report.html import TEMPLATES, environment
from lsq.report.notebooks import notebook_body, pygments_css, run_notebooks
from lsq.report.provenance import (REPRODUCTION, data_text, distinct, epochs_text, implied_note,
                                   own_runs, page_wall_text, reproduction_text, short_epochs,
                                   wall_text)

SYNTHETIC_BANNER = "SYNTHETIC DATA: numbers measure nothing about LSQ"
DEPLOYED_NOTE = (
    "the row's ONNX graph run by ONNX Runtime (CPU) on the whole test set, mean over its deployed "
    "seeds, with its mean difference to the run's own test top-1 (test_acc); same class = the share of test images "
    "that get the PyTorch model's class (the lowest over seeds); export = the integer export "
    "(codes and step sizes, export.pt) against the same model in float32. Per run: the Deployed "
    "section below.")
INTERPRETATION = (
    "With quan_lr = yes the first convolution's weights are quantized but its input — the "
    "normalised image — stays float, and the last linear layer's weights and input are "
    "quantized (at 8 bits in the LSQ paper's table: w[-128..127], a[0..255]); with quan_lr = no "
    "both layers stay fully float. In the seed's table weights are ternary [-1,0,1]; "
    "activations (ReLU outputs, so unsigned) use 2-bit levels [0,1,2,3]."
)
CLAIMS_NOTE = (
    "Each comparison is a difference of final top-1 (points) paired by seed, with its mean and "
    "95 % Student-t interval over the seeds that have both rows. A claim holds when the whole "
    "interval of every comparison lies on the claim's side of the threshold, does not hold when "
    "one lies wholly on the other side, and is inconclusive otherwise. \"Seeds to settle\" is "
    "the smallest number of seeds whose interval would clear the threshold were the mean and "
    "spread to stay as observed (— with one seed, no spread, a mean on the threshold, or part of "
    "the claim not run). \"On the paper's numbers\" applies the same threshold to the published "
    "values, one number each, so without an interval."
)
ABLATION_NOTE = (
    "Δ is paired per seed (setting − baseline, top-1 points) with its 95 % Student-t interval; a "
    "setting costs or gains accuracy when the whole interval lies beyond the threshold on one "
    "side, and is inconclusive when the interval reaches across it, with the number of seeds "
    "that would settle it at the observed mean and spread."
)
PAPER_URL = "https://arxiv.org/abs/1902.08153"
MARKER = ".lsq-report"  # marks a site folder as generated, so a rebuild may delete it


@dataclass
class FigureLink:
    title: str
    file: str  # relative to the site root
    caption: str


@dataclass
class Page:
    """Everything one (dataset, profile) page shows; the templates only lay it out."""

    dataset: str
    profile: str
    runs: Runs
    description: str
    synthetic: bool
    epochs_text: str
    data_text: str
    results: pd.DataFrame
    implied_note: str
    claims: pd.DataFrame
    in_progress: pd.DataFrame
    provenance: pd.DataFrame
    compute: pd.DataFrame
    shas: list[str]
    torch_versions: list[str]
    devices: list[str]
    wall_text: str
    figures: list[FigureLink] = field(default_factory=list)
    has_analysis: bool = False
    analysis: list[dict] = field(default_factory=list)
    analysis_figures: dict[str, list[FigureLink]] = field(default_factory=dict)
    notebooks: dict[str, str] = field(default_factory=dict)  # kind -> html file (site-relative)
    problems: list[str] = field(default_factory=list)
    diverged: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_tables.diverged_table
    deployed: pd.DataFrame = field(default_factory=pd.DataFrame)  # runs evaluated by ONNX Runtime
    audit: pd.DataFrame = field(default_factory=pd.DataFrame)  # lsq.report.audit
    convergence: pd.DataFrame = field(default_factory=pd.DataFrame)  # lsq.report.convergence
    reproduction: str = ""  # what `make reproduce` found, from <runs>/<dataset>/<profile>/reproduction.json
    stand_in: str = ""  # why this dataset stands in for a published one (tables.stand_in_note)
    control_note: str = ""  # where the drops at equal training are (analysis.control_note)
    longer: list["Page"] = field(default_factory=list)  # this dataset's longer profiles with runs

    @property
    def claims_source(self) -> str:
        """Whose claims the page checks: the LSQ paper's for its table, else the seed README's."""
        return "the LSQ paper" if get_table(self.dataset).source == "paper" else "the seed README"

    @property
    def published_note(self) -> str:
        """What the published numbers are, or why some are left out (``Table.published_note``)."""
        reference = tables.reference_table(self.dataset)
        return reference.published_note if reference is not None else ""

    @property
    def audit_source(self) -> str:
        return audit.source(self.dataset)

    @property
    def slug(self) -> str:
        return f"{self.dataset}-{self.profile}"

    @property
    def title(self) -> str:
        return f"{self.dataset} · {self.profile} profile"


def build_report(runs_dir: str | Path = "runs", out_dir: str | Path = "report", *,
                 execute_notebooks: bool = True,
                 results_dir: str | Path = speed.DEFAULT_RESULTS) -> Path:
    """Write ``out_dir/*.md`` and ``out_dir/site/`` from every run under ``runs_dir``, with the
    measured speed (``results_dir``, see :mod:`lsq.report.speed`) on its own Speed page.

    Returns the path of ``out_dir/site/index.html``. Notebook failures do not stop the report:
    they are listed on the index page and in ``build_report.last_errors``. A ``runs_dir`` that
    is not a directory raises :class:`ConfigError` before anything is written (a mistyped path
    must not render, or replace a site with, an empty report); an empty one renders.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if not runs_dir.is_dir():
        raise ConfigError(
            f"runs directory {runs_dir} {'is not a directory' if runs_dir.exists() else 'does not exist'}; "
            "pass --runs-dir the folder holding <dataset>/<profile>/row<k>/seed<s>/ (default: runs)")
    site = out_dir / "site"
    if (site / MARKER).exists():
        # A site this function wrote before: start clean, so pages of deleted runs disappear.
        shutil.rmtree(site)
    (site / "figures").mkdir(parents=True, exist_ok=True)
    _write(site / MARKER, "written by lsq.report.build_report; rebuilding deletes this folder\n")
    runs = load_runs(runs_dir)
    pages, skipped = [], []
    listed = runs.pages()
    for name, table in TABLES.items():
        # A published table with no run at all still gets its page: the paper's numbers beside
        # "not run", so a reader sees what is missing instead of nothing.
        if table.has_published and all(dataset != name for dataset, _ in listed):
            listed.append((name, "paper"))
    for dataset, profile in listed:
        if dataset not in TABLES:
            skipped.append(f"{runs_dir / dataset}: unknown dataset, not in lsq.experiments.TABLES")
            continue
        pages.append(_page(runs.select(dataset, profile)))
    for page in pages:
        page.longer = [other for other in pages if other.dataset == page.dataset
                       and profile_rank(other.profile) < profile_rank(page.profile)]
        _draw_figures(page, site)
    errors: list[str] = []
    if execute_notebooks:
        errors = run_notebooks(pages, runs_dir, site)
    build_report.last_errors = errors
    _write_pages(runs, pages, out_dir, site, skipped, errors, Path(results_dir))
    return site / "index.html"


build_report.last_errors = []


# --- building the pages' content -------------------------------------------------------------


def _page(runs: Runs) -> Page:
    dataset, profile = runs.dataset, runs.profile
    table = get_table(dataset)
    summaries = runs.summaries
    numbers = tables.results_table(summaries, runs.in_progress, dataset, runs.diverged)
    deployments = deployed.deployed_records(runs.root, summaries)
    kinds = set(summaries["data_kind"].dropna())
    page = Page(
        dataset=dataset, profile=profile, runs=runs, description=table.description,
        synthetic=dataset == "synthetic" or "synthetic" in kinds or table.data_kind == "synthetic",
        epochs_text=epochs_text(summaries, dataset),
        data_text=data_text(summaries, kinds),
        results=deployed.add_row_columns(
            tables.format_results_table(numbers, dataset), deployments,
            {int(r["ID"]): int(r[f"{table.metrics[0]}_n"]) for _, r in numbers.iterrows()}),
        implied_note=implied_note(dataset),
        claims=claims.claims_table(claims.evaluate_claims(summaries, dataset, runs.in_progress)),
        in_progress=run_tables.in_progress_table(runs.in_progress),
        diverged=run_tables.diverged_table(runs.diverged),
        provenance=run_tables.provenance_table(summaries),
        compute=run_tables.compute_totals(own_runs(runs)),
        shas=distinct(summaries["git_sha"]), torch_versions=distinct(summaries["torch_version"]),
        devices=distinct(summaries["device"]),
        wall_text=page_wall_text(runs),
        has_analysis=analysis.has_ablations(summaries, runs.in_progress, runs.diverged),
        problems=[p for p in runs.problems if p.startswith(f"{dataset}/{profile}/")],
        stand_in=tables.stand_in_note(dataset),
        control_note=analysis.control_note(summaries),
        deployed=deployed.runs_table(deployments),
        audit=audit.audit_table(runs.root, dataset, summaries),
        convergence=convergence.last_epoch_changes(runs.epochs),
    )
    reproduction = runs.root / dataset / profile / REPRODUCTION
    if reproduction.exists():
        try:
            page.reproduction = reproduction_text(json.loads(reproduction.read_text()), summaries,
                                                   f"{dataset}/{profile}")
        except (ValueError, KeyError, TypeError) as error:
            page.problems.append(f"{dataset}/{profile}/{REPRODUCTION}: unreadable ({error!r}), not shown")
    if page.has_analysis:
        for factor, title in analysis.factors_for(dataset, summaries, runs.in_progress,
                                                  runs.diverged).items():
            numbers = analysis.ablation_table(summaries, runs.in_progress, factor, runs.diverged)
            section = {
                "factor": factor, "title": title, "advice": analysis.ADVICE[factor],
                "paper": analysis.paper_ablation_note(factor),
                "table": analysis.format_ablation_table(numbers),
                "verdicts": analysis.verdicts(numbers),
            }
            if factor == analysis.CONTROL:
                drops = analysis.control_drops(summaries, dataset)
                section["drops"] = analysis.format_control_drops(drops)
                section["drop_sentences"] = analysis.control_sentences(drops)
            page.analysis.append(section)
    return page


def _draw_figures(page: Page, site: Path) -> None:
    runs, slug = page.runs, page.slug
    wanted = [
        ("acc-weight-only", "Test accuracy, weight-only quantization",
         lambda: figures.accuracy_curves(runs, (1, 2)),
         "Rows 1 and 2 (ternary weights, float activations) against the float baseline; "
         "mean over seeds, band ±1 std."),
        ("acc-full", "Test accuracy, weights and activations quantized",
         lambda: figures.accuracy_curves(runs, (3, 4)),
         "Rows 3 and 4 (ternary weights, 2-bit activations) against the float baseline."),
        ("step-sizes", "Step-size trajectories",
         lambda: figures.step_size_trajectories(runs),
         "Learned step size s of representative layers (evenly spaced in model order), mean "
         "over seeds, log scale."),
        ("sparsity", "Weight sparsity",
         lambda: figures.weight_sparsity(runs),
         "Fraction of weight codes equal to zero, over all quantized layers."),
    ]
    if figures.precision_rows(page.dataset):
        # The paper's table: one precision per row, so a drop-against-bits figure and one
        # accuracy figure for all rows instead of the seed's weight-only / full split.
        wanted[:2] = [
            ("precision-drop", "Top-1 drop against precision",
             lambda: figures.precision_drop(runs),
             "Float − row top-1, paired by seed (bars: mean ±1 std, dots: seeds; hollow "
             "diamonds: the row distilled from its float baseline). The paper's ImageNet drops "
             "are not drawn: its numbers could not be confirmed (see the note above)."),
            ("acc-all", "Test accuracy, every precision",
             lambda: figures.accuracy_curves(runs, (1, 2, 3, 4)),
             "Rows 1-4 (w/a 2/2, 3/3, 4/4, 8/8; first and last layers at 8 bits) against the "
             "float baseline; mean over seeds, band ±1 std."),
        ]
    if runs.summaries.empty:
        return
    for name, title, draw, caption in wanted:
        page.figures.append(_save(draw(), site, f"{slug}-{name}.png", title, caption))
    if page.has_analysis:
        for factor, title in analysis.factors_for(page.dataset, runs.summaries,
                                                  runs.in_progress, runs.diverged).items():
            items = [_save(figures.ablation_final_accuracy(runs, factor), site,
                           f"{slug}-ablation-{factor}.png", title,
                           "Final test top-1 per setting (bars: mean, dots: seeds, ±1 std); grey "
                           "is the baseline setting, the plain table run.")]
            if factor == "step_init":
                items.append(_save(figures.ablation_nonzero_fraction(runs, factor), site,
                                   f"{slug}-ablation-{factor}-nonzero.png",
                                   "Nonzero weights over training",
                                   "Fraction of nonzero ternary weights per epoch, per init."))
            page.analysis_figures[factor] = items


def _save(fig, site: Path, name: str, title: str, caption: str) -> FigureLink:
    fig.savefig(site / "figures" / name, dpi=130)
    return FigureLink(title, f"figures/{name}", caption)


# --- notebooks --------------------------------------------------------------------------------


# --- writing ----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _write_pages(runs: Runs, pages: list[Page], out_dir: Path, site: Path,
                 skipped: list[str], errors: list[str], results_dir: Path) -> None:
    html, md = environment("html"), environment("md")
    shutil.copyfile(TEMPLATES / "style.css", site / "style.css")
    _write(site / "pygments.css", pygments_css())
    summaries = runs.summaries
    common = dict(
        banner=SYNTHETIC_BANNER, interpretation=INTERPRETATION, paper_url=PAPER_URL,
        claims_note=CLAIMS_NOTE, ablation_note=ABLATION_NOTE, deployed_note=DEPLOYED_NOTE,
        levelled_points=LEVELLED_POINTS,
        pages=pages, generated_from=str(runs.root), root="",
    )
    lead = lead_page(pages)
    index = dict(
        common, overview=_overview(pages), lead=lead, lead_figures=_lead_figures(lead),
        pending=pending_pages(pages, lead),
        cross_claims=claims.claims_table([claims.first_last_across_datasets(summaries)]),
        compute=run_tables.compute_totals(summaries),
        in_progress=run_tables.in_progress_table(runs.in_progress),
        shas=distinct(summaries["git_sha"]), torch_versions=distinct(summaries["torch_version"]),
        devices=distinct(summaries["device"]), wall_text=wall_text(summaries),
        problems=runs.problems + skipped, errors=errors,
        speed_checks=[folder.name for folder in speed.latest_checks(results_dir)],
        any_synthetic=any(p.synthetic for p in pages),
        no_runs=summaries.empty and runs.in_progress.empty,
        published_notes=[(t.description, tables.implied_baseline_note(name))
                         for name, t in TABLES.items() if t.has_published],
    )
    _write(site / "index.html", html.get_template("index.html.j2").render(index))
    _write(out_dir / "index.md", md.get_template("index.md.j2").render(index, site="site/"))
    measured = dict(
        common, speed_bench=speed.bench_table(results_dir),
        speed_tables=speed.table_timings(results_dir), speed_walls=speed.table_walls(results_dir),
        speed_checks=[name for name, _ in speed.checks(results_dir)],
        speed_left_out=speed.left_out(results_dir), results_dir=str(results_dir),
    )
    _write(site / "speed.html", html.get_template("speed.html.j2").render(measured))
    _write(out_dir / "speed.md", md.get_template("speed.md.j2").render(measured, site="site/"))
    for page in pages:
        context = dict(common, page=page)
        _write(site / f"{page.slug}.html", html.get_template("dataset.html.j2").render(context))
        _write(out_dir / f"{page.slug}.md",
               md.get_template("dataset.md.j2").render(context, site="site/"))
        if page.has_analysis:
            _write(site / f"{page.slug}-analysis.html",
                   html.get_template("analysis.html.j2").render(context))
            _write(out_dir / f"{page.slug}-analysis.md",
                   md.get_template("analysis.md.j2").render(context, site="site/"))
        for kind, file in page.notebooks.items():
            notebook = site / file.replace(".html", ".ipynb")
            _write(site / file, html.get_template("notebook.html.j2").render(
                dict(common, root="../"), page=page, kind=kind, body=notebook_body(notebook),
                ipynb=notebook.name))


def lead_page(pages: list[Page]) -> Page | None:
    """The page the index opens with: the strongest real evidence the runs hold.

    Among pages of real data with at least one finished table run, the longest profile
    (``lsq.experiments.PROFILES``) wins; on a tie, a dataset with a published table before one that
    stands in for it; then the page order. None when no real run has finished.
    """
    candidates = [page for page in pages if not page.synthetic
                  and not tables.plain_runs(page.runs.summaries).empty]
    if not candidates:
        return None
    return min(candidates, key=lambda page: (profile_rank(page.profile),
                                             not get_table(page.dataset).has_published,
                                             pages.index(page)))


def pending_pages(pages: list[Page], lead: Page | None) -> list[Page]:
    """Real-data pages of a longer profile than the lead's whose runs are all still in
    progress: the stronger evidence that is coming, which the index names above the lead."""
    rank = profile_rank(lead.profile) if lead is not None else float("inf")
    return [page for page in pages if not page.synthetic and page.runs.summaries.empty
            and not page.runs.in_progress.empty and profile_rank(page.profile) < rank]


LEAD_FIGURES = ("acc-weight-only", "acc-full")  # the curves the index shows beside the lead table


def _lead_figures(page: Page | None) -> list[FigureLink]:
    if page is None:
        return []
    return [item for item in page.figures
            if any(item.file.endswith(f"{page.slug}-{name}.png") for name in LEAD_FIGURES)]


def _overview(pages: list[Page]) -> pd.DataFrame:
    rows = []
    for page in pages:
        s, own = page.runs.summaries, own_runs(page.runs)
        rows.append({
            "page": page.slug, "data": "synthetic" if page.synthetic else "real",
            "profile": page.profile, "epochs (float / quantized)": short_epochs(s),
            "finished runs": str(len(own)),
            "in progress": str(len(page.runs.in_progress)),
            "diverged": str(len(page.runs.diverged)),
            "seeds": str(s["seed"].nunique()) if len(s) else "0",
            "device-hours": f"{own['wall_seconds'].sum() / 3600:.3f}",
        })
    return pd.DataFrame(rows, columns=["page", "data", "profile", "epochs (float / quantized)",
                                       "finished runs", "in progress", "diverged", "seeds",
                                       "device-hours"])


# --- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m lsq report``: render the report from whatever runs exist."""
    parser = argparse.ArgumentParser(
        prog="python -m lsq report",
        description="Render report/*.md and the static site report/site/ from the run "
                    "directories; rows that were not run show as 'not run'.")
    parser.add_argument("--runs-dir", default="runs", help="runs directory to read (default: runs)")
    parser.add_argument("--out", default="report", help="output directory (default: report)")
    parser.add_argument("--no-notebooks", action="store_true",
                        help="skip executing the papermill notebooks (faster)")
    parser.add_argument("--results-dir", default=str(speed.DEFAULT_RESULTS),
                        help="measured speed to show (default: benchmarks/results)")
    args = parser.parse_args(argv)
    index = build_report(args.runs_dir, args.out, execute_notebooks=not args.no_notebooks,
                         results_dir=args.results_dir)
    print(f"report: {Path(args.out) / 'index.md'} and {index}")
    for error in build_report.last_errors:
        print(f"notebook error: {error}", file=sys.stderr)
    return 1 if build_report.last_errors else 0
