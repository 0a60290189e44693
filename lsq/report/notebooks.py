"""The papermill notebooks of each page, executed and converted to HTML for the site."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from lsq.report.render import Page

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def run_notebooks(pages: list[Page], runs_dir: Path, site: Path) -> list[str]:
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
        results = list(pool.map(lambda job: run_notebook(*job, runs_dir, out), jobs))
    errors = []
    for (page, kind), (target, error) in zip(jobs, results):
        if error:
            errors.append(error)
        if target.exists():
            page.notebooks[kind] = f"notebooks/{target.stem}.html"
    return errors

@functools.cache
def quiet_kernel_manager():
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

def run_notebook(page: Page, kind: str, runs_dir: Path, out: Path) -> tuple[Path, str]:
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
            kernel_manager_class=quiet_kernel_manager(),
        )
    except Exception as error:  # a failed notebook is reported on the index, not fatal
        last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        return target, f"{source.name} for {page.slug}: {type(error).__name__}: {last}"
    return target, ""

def notebook_body(path: Path) -> str:
    import nbformat
    from nbconvert import HTMLExporter

    # The "basic" template gives the cells only: no CDN scripts (require.js, MathJax), so the
    # page works from disk; the site's own stylesheet lays it out.
    exporter = HTMLExporter(template_name="basic")
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    return body

def pygments_css() -> str:
    from pygments.formatters import HtmlFormatter

    return HtmlFormatter(style="default").get_style_defs(".highlight")
