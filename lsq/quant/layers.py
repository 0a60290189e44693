"""Quantized twins of ``nn.Conv2d`` and ``nn.Linear``.

Each layer computes ``op(q_a(x), q_w(W)) + b``: the weight and the input pass through their
quantizers (identity when the quantizer is ``None``); the bias stays float, as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lsq.quant.quantizer import LsqQuantizer


def _maybe(quantizer: LsqQuantizer | None, x: torch.Tensor) -> torch.Tensor:
    return x if quantizer is None else quantizer(x)


class QConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight and input pass through LSQ quantizers."""

    def __init__(self, *args, weight_quantizer=None, input_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    @classmethod
    def from_float(cls, conv: nn.Conv2d, *, weight_quantizer=None, input_quantizer=None):
        """A quantized copy of ``conv`` (weights copied, same device and dtype)."""
        quantized = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
            padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
            bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
            weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        )
        return _copy_from(quantized, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(
            _maybe(self.input_quantizer, x), _maybe(self.weight_quantizer, self.weight), self.bias
        )


class QLinear(nn.Linear):
    """``nn.Linear`` whose weight and input pass through LSQ quantizers."""

    def __init__(self, *args, weight_quantizer=None, input_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    @classmethod
    def from_float(cls, linear: nn.Linear, *, weight_quantizer=None, input_quantizer=None):
        """A quantized copy of ``linear`` (weights copied, same device and dtype)."""
        quantized = cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            device=linear.weight.device, dtype=linear.weight.dtype,
            weight_quantizer=weight_quantizer, input_quantizer=input_quantizer,
        )
        return _copy_from(quantized, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(
            _maybe(self.input_quantizer, x), _maybe(self.weight_quantizer, self.weight), self.bias
        )


def _copy_from(quantized: nn.Module, float_module: nn.Module) -> nn.Module:
    with torch.no_grad():
        quantized.weight.copy_(float_module.weight)
        if float_module.bias is not None:
            quantized.bias.copy_(float_module.bias)
    quantized.to(float_module.weight.device)
    quantized.train(float_module.training)
    return quantized
