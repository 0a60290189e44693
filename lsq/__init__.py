"""LSQ reproducibility report: Learned Step Size Quantization (arXiv 1902.08153), retrained and
reported. See README.md; the LSQ core is ``lsq.quantizer``, ``lsq.layers``, ``lsq.convert``."""

__version__ = "0.1.0"
