"""Training: the paper's recipe (:mod:`~lsq.engine.recipe`), the step and its fast path, the
checkpoint, one run directory's lifecycle (:func:`fit`), how make starts runs, and the host."""

from lsq.engine.launch import fit_after_baseline
from lsq.engine.run import fit

__all__ = ["fit", "fit_after_baseline"]
