"""The two fused LSQ kernels, compiled where the compiler runs, eager otherwise.

Speed: the forward is one fused pass and the backward one fused pass plus a reduction (on a GPU
one partial step-size gradient per row, then a tiny sum), with the step-size floor, the grad scale
and the floor's gradient mask folded in, produced by ``torch.compile`` of the two small functions
below; when compilation is unavailable (no C++ compiler, unsupported platform,
``LSQ_COMPILE=0``) the same functions run eagerly. Both paths are
checked against ``torch.autograd.gradcheck`` and a reference in the tests.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from typing import Literal

import torch

# The compiled kernels' C++ build goes through torch.utils.cpp_extension, which logs "No CUDA
# runtime is found, using CUDA_HOME=..." once per process on a CPU machine that has a CUDA
# toolkit path: this package builds no CUDA extension, so in every CPU run's log it only misleads.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

# A zero step size would divide by zero (an all-zero weight tensor initialises to s = 0). This
# floor is far below any step size that quantizes a real tensor, so it never changes a result,
# but it keeps v / s finite and s positive whatever the optimizer does.
MIN_STEP_SIZE = 1e-8


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


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """A 2-D ``(x.shape[0], -1)`` view (rows: output channels of a weight, examples of an
    activation), so the compiled kernels see one shape class whatever the layer; channels-last
    activations flatten in memory order."""
    if is_channels_last(x):
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    return x.reshape(x.shape[0] if x.dim() > 1 else 1, -1)


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def from_rows(flat: torch.Tensor, shape: torch.Size, channels_last: bool) -> torch.Tensor:
    if channels_last:
        n, c, h, w = shape
        return flat.view(n, h, w, c).permute(0, 3, 1, 2)
    return flat.view(shape)


