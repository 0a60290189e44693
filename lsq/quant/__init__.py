"""The LSQ method, independent of any training loop: the quantizer and its kernels, the quantized
layers, model conversion, inspection of a quantized model, and the integer export."""

from lsq.quant.convert import is_step_size, quantize_model, quantizers, step_size_parameters
from lsq.quant.export import export_model, load_export, save_export
from lsq.quant.layers import QConv2d, QLinear
from lsq.quant.quantizer import (MIN_STEP_SIZE, LsqQuantizer, lsq_fake_quantize, signed_levels,
                                 unsigned_levels)

__all__ = ["MIN_STEP_SIZE", "LsqQuantizer", "QConv2d", "QLinear", "export_model", "is_step_size",
           "load_export", "lsq_fake_quantize", "quantize_model", "quantizers", "save_export",
           "signed_levels", "step_size_parameters", "unsigned_levels"]
