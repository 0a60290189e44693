"""LSQ reproducibility report: Learned Step Size Quantization (arXiv 1902.08153), retrained and
reported. See README.md; the LSQ core is ``lsq.quant.quantizer``, ``lsq.quant.layers``, ``lsq.quant.convert``."""

__version__ = "0.1.0"
