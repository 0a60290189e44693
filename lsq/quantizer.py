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

Speed: the forward is one fused pass and the backward one fused pass plus a reduction (on a GPU
one partial step-size gradient per row, then a tiny sum), with the step-size floor, the grad scale
and the floor's gradient mask folded in, produced by ``torch.compile`` of the two small functions
below; when compilation is unavailable (no C++ compiler, unsupported platform,
``LSQ_COMPILE=0``) the same functions run eagerly. Both paths are
checked against ``torch.autograd.gradcheck`` and a reference in the tests.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import warnings
from typing import Literal

import torch
from torch import nn

from lsq.levels import (  # noqa: F401 - re-exported: the level helpers belong to the API
    TERNARY, UNSIGNED_2BIT, Levels, check_levels, format_levels, parse_levels, signed_levels,
    unsigned_levels,
)

# The compiled kernels' C++ build goes through torch.utils.cpp_extension, which logs "No CUDA
# runtime is found, using CUDA_HOME=..." once per process on a CPU machine that has a CUDA
# toolkit path: this package builds no CUDA extension, so in every CPU run's log it only misleads.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

# A zero step size would divide by zero (an all-zero weight tensor initialises to s = 0). This
# floor is far below any step size that quantizes a real tensor, so it never changes a result,
# but it keeps v / s finite and s positive whatever the optimizer does.
MIN_STEP_SIZE = 1e-8

QuantizerKind = Literal["weight", "activation"]
InitMethod = Literal["lsq", "maxabs"]


# --- the two fused kernels ------------------------------------------------------------------


def _upcast(x: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 inputs are divided in float32: eager would otherwise round a 0-d s and v/s to
    # bf16 (8-bit mantissa) before round(), and disagree with the compiled kernel.
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def _fake_quantize(x: torch.Tensor, s: torch.Tensor, q_min: int, q_max: int) -> torch.Tensor:
    s = s.clamp_min(MIN_STEP_SIZE)
    return (torch.clamp(_upcast(x) / s, q_min, q_max).round() * s).to(x.dtype)


StepReduction = Literal["rows", "all", "rows-then-all"]


def _fake_quantize_backward(
    grad: torch.Tensor, x: torch.Tensor, s: torch.Tensor, q_min: int, q_max: int,
    grad_scale: float, reduction: StepReduction, absorbs_relu: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_s)`` for ``x`` (2-D when called eagerly) and the raw step size ``s``
    (0-d, or ``(rows, 1, ...)``).

    ``grad_s`` comes out finished: summed (``"rows"``: per row, for per-channel step sizes;
    ``"all"``: whole; ``"rows-then-all"``: per row, then the rows), times ``grad_scale``, and
    zero where ``s`` is below the floor, which is the gradient of ``clamp_min(s, floor)``; the
    floor itself is applied here too: the compiler fuses these into the pass over the tensor
    (on the CPU the whole backward is one kernel) instead of an eager op for each.

    On a GPU the whole sum straight to one scalar is a single thread block under dynamic-shape
    compilation (measured on an H200: LSQ row 4 at 4x the float step), so the caller asks for
    ``"rows-then-all"`` there; on the CPU the whole sum is the faster one.

    ``absorbs_relu`` (``q_min = 0``): no input gradient at exactly ``x = 0`` either, as ReLU's
    own gradient there is 0. Exact zeros do occur: a quantized conv's outputs take few distinct
    values (integer codes times two step sizes), and BN with its initial bias 0 maps those equal
    to the batch mean to exactly 0 (tests/test_convert.py's row-4 ResNet-20 has some)."""
    s_floor = s.clamp_min(MIN_STEP_SIZE)
    r = _upcast(x) / s_floor
    inside = ((r > q_min) if absorbs_relu else (r >= q_min)) & (r <= q_max)
    q = torch.clamp(r, q_min, q_max).round()
    grad_x = torch.where(inside, grad, torch.zeros_like(grad))
    # Outside the range r is clipped to q, so "q - r" would be 0 there; the paper's gradient is
    # the clipped level itself.
    # Half-precision inputs sum the step gradient in float32; float64 keeps float64 (gradcheck).
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad_s_terms = grad.to(acc) * torch.where(inside, q - r, q).to(acc)
    if reduction == "all":
        grad_s = grad_s_terms.sum()
    else:
        grad_s = grad_s_terms.sum(tuple(range(1, grad_s_terms.dim())))
        if reduction == "rows-then-all":
            grad_s = grad_s.sum()
    grad_s = grad_s.reshape(s.shape[:1]) * grad_scale * (s >= MIN_STEP_SIZE).reshape(s.shape[:1])
    return grad_x, grad_s.to(s.dtype)


def cxx_compiler_available() -> bool:
    """Inductor's CPU kernels are C++: without a compiler ``torch.compile`` cannot run there."""
    return any(shutil.which(name) for name in ("c++", "g++", "clang++", "cl"))


def compile_enabled() -> bool:
    """``LSQ_COMPILE=0`` turns the compiled kernels off (debugging, exotic platforms)."""
    return os.environ.get("LSQ_COMPILE", "1") not in ("0", "false", "no", "off")


_RECOMPILE_LIMIT = 64


class _CompiledOrEager:
    """Calls ``torch.compile(fn)`` and falls back to ``fn`` for good if compilation fails."""

    def __init__(self, fn):
        self.eager = fn
        self.compiled = None
        self.failed = False

    def __call__(self, *args):
        if self.failed or not compile_enabled() or torch.compiler.is_compiling():
            # Inside a torch.compile'd model the plain ops are traced into the model's graph,
            # where the compiler can fuse them with their neighbours (BN, ReLU, the conv's input).
            return self.eager(*args)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.eager, dynamic=True, fullgraph=True)
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.FailOnRecompileLimitHit:
                # Dynamo's default limit (8 graphs per function) is below the variants one
                # process can need (dtype x per-tensor/per-channel x size-1 specialisations);
                # running out is not a compiler failure, so compile this variant too.
                with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                    return self.compiled(*args)
        except Exception as error:  # noqa: BLE001 - any compiler failure means "run eagerly"
            self.failed = True
            warnings.warn(
                f"torch.compile of the LSQ kernel failed ({type(error).__name__}: {error}); "
                "falling back to eager PyTorch ops (slower, same results).",
                RuntimeWarning,
                stacklevel=2,
            )
            return self.eager(*args)


fake_quantize_kernel = _CompiledOrEager(_fake_quantize)
fake_quantize_backward_kernel = _CompiledOrEager(_fake_quantize_backward)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """A 2-D ``(x.shape[0], -1)`` view (rows: output channels of a weight, examples of an
    activation), so the compiled kernels see one shape class whatever the layer; channels-last
    activations flatten in memory order."""
    if _is_channels_last(x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x.reshape(x.shape[0] if x.dim() > 1 else 1, -1)


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _unflat(flat: torch.Tensor, shape: torch.Size, channels_last: bool) -> torch.Tensor:
    if channels_last:
        n, c, h, w = shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(shape)


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
        v = _flat(x.detach()) if ctx.flat else x.detach()
        s_b = s.detach().reshape(-1, *([1] * (v.dim() - 1))) if per_channel else s.detach()
        ctx.save_for_backward(v, s_b)
        ctx.levels = (q_min, q_max)
        ctx.grad_scale = grad_scale
        ctx.reduction = "rows" if per_channel else "rows-then-all" if v.is_cuda else "all"
        ctx.absorbs_relu = absorbs_relu
        ctx.shape = x.shape
        ctx.channels_last = _is_channels_last(x)
        v_hat = fake_quantize_kernel(v, s_b, q_min, q_max)
        return _unflat(v_hat, x.shape, ctx.channels_last) if ctx.flat else v_hat

    @staticmethod
    def backward(ctx, grad):
        v, s_b = ctx.saved_tensors
        grad = grad.to(v.dtype)
        if ctx.flat:
            memory_format = torch.channels_last if ctx.channels_last else torch.contiguous_format
            grad = _flat(grad.contiguous(memory_format=memory_format))
        grad_x, grad_s = fake_quantize_backward_kernel(
            grad, v, s_b, *ctx.levels, ctx.grad_scale, ctx.reduction, ctx.absorbs_relu)
        if ctx.flat:
            grad_x = _unflat(grad_x, ctx.shape, ctx.channels_last)
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
            (``lsq.convert``); unsigned activation levels only. With ``q_min = 0`` the clip
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
