"""Render the report: markdown pages in ``report/`` and a static site in ``report/site/``.

``build_report(runs_dir)`` reads the runs once (``collect.load_runs``), builds every table as a
DataFrame, draws every figure, and renders each DataFrame through jinja2 twice — once as
markdown, once as HTML — so the two cannot disagree. Notebooks in ``notebooks/`` are executed with
papermill per page (they call the same ``lsq.report`` functions) and converted to HTML.

The site uses relative links only and no external resource, so it opens from disk.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import markupsafe
import pandas as pd

from lsq.experiments import TABLES, get_table
from lsq.report import analysis, claims, figures, speed, tables
from lsq.report.collect import Runs, load_runs, profile_rank

TEMPLATES = Path(__file__).parent / "templates"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SYNTHETIC_BANNER = "SYNTHETIC DATA: numbers measure nothing about LSQ"
INTERPRETATION = (
    "With quan_lr = yes the first convolution's weights are quantized but its input — the "
    "normalised image — stays float, and the last linear layer's weights and input are "
    "quantized; with quan_lr = no both layers stay fully float. Weights are ternary [-1,0,1]; "
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
    reproduction: str = ""  # what `make reproduce` found, from <runs>/<dataset>/<profile>/reproduction.json
    stand_in: str = ""  # why this dataset stands in for a published one (tables.stand_in_note)
    longer: list["Page"] = field(default_factory=list)  # this dataset's longer profiles with runs

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
    they are listed on the index page and in ``build_report.last_errors``.
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
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
        errors = _run_notebooks(pages, runs_dir, site)
    build_report.last_errors = errors
    _write_pages(runs, pages, out_dir, site, skipped, errors, Path(results_dir))
    return site / "index.html"


build_report.last_errors = []


# --- building the pages' content -------------------------------------------------------------


def _page(runs: Runs) -> Page:
    dataset, profile = runs.dataset, runs.profile
    table = get_table(dataset)
    summaries = runs.summaries
    numbers = tables.results_table(summaries, runs.in_progress, dataset)
    kinds = set(summaries["data_kind"].dropna())
    page = Page(
        dataset=dataset, profile=profile, runs=runs, description=table.description,
        synthetic=dataset == "synthetic" or "synthetic" in kinds or table.data_kind == "synthetic",
        epochs_text=_epochs_text(summaries, dataset),
        data_text=_data_text(summaries, kinds),
        results=tables.format_results_table(numbers, dataset),
        implied_note=_implied_note(dataset),
        claims=claims.claims_table(claims.evaluate_claims(summaries, dataset, runs.in_progress)),
        in_progress=tables.in_progress_table(runs.in_progress),
        provenance=tables.provenance_table(summaries),
        compute=tables.compute_totals(summaries),
        shas=_distinct(summaries["git_sha"]), torch_versions=_distinct(summaries["torch_version"]),
        devices=_distinct(summaries["device"]),
        wall_text=_wall_text(summaries),
        has_analysis=analysis.has_ablations(summaries, runs.in_progress),
        problems=[p for p in runs.problems if p.startswith(f"{dataset}/{profile}/")],
        stand_in=tables.stand_in_note(dataset),
    )
    reproduction = runs.root / dataset / profile / REPRODUCTION
    if reproduction.exists():
        try:
            page.reproduction = _reproduction_text(json.loads(reproduction.read_text()), summaries,
                                                   f"{dataset}/{profile}")
        except (ValueError, KeyError, TypeError) as error:
            page.problems.append(f"{dataset}/{profile}/{REPRODUCTION}: unreadable ({error!r}), not shown")
    if page.has_analysis:
        for factor, title in analysis.FACTORS.items():
            numbers = analysis.ablation_table(summaries, runs.in_progress, factor)
            page.analysis.append({
                "factor": factor, "title": title, "advice": analysis.SEED_ADVICE[factor],
                "table": analysis.format_ablation_table(numbers),
                "verdicts": analysis.verdicts(numbers),
            })
    return page


def _implied_note(dataset: str) -> str:
    """The implied published float baseline of the table the page is compared with."""
    reference = tables.reference_table(dataset)
    if reference is None:
        return ""
    note = tables.implied_baseline_note(reference.dataset)
    return note if reference.dataset == dataset else f"For the {reference.name} rows: {note}"


REPRODUCTION = "reproduction.json"  # written by `make reproduce` (lsq compare-runs --json)


def _reproduction_text(record: dict, summaries: pd.DataFrame, prefix: str) -> str:
    """One sentence on a retraining of some of the page's runs (``lsq.compare.record``): which
    kind of match it found (identical, within seed noise, differs) and the CPU kinds of both
    sides; or on its being stale: a run it compared has been retrained or removed since."""
    target = "make reproduce-full" if prefix.endswith("/full") else "make reproduce"
    finished = dict(zip(summaries["path"], summaries["finished_at"]))
    changed = [run["run"] for run in record["runs"]
               if finished.get(f"{prefix}/{run['run']}") != run.get("reference_finished_at")]
    if changed:
        return (f"a reproduction check from {record['compared_at'][:10]} no longer applies: "
                f"{', '.join(changed)} changed since (retrained, removed, or compared before the "
                f"check recorded which run it saw); run `{target}` again.")
    # Records from before the CPU kinds were recorded name the devices of the retrained runs
    # only; the page's summaries have the reference's.
    compared = summaries[summaries["path"].isin([f"{prefix}/{run['run']}" for run in record["runs"]])]
    made_on = ", ".join(record.get("reference_cpu_kinds") or _distinct(compared["device"])) or "?"
    retrained_on = ", ".join(record.get("candidate_cpu_kinds") or record["candidate_devices"]) or "?"
    where = (f"retrained at commit {', '.join(record['candidate_git_shas']) or '?'} on "
             f"{retrained_on}, {record['compared_at'][:10]}, against the runs above made on {made_on}")
    names = ", ".join(run["run"] for run in record["runs"])
    count = len(record["runs"])
    runs = f"{count} run{'' if count == 1 else 's'}"
    identical = [run for run in record["runs"] if run["verdict"] == "identical"]
    noise = [run for run in record["runs"] if run["verdict"] == "within seed noise"]
    other = [run for run in record["runs"] if run not in identical and run not in noise]
    if len(identical) == count:
        found = "all identical bit for bit, every epoch record and summary result"
    else:
        parts = [f"{len(identical)} identical bit for bit"] if identical else []
        if noise:
            largest = max(abs(run["final_top1_difference"]) for run in noise)
            parts.append(f"{len(noise)} within seed noise (|Δ final top-1| at most {largest:.2f} "
                         "points, below the seed standard deviation of its row)")
        if other:
            first = other[0]
            why = first.get("reason") or ", ".join(filter(None, (first["verdict"], first["first_difference"])))
            parts.append(f"{len(other)} differ{'s' if len(other) == 1 else ''} (first: {first['run']}, {why})")
        found = "; ".join(parts)
    return f"{runs} ({names}) {where}: {found} (`{target}`)."


def _distinct(values: pd.Series) -> list[str]:
    return sorted({str(v) for v in values.dropna()})


def _epoch_counts(frame: pd.DataFrame) -> str:
    """The distinct epoch counts of some runs, "4" or "2/3" ("—" for none)."""
    return "/".join(str(int(v)) for v in sorted(set(frame["epochs"].dropna()))) or "—"


def _epochs_text(summaries: pd.DataFrame, dataset: str) -> str:
    plain = summaries[summaries["ablation"] == ""]
    if plain.empty:
        return "no finished run yet"
    parts = []
    base, quantized = plain[plain["row"] == 0], plain[plain["row"] > 0]
    if len(base):
        counts = _epoch_counts(base)
        note = " (pretrained weights, evaluated only)" if counts == "0" else ""
        parts.append(f"float baseline {counts} epoch{'' if counts == '1' else 's'}{note}")
    if len(quantized):
        counts = _epoch_counts(quantized)
        parts.append(f"quantized rows {counts} epoch{'' if counts == '1' else 's'}")
    return "; ".join(parts) + f" (the paper: {get_table(dataset).row(1).epoch})"


def _short_epochs(summaries: pd.DataFrame) -> str:
    plain = summaries[summaries["ablation"] == ""]
    return f"{_epoch_counts(plain[plain['row'] == 0])} / {_epoch_counts(plain[plain['row'] > 0])}"


def _data_text(summaries: pd.DataFrame, kinds: set) -> str:
    if summaries.empty:
        return "—"
    kind = "synthetic" if "synthetic" in kinds else "/".join(sorted(kinds)) or "unknown"
    train = _distinct(summaries["train_images"].map(lambda v: f"{int(v)}" if pd.notna(v) else None))
    test = _distinct(summaries["test_images"].map(lambda v: f"{int(v)}" if pd.notna(v) else None))
    return f"{kind}; {'/'.join(train) or '—'} train images, {'/'.join(test) or '—'} test images"


def _wall_text(summaries: pd.DataFrame) -> str:
    if summaries.empty:
        return "—"
    wall = summaries["wall_seconds"].dropna()
    total, median = tables.format_duration(wall.sum()), tables.format_duration(wall.median())
    return (f"{len(summaries)} finished runs, {total} in total ({wall.sum() / 3600:.3f} "
            f"device-hours), median {median} per run")


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
         "Fraction of ternary weight codes equal to zero, over all quantized layers."),
    ]
    if runs.summaries.empty:
        return
    for name, title, draw, caption in wanted:
        page.figures.append(_save(draw(), site, f"{slug}-{name}.png", title, caption))
    if page.has_analysis:
        for factor, title in analysis.FACTORS.items():
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


def _run_notebooks(pages: list[Page], runs_dir: Path, site: Path) -> list[str]:
    """Execute notebooks/table.ipynb per page and notebooks/analysis.ipynb per analysis page.

    Kernels run side by side (one per CPU, at most 4): each spends most of its time importing,
    so the report's slowest step shrinks with the cores available.
    """
    if not NOTEBOOKS.is_dir():
        return [f"{NOTEBOOKS} not found: notebooks were not executed"]
    out = site / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    # A page without runs (a published table nobody trained) has nothing for a notebook to show.
    jobs = [(page, kind) for page in pages if not page.runs.summaries.empty
            for kind in ["table"] + (["analysis"] if page.has_analysis else [])]
    workers = max(1, min(len(jobs), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda job: _run_notebook(*job, runs_dir, out), jobs))
    errors = []
    for (page, kind), (target, error) in zip(jobs, results):
        if error:
            errors.append(error)
        if target.exists():
            page.notebooks[kind] = f"notebooks/{target.stem}.html"
    return errors


@functools.cache
def _quiet_kernel_manager():
    """nbclient's kernel manager with the kernel process's own stderr discarded: its log lines
    ("running over TCP without encryption", "KeyboardInterrupt caught in kernel" at shutdown)
    are noise in ``make report``'s output. What the notebook's cells print still reaches the
    notebook, and a kernel that dies still fails the notebook, which the index lists."""
    import subprocess

    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw.setdefault("stderr", subprocess.DEVNULL)
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return QuietKernelManager


def _run_notebook(page: Page, kind: str, runs_dir: Path, out: Path) -> tuple[Path, str]:
    import papermill  # here, not at import: the rest of the report must work without a kernel

    source = NOTEBOOKS / f"{kind}.ipynb"
    target = (out / f"{kind}-{page.slug}.ipynb").resolve()
    try:
        # kernel_name "python3": jupyter_client runs a "python" kernelspec with sys.executable,
        # so the kernel is this interpreter (the venv) whatever kernelspecs the machine has.
        # No cwd=: papermill would chdir the whole process, and with kernels in threads one
        # thread's chdir sent another's relative output path astray (a make smoke run failed
        # with "output folder report/site/notebooks doesn't exist"). Every path is absolute.
        papermill.execute_notebook(
            str(source), str(target), kernel_name="python3", progress_bar=False,
            parameters={"dataset": page.dataset, "profile": page.profile,
                        "runs_dir": str(runs_dir.resolve())},
            kernel_manager_class=_quiet_kernel_manager(),
        )
    except Exception as error:  # a failed notebook is reported on the index, not fatal
        last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        return target, f"{source.name} for {page.slug}: {type(error).__name__}: {last}"
    return target, ""


def _notebook_body(path: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    # The "basic" template gives the cells only: no CDN scripts (require.js, MathJax), so the
    # page works from disk; the site's own stylesheet lays it out.
    exporter = HTMLExporter(template_name="basic")
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    return body


def _pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".highlight")


# --- writing ----------------------------------------------------------------------------------


def _environment(kind: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html.j2"]) if kind == "html" else False,
        trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["cell_class"] = _cell_class
    env.filters["md_cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    env.filters["md_inline"] = _code_spans
    env.globals["header_rows"] = header_rows
    env.globals["flat_columns"] = lambda frame: [tables.flat_name(c) for c in frame.columns]
    return env


def _code_spans(text: str) -> markupsafe.Markup:
    """Markdown's `code` spans as HTML <code>, everything else escaped."""
    parts = str(text).split("`")
    return markupsafe.Markup("").join(
        markupsafe.Markup("<code>{}</code>").format(part) if index % 2 else markupsafe.escape(part)
        for index, part in enumerate(parts))


def header_rows(frame: pd.DataFrame) -> list[list[dict]]:
    """HTML header cells of a frame: one row, or two for (group, sub) columns — a group spans
    its subs ("test_acc" over measured | paper | Δ), a column with no sub spans both rows."""
    columns = list(frame.columns)
    if not isinstance(frame.columns, pd.MultiIndex) or all(sub == "" for _, sub in columns):
        names = [c[0] if isinstance(c, tuple) else c for c in columns]
        return [[{"label": str(n), "colspan": 1, "rowspan": 1, "group": False} for n in names]]
    top, bottom = [], []
    for group, sub in columns:
        if sub == "":
            top.append({"label": group, "colspan": 1, "rowspan": 2, "group": False})
        elif top and top[-1]["label"] == group and top[-1]["rowspan"] == 1:
            top[-1]["colspan"] += 1
            bottom.append({"label": sub, "colspan": 1, "rowspan": 1, "group": False})
        else:
            top.append({"label": group, "colspan": 1, "rowspan": 1, "group": True})
            bottom.append({"label": sub, "colspan": 1, "rowspan": 1, "group": False})
    return [top, bottom]


# A number cell: "92.20", "+0.10 ± 0.20 (n=3)", "0.31 (unpaired)", "2 (paper 90)", "12.5%",
# optionally "(+1 running)", or an interval "[-0.40, +0.60]"; anything else (sentences starting
# with a digit) stays text.
_NUMBER_CELL = re.compile(
    r"^([+\-]?\d[\d.,]*%?(–\d+)?( ± [\d.]+)?( \((n=\d+|unpaired|paper \d+)\))?"
    r"( (s|min|h))?( \(\+\d+ running\))?|\[[+\-]?[\d.]+, [+\-]?[\d.]+\])$"
)
_VERDICT_CLASS = {
    claims.HOLDS: "v-holds", claims.FAILS: "v-fails", claims.INCONCLUSIVE: "v-none",
    claims.NOT_MEASURED: "v-none", analysis.COSTS: "v-settled", analysis.GAINS: "v-settled",
    analysis.NO_EFFECT: "v-settled",
}


def _cell_class(value) -> str:
    """CSS class of a table cell: numbers right-aligned, missing values muted, verdicts coloured."""
    text = str(value)
    verdict = text.split(" (", 1)[0]  # "holds (CIFAR-10 table)" is a verdict too
    if verdict in _VERDICT_CLASS:
        return "verdict " + _VERDICT_CLASS[verdict]
    if text.startswith(("not run", "in progress", "—", "reference")):
        return "na"
    return "num" if _NUMBER_CELL.match(text) else ""


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _write_pages(runs: Runs, pages: list[Page], out_dir: Path, site: Path,
                 skipped: list[str], errors: list[str], results_dir: Path) -> None:
    html, md = _environment("html"), _environment("md")
    shutil.copyfile(TEMPLATES / "style.css", site / "style.css")
    _write(site / "pygments.css", _pygments_css())
    summaries = runs.summaries
    common = dict(
        banner=SYNTHETIC_BANNER, interpretation=INTERPRETATION, paper_url=PAPER_URL,
        claims_note=CLAIMS_NOTE, ablation_note=ABLATION_NOTE,
        pages=pages, generated_from=str(runs.root), root="",
    )
    lead = lead_page(pages)
    index = dict(
        common, overview=_overview(pages), lead=lead, lead_figures=_lead_figures(lead),
        pending=pending_pages(pages, lead),
        cross_claims=claims.claims_table([claims.first_last_across_datasets(summaries)]),
        compute=tables.compute_totals(summaries),
        in_progress=tables.in_progress_table(runs.in_progress),
        shas=_distinct(summaries["git_sha"]), torch_versions=_distinct(summaries["torch_version"]),
        devices=_distinct(summaries["device"]), wall_text=_wall_text(summaries),
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
                dict(common, root="../"), page=page, kind=kind, body=_notebook_body(notebook),
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
        s = page.runs.summaries
        rows.append({
            "page": page.slug, "data": "synthetic" if page.synthetic else "real",
            "profile": page.profile, "epochs (float / quantized)": _short_epochs(s),
            "finished runs": str(len(s)), "in progress": str(len(page.runs.in_progress)),
            "seeds": str(s["seed"].nunique()) if len(s) else "0",
            "device-hours": f"{s['wall_seconds'].sum() / 3600:.3f}" if len(s) else "0.000",
        })
    return pd.DataFrame(rows, columns=["page", "data", "profile", "epochs (float / quantized)",
                                       "finished runs",
                                       "in progress", "seeds", "device-hours"])


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
