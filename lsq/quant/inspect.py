"""What a quantized model holds: its quantized layers, step sizes and weight sparsity. One copy,
used by the training metrics, the export and the benchmarks."""

from __future__ import annotations

import torch
from torch import nn

from lsq.quant.convert import is_step_size, quantizers
from lsq.quant.layers import QConv2d, QLinear
from lsq.quant.quantizer import MIN_STEP_SIZE


def unwrap(model: nn.Module) -> nn.Module:
    """The module behind a DDP or ``torch.compile`` wrapper."""
    return getattr(model, "module", getattr(model, "_orig_mod", model))


def quantized_layers(model: nn.Module):
    """``(name, layer)`` of every QConv2d/QLinear whose weight is quantized."""
    for name, module in unwrap(model).named_modules():
        if isinstance(module, (QConv2d, QLinear)) and module.weight_quantizer is not None:
            yield name, module


@torch.no_grad()
def weight_sparsity(model: nn.Module) -> tuple[float | None, dict[str, float]]:
    """Fraction of zero integer weight codes, overall and per quantized layer."""
    per_layer, zeros, total = {}, 0, 0
    for name, module in quantized_layers(model):
        codes = module.weight_quantizer.integer_codes(module.weight)
        layer_zeros = int((codes == 0).sum())
        per_layer[name] = layer_zeros / codes.numel()
        zeros += layer_zeros
        total += codes.numel()
    return (zeros / total if total else None), per_layer

def step_size_summary(model: nn.Module) -> dict[str, dict[str, float]]:
    summary = {}
    for name, quantizer in quantizers(unwrap(model)):
        s = quantizer.step_size.detach().float()
        summary[name] = {"mean": s.mean().item(), "min": s.min().item(), "max": s.max().item()}
    return summary

def step_size_params(model: nn.Module) -> list[torch.Tensor]:
    return [p for name, p in unwrap(model).named_parameters() if is_step_size(name)]


def model_metrics(model: nn.Module) -> dict:
    """The per-epoch quantization metrics of ``metrics.jsonl`` (docs/run-format.md)."""
    sparsity, per_layer = weight_sparsity(model)
    at_floor = sum(int((p.detach() <= MIN_STEP_SIZE).sum()) for p in step_size_params(model))
    return {"step_sizes": step_size_summary(model), "step_sizes_at_floor": at_floor,
            "weight_sparsity": sparsity, "layer_sparsity": per_layer}
