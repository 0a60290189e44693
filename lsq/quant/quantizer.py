"""Learned Step Size Quantization (Esser et al., 2019, arXiv 1902.08153).

Forward, with integer levels ``q_min..q_max`` (``Q_N = -q_min``, ``Q_P = q_max``)::

    v_hat = round(clip(v / s, q_min, q_max)) * s

Backward (the paper's eq. 3 and the straight-through estimator with the clip mask)::

    d v_hat / d v = 1                    if q_min <= v/s <= q_max, else 0
    d v_hat / d s = round(v/s) - v/s     if q_min <= v/s <= q_max
                  = q_min                if v/s < q_min
                  = q_max                if v/s > q_max

and the step-size gradient is multiplied by ``g = 1 / sqrt(N * Q_P)``, where ``N`` is the number
of weights sharing the step size (per channel: weights per output channel) for a weight
quantizer, and the number of features per example (``numel / batch``) for an activation
quantizer.

Initialisation, on the first forward in training mode::

    s = 2 * mean(|v|) / sqrt(Q_P)

Level sets are plain ``(q_min, q_max)`` pairs: ternary ``[-1, 0, 1]`` is ``(-1, 1)`` and 2-bit
unsigned ``[0, 1, 2, 3]`` is ``(0, 3)``; :func:`signed_levels` and :func:`unsigned_levels` build
the general b-bit ranges.

The fused forward and backward kernels behind :class:`LsqFunction` live in
:mod:`lsq.quant.kernels`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from lsq.levels import (  # noqa: F401 - re-exported: the level helpers belong to the API
    TERNARY, UNSIGNED_2BIT, Levels, check_levels, format_levels, parse_levels, signed_levels,
    unsigned_levels,
)
from lsq.quant.kernels import (  # noqa: F401 - MIN_STEP_SIZE belongs to the API
    MIN_STEP_SIZE, as_rows, is_channels_last, from_rows, fake_quantize_backward_kernel,
    fake_quantize_kernel,
)

QuantizerKind = Literal["weight", "activation"]
InitMethod = Literal["lsq", "maxabs"]


class LsqFunction(torch.autograd.Function):
    """``v_hat = round(clip(v / s, q_min, q_max)) * s`` with the paper's gradients.

    ``s`` is a 0-d tensor (per tensor) or has one entry per row of ``x`` (per channel), used as
    ``max(s, MIN_STEP_SIZE)``; the returned step-size gradient has ``s``'s shape, is multiplied
    by ``grad_scale`` and is zero where ``s`` is below the floor.
    """

    @staticmethod
    def forward(ctx, x, s, q_min: int, q_max: int, grad_scale: float, absorbs_relu: bool = False):
        per_channel = s.dim() > 0
        # Eagerly, the kernels see 2-D views: one shape class for the dynamic-shape compiled
        # kernels whatever the layer. Traced into a compiled model they see x as it is: there
        # the compiler chooses the layout (channels-last for convolutions on the CPU), and a
        # row-major view of it would make the fused loops strided and scalar.
        ctx.flat = not torch.compiler.is_compiling()
        # detach(): the kernels must see plain tensors (a Parameter would be another compiled
        # variant) and views never leave this function.
        v = as_rows(x.detach()) if ctx.flat else x.detach()
        s_b = s.detach().reshape(-1, *([1] * (v.dim() - 1))) if per_channel else s.detach()
        ctx.save_for_backward(v, s_b)
        ctx.levels = (q_min, q_max)
        ctx.grad_scale = grad_scale
        ctx.reduction = "rows" if per_channel else "rows-then-all" if v.is_cuda else "all"
        ctx.absorbs_relu = absorbs_relu
        ctx.shape = x.shape
        ctx.channels_last = is_channels_last(x)
        v_hat = fake_quantize_kernel(v, s_b, q_min, q_max)
        return from_rows(v_hat, x.shape, ctx.channels_last) if ctx.flat else v_hat

    @staticmethod
    def backward(ctx, grad):
        v, s_b = ctx.saved_tensors
        grad = grad.to(v.dtype)
        if ctx.flat:
            memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
            grad = as_rows(grad.contiguous(memory_format=memory_format))
        grad_x, grad_s = fake_quantize_backward_kernel(
            grad, v, s_b, *ctx.levels, ctx.grad_scale, ctx.reduction, ctx.absorbs_relu)
        if ctx.flat:
            grad_x = from_rows(grad_x, ctx.shape, ctx.channels_last)
        return grad_x, grad_s, None, None, None, None


def lsq_fake_quantize(
    x: torch.Tensor, s: torch.Tensor, q_min: int, q_max: int, grad_scale: float,
    absorbs_relu: bool = False,
) -> torch.Tensor:
    """Functional LSQ: ``s`` is 0-d (per tensor) or 1-d with one entry per row of ``x``; values
    below ``MIN_STEP_SIZE`` act as the floor (and get no gradient, like ``clamp_min``)."""
    return LsqFunction.apply(x, s, q_min, q_max, grad_scale, absorbs_relu)


class LsqQuantizer(nn.Module):
    """Learned-step-size fake quantizer; see the module docstring for the math.

    Args:
        q_min, q_max: integer level range, e.g. ``(-1, 1)`` ternary, ``(0, 3)`` 2-bit unsigned.
        kind: ``"weight"`` (N = weights per step size) or ``"activation"`` (N = features per
            example, one step size per tensor).
        per_channel: one step size per output channel (dim 0); weights only.
        num_channels: number of output channels, required with ``per_channel`` so that the
            ``step_size`` parameter has its final shape before any optimizer sees it.
        init_scale: multiplies the initial step size (ablations; 1 is the paper).
        init_method: ``"lsq"`` (the paper's ``2 mean|v| / sqrt(Q_P)``) or ``"maxabs"``
            (``max|v| / Q_P``: the whole range representable, no clipping at init).
        use_grad_scale: multiply the step-size gradient by ``g`` (the paper); off for ablations.
        absorbs_relu: the input is the pre-activation of a ReLU that was removed
            (``lsq.quant.convert``); unsigned activation levels only. With ``q_min = 0`` the clip
            already maps every negative value to 0, so ``q(x) = q(relu(x))`` in value, step-size
            gradient and input gradient (the input gradient is 0 at ``x = 0`` too, as ReLU's);
            the initialisation reads ``relu(x)``. It saves the ReLU's pass over the tensor,
            forward and backward.
    """

    def __init__(
        self,
        q_min: int,
        q_max: int,
        *,
        kind: QuantizerKind = "weight",
        per_channel: bool = False,
        num_channels: int | None = None,
        init_scale: float = 1.0,
        init_method: InitMethod = "lsq",
        use_grad_scale: bool = True,
        absorbs_relu: bool = False,
    ):
        super().__init__()
        if init_method not in ("lsq", "maxabs"):
            raise ValueError(f"init_method must be 'lsq' or 'maxabs', got {init_method!r}")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a positive finite number, got {init_scale!r}")
        self.init_scale = float(init_scale)
        self.init_method = init_method
        self.use_grad_scale = use_grad_scale
        self.q_min, self.q_max = check_levels(q_min, q_max)
        if kind not in ("weight", "activation"):
            raise ValueError(f"kind must be 'weight' or 'activation', got {kind!r}")
        if per_channel and kind == "activation":
            raise ValueError("per-channel step sizes are for weights; activations use one per tensor")
        if per_channel and (num_channels is None or num_channels < 1):
            raise ValueError("per_channel=True needs num_channels (the weight's output channels)")
        if absorbs_relu and (kind != "activation" or self.q_min != 0):
            raise ValueError("absorbs_relu needs an activation quantizer with unsigned levels "
                             f"(q_min = 0), got kind={kind!r}, q_min={self.q_min}")
        self.kind = kind
        self.per_channel = per_channel
        self.absorbs_relu = absorbs_relu
        shape = (num_channels,) if per_channel else ()
        self.step_size = nn.Parameter(torch.ones(shape))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Mirror of the buffer so the hot path never reads a device tensor (a host sync on CUDA).
        self._initialized = False

    @property
    def q_p(self) -> int:
        return self.q_max

    def extra_repr(self) -> str:
        channels = f", per_channel={self.step_size.numel()}" if self.per_channel else ""
        extra = "" if self.init_method == "lsq" and self.init_scale == 1.0 else (
            f", init={self.init_method}x{self.init_scale:g}")
        extra += "" if self.use_grad_scale else ", grad_scale=off"
        extra += ", absorbs the preceding ReLU" if self.absorbs_relu else ""
        return f"levels=[{self.q_min}..{self.q_max}], kind={self.kind}{channels}{extra}"

    def grad_scale(self, x: torch.Tensor) -> float:
        """``g = 1 / sqrt(N * Q_P)`` (1 when ``use_grad_scale`` is off)."""
        if not self.use_grad_scale:
            return 1.0
        if self.kind == "weight":
            n = x.numel() // x.shape[0] if self.per_channel else x.numel()
        else:
            n = x[0].numel() if x.dim() > 1 else x.numel()
        return 1.0 / math.sqrt(max(n, 1) * self.q_p)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """``s = 2 * mean(|v|) / sqrt(Q_P)`` (per channel: per output channel), times init_scale."""
        v = x.detach().float()
        v = v.clamp_min(0) if self.absorbs_relu else v.abs()
        v = v.flatten(1) if self.per_channel else v.reshape(1, -1)
        if self.init_method == "lsq":
            init = 2.0 * v.mean(1) / math.sqrt(self.q_p)
        else:
            init = v.amax(1) / self.q_p
        init = (init * self.init_scale).clamp_min(MIN_STEP_SIZE)
        self.step_size.copy_(init.reshape(self.step_size.shape))
        self.initialized.fill_(True)
        self._initialized = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialized = bool(self.initialized)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._initialized:
            if not self.training:
                raise RuntimeError(
                    "LsqQuantizer used in eval mode before its step size was initialised: run "
                    "one training-mode forward (calibration batch) or load a checkpoint first"
                )
            self.initialize(x)
        # The kernels keep s at or above MIN_STEP_SIZE here, and not only at init.
        return lsq_fake_quantize(x, self.step_size, self.q_min, self.q_max, self.grad_scale(x),
                                 self.absorbs_relu)

    @torch.no_grad()
    def integer_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The integer levels ``round(clip(v / s))`` as int16 (export, sparsity).

        Derived from the forward's own output so that ``codes * s`` reproduces it bit for bit,
        whichever kernel (compiled or eager) produced it.
        """
        if not self._initialized:
            raise RuntimeError("integer_codes needs an initialised step size")
        s = self.step_size.clamp_min(MIN_STEP_SIZE)
        s_b = s.reshape(-1, *([1] * (x.dim() - 1))) if self.per_channel else s
        v_hat = lsq_fake_quantize(x, s, self.q_min, self.q_max, 1.0)
        return (v_hat / s_b).round().to(torch.int16)
