"""The LSQ reproduction report: reads run directories only (docs/run-format.md), never the trainer.

``build_report(runs_dir, out_dir)`` writes ``report/*.md`` and the static site ``report/site/``;
``main(argv)`` is the ``python -m lsq report`` command line. The pieces, usable from notebooks:
``collect.load_runs`` (tidy DataFrames), ``tables``, ``claims``, ``analysis`` and ``figures``.
"""

from lsq.report.collect import Runs, load_runs
from lsq.report.render import build_report, main

__all__ = ["Runs", "build_report", "load_runs", "main"]
