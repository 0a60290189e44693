"""LsqQuantizer: the paper's forward and gradients, initialisation, level helpers, bad input.

Gradients are checked two ways, both for the compiled kernels and the eager fallback:

* against ``reference_lsq``, an element-by-element numpy loop of the paper's formulas (eq. 3 and
  the clipped straight-through estimator, times ``g = 1 / sqrt(N * Q_P)``);
* with ``torch.autograd.gradcheck`` against the numerical derivative of the straight-through
  *surrogate* ``(clip(v/s) + c) * s`` with ``c = round(clip(v0/s0)) - clip(v0/s0)`` frozen at the
  evaluation point: that smooth function's exact derivative is the paper's gradient (the numeric
  derivative of ``round`` itself is 0 or infinite, so gradcheck on the raw quantizer means
  nothing). The step size enters as ``s = s0 + g * (t - s0)`` so the numeric ``d/dt`` carries the
  grad scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lsq.quant import kernels as lsq_kernels
from lsq.quant.quantizer import (
    MIN_STEP_SIZE,
    TERNARY,
    UNSIGNED_2BIT,
    LsqQuantizer,
    check_levels,
    format_levels,
    lsq_fake_quantize,
    parse_levels,
    signed_levels,
    unsigned_levels,
)

LEVELS = [TERNARY, UNSIGNED_2BIT, (-2, 1), (-8, 7), (0, 1), (-4, 3)]
PROPERTY_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_KERNELS = (lsq_kernels.fake_quantize_kernel, lsq_kernels.fake_quantize_backward_kernel)


_have_cxx = lsq_kernels.cxx_compiler_available


@pytest.fixture(params=["compiled", "eager"])
def kernels(request, monkeypatch):
    """Run the test once with torch.compile'd kernels and once with LSQ_COMPILE=0 (eager)."""
    monkeypatch.setenv("LSQ_COMPILE", "1" if request.param == "compiled" else "0")
    if request.param == "compiled" and any(k.failed for k in _KERNELS):
        pytest.skip("torch.compile of the LSQ kernels failed earlier in this process")
    yield request.param
    if request.param == "compiled":
        # A compile failure falls back to eager with a warning: the test then checked eager twice.
        assert not any(k.failed for k in _KERNELS), "compiled kernels fell back to eager"


def make_quantizer(levels, step, *, kind="weight", per_channel=False, dtype=torch.float64):
    """An initialised quantizer with a given step size, via the checkpoint path (public API)."""
    step = torch.as_tensor(step, dtype=dtype)
    q = LsqQuantizer(*levels, kind=kind, per_channel=per_channel,
                     num_channels=step.numel() if per_channel else None).to(dtype)
    q.load_state_dict({"step_size": step, "initialized": torch.tensor(True)})
    return q


# --- slow reference ---------------------------------------------------------------------------


def reference_grad_scale(shape, q_max, *, kind, per_channel):
    """g = 1/sqrt(N Q_P); N = weights per step size, or features per example for activations."""
    if kind == "activation" or per_channel:
        n = int(np.prod(shape[1:]))
    else:
        n = int(np.prod(shape))
    return 1.0 / math.sqrt(n * q_max)


def reference_lsq(v, s, q_min, q_max, grad_out, g):
    """Forward and the paper's gradients, one element at a time (slow on purpose).

    Returns ``(v_hat, dL/dv, dL/ds)``; ``s`` is a scalar or one value per row of ``v``.
    """
    v, s, grad_out = (np.asarray(a, dtype=np.float64) for a in (v, s, grad_out))
    per_channel = s.ndim == 1
    v_hat, grad_v, grad_s = np.zeros_like(v), np.zeros_like(v), np.zeros_like(s)
    for index in np.ndindex(v.shape):
        channel = index[0] if per_channel else ()
        step = s[channel]
        r = v[index] / step
        if r < q_min:
            level, dv, ds = q_min, 0.0, q_min
        elif r > q_max:
            level, dv, ds = q_max, 0.0, q_max
        else:
            level = float(np.rint(r))  # half to even, like torch.round
            dv, ds = 1.0, level - r
        v_hat[index] = level * step
        grad_v[index] = grad_out[index] * dv
        grad_s[channel] += grad_out[index] * ds
    return v_hat, grad_v, grad_s * g


CASES = {
    # name: (levels, kind, per_channel, shape)
    "ternary-weight-tensor": (TERNARY, "weight", False, (4, 3, 3, 3)),
    "ternary-weight-channel": (TERNARY, "weight", True, (4, 3, 3, 3)),
    "4bit-linear-channel": ((-8, 7), "weight", True, (5, 7)),
    "2bit-activation": (UNSIGNED_2BIT, "activation", False, (3, 4, 5, 5)),
    "signed-activation": ((-2, 1), "activation", False, (2, 6)),
}


def _case_tensors(levels, per_channel, shape, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    channels = shape[0] if per_channel else None
    step = torch.rand(channels or (), generator=generator, dtype=dtype) * 0.5 + 0.1
    s_b = step.reshape(-1, *([1] * (len(shape) - 1))) if per_channel else step
    # Spread v/s over [q_min - 2, q_max + 2] so both clipped ends and the inside are exercised.
    span = levels[1] - levels[0] + 4
    r = torch.rand(shape, generator=generator, dtype=dtype) * span + levels[0] - 2
    v = r * s_b
    grad_out = torch.randn(shape, generator=generator, dtype=dtype)
    return v, step, grad_out


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_gradients_match_reference(kernels, case):
    levels, kind, per_channel, shape = CASES[case]
    v, step, grad_out = _case_tensors(levels, per_channel, shape, seed=len(case))
    q = make_quantizer(levels, step, kind=kind, per_channel=per_channel)
    x = v.clone().requires_grad_()
    out = q(x)
    out.backward(grad_out)

    g = reference_grad_scale(shape, levels[1], kind=kind, per_channel=per_channel)
    ref_out, ref_grad_v, ref_grad_s = reference_lsq(v, step, *levels, grad_out, g)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(x.grad.numpy(), ref_grad_v)
    np.testing.assert_allclose(q.step_size.grad.numpy(), ref_grad_s, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_float32_gradients_match_reference(kernels, case):
    """The training dtype: the step gradient sums in float32, so compare loosely."""
    levels, kind, per_channel, shape = CASES[case]
    v, step, grad_out = _case_tensors(levels, per_channel, shape, seed=7, dtype=torch.float32)
    q = make_quantizer(levels, step, kind=kind, per_channel=per_channel, dtype=torch.float32)
    x = v.clone().requires_grad_()
    q(x).backward(grad_out)
    g = reference_grad_scale(shape, levels[1], kind=kind, per_channel=per_channel)
    # The reference sees the float32 values exactly, so only the float32 arithmetic differs.
    _, ref_grad_v, ref_grad_s = reference_lsq(v.numpy(), step.numpy(), *levels, grad_out.numpy(), g)
    np.testing.assert_array_equal(x.grad.numpy(), ref_grad_v.astype(np.float32))
    np.testing.assert_allclose(q.step_size.grad.numpy(), ref_grad_s, rtol=1e-4, atol=1e-6)


def _away_from_clip_edges(v, step, levels, per_channel):
    """Nudge v/s off the clip edges, where the surrogate has a kink and gradcheck would fail."""
    s_b = step.reshape(-1, *([1] * (v.dim() - 1))) if per_channel else step
    r = v / s_b
    for edge in levels:
        r = torch.where((r - edge).abs() < 0.05, r + 0.1, r)
    return r * s_b


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize("levels", [TERNARY, UNSIGNED_2BIT, (-4, 3)], ids=str)
def test_gradcheck_against_straight_through_surrogate(kernels, per_channel, levels):
    shape = (3, 2, 2)
    v, step, _ = _case_tensors(levels, per_channel, shape, seed=3)
    v = _away_from_clip_edges(v, step, levels, per_channel)
    g = reference_grad_scale(shape, levels[1], kind="weight", per_channel=per_channel)
    view = (-1, 1, 1) if per_channel else ()
    r0 = torch.clamp(v / step.reshape(view), *levels)
    offset = r0.round() - r0  # frozen at the evaluation point

    def lsq_with_surrogate_values(x, t):
        quantized = lsq_fake_quantize(x, t, *levels, g)
        s = (step + g * (t - step)).reshape(view)
        surrogate = (torch.clamp(x / s, *levels) + offset) * s
        # Values of the surrogate (what the numeric derivative sees), gradients of LsqFunction.
        return quantized + (surrogate - quantized).detach()

    inputs = (v.clone().requires_grad_(), step.clone().requires_grad_())
    assert torch.autograd.gradcheck(lsq_with_surrogate_values, inputs, eps=1e-7, atol=1e-6, rtol=1e-5)


def test_gradcheck_detects_a_wrong_gradient():
    """The surrogate check has teeth: a gradient without the grad scale fails it."""
    levels, shape = TERNARY, (3, 2, 2)
    v, step, _ = _case_tensors(levels, False, shape, seed=3)
    v = _away_from_clip_edges(v, step, levels, False)
    g = reference_grad_scale(shape, levels[1], kind="weight", per_channel=False)
    r0 = torch.clamp(v / step, *levels)
    offset = r0.round() - r0

    def unscaled(x, t):
        quantized = lsq_fake_quantize(x, t, *levels, 1.0)  # wrong: grad scale missing
        s = step + g * (t - step)
        surrogate = (torch.clamp(x / s, *levels) + offset) * s
        return quantized + (surrogate - quantized).detach()

    inputs = (v.clone().requires_grad_(), step.clone().requires_grad_())
    assert not torch.autograd.gradcheck(unscaled, inputs, eps=1e-7, atol=1e-6, raise_exception=False)


def test_reference_rejects_torch_ao_mask():
    """torch.ao's fused op passes gradients for v/s in (q_max, q_max + 0.5); the paper does not,
    and the reference comparison catches that difference."""
    levels = TERNARY
    v = torch.tensor([-1.3, -0.7, 0.2, 0.9, 1.2, 1.4, 2.0], dtype=torch.float32)
    step = torch.tensor(1.0)
    grad_out = torch.ones_like(v)
    g = reference_grad_scale(v.shape, levels[1], kind="weight", per_channel=False)
    x = v.clone().requires_grad_()
    scale = torch.tensor([1.0], requires_grad=True)
    out = torch._fake_quantize_learnable_per_tensor_affine(x, scale, torch.tensor([0.0]), *levels, g)
    out.backward(grad_out)
    _, ref_grad_v, ref_grad_s = reference_lsq(v.numpy(), step.numpy(), *levels, grad_out.numpy(), g)
    assert not np.array_equal(x.grad.numpy(), ref_grad_v)
    assert not np.allclose(scale.grad.numpy(), ref_grad_s)


def test_grad_scale_values():
    weight = torch.randn(8, 4, 3, 3)
    assert LsqQuantizer(-1, 1).grad_scale(weight) == pytest.approx(1 / math.sqrt(288 * 1))
    per_channel = LsqQuantizer(-8, 7, per_channel=True, num_channels=8)
    assert per_channel.grad_scale(weight) == pytest.approx(1 / math.sqrt(36 * 7))
    activation = LsqQuantizer(0, 3, kind="activation")
    assert activation.grad_scale(torch.randn(16, 4, 5, 5)) == pytest.approx(1 / math.sqrt(100 * 3))
    assert LsqQuantizer(-1, 1, use_grad_scale=False).grad_scale(weight) == 1.0


def test_without_grad_scale_step_gradient_is_unscaled(kernels):
    levels, kind, per_channel, shape = CASES["ternary-weight-tensor"]
    v, step, grad_out = _case_tensors(levels, per_channel, shape, seed=11)
    q = make_quantizer(levels, step)
    q.use_grad_scale = False
    q(v).backward(grad_out)
    _, _, ref_grad_s = reference_lsq(v, step, *levels, grad_out, 1.0)
    np.testing.assert_allclose(q.step_size.grad.numpy(), ref_grad_s, rtol=1e-10)


def test_compiled_kernels_compile(monkeypatch):
    """The default path really is compiled (not a silent eager fallback) where a compiler exists."""
    if not _have_cxx():
        pytest.skip("no C++ compiler: torch.compile on the CPU cannot work here")
    monkeypatch.setenv("LSQ_COMPILE", "1")
    q = make_quantizer(TERNARY, 0.5, dtype=torch.float32)
    x = torch.randn(10, requires_grad=True)
    q(x).sum().backward()
    for kernel in _KERNELS:
        assert kernel.compiled is not None and not kernel.failed


# --- properties -------------------------------------------------------------------------------

values = hnp.arrays(
    np.float32, st.integers(1, 48), elements=st.floats(-50, 50, width=32, allow_subnormal=False)
)
steps = st.floats(1e-3, 10.0)
levels_st = st.sampled_from(LEVELS)


@PROPERTY_SETTINGS
@given(v=values, step=steps, levels=levels_st)
def test_outputs_lie_on_the_grid(kernels, v, step, levels):
    q = make_quantizer(levels, step, dtype=torch.float32)
    s = q.step_size.detach()
    out = q(torch.from_numpy(v)).detach()
    k = (out / s).round()
    assert torch.equal(out, k * s)  # an integer multiple of s, bit for bit
    assert k.min() >= levels[0] and k.max() <= levels[1]
    # ...and the nearest grid point to v (within half a step inside the range).
    r = torch.from_numpy(v).double() / s.double()
    inside = (r >= levels[0]) & (r <= levels[1])
    assert ((k.double() - r).abs()[inside] <= 0.5 + 1e-5).all()


@PROPERTY_SETTINGS
@given(v=values, step=steps, levels=levels_st)
def test_idempotent(kernels, v, step, levels):
    q = make_quantizer(levels, step, dtype=torch.float32)
    once = q(torch.from_numpy(v)).detach()
    assert torch.equal(q(once).detach(), once)


@PROPERTY_SETTINGS
@given(v=values, step=steps, levels=levels_st, data=st.data())
def test_zero_maps_to_zero(kernels, v, step, levels, data):
    index = data.draw(st.integers(0, v.size - 1))
    v = v.copy()
    v[index] = 0.0
    out = make_quantizer(levels, step, dtype=torch.float32)(torch.from_numpy(v))
    assert out[index].item() == 0.0


weights_2d = hnp.arrays(
    np.float32, st.tuples(st.integers(1, 6), st.integers(1, 12)),
    elements=st.floats(-5, 5, width=32, allow_subnormal=False),
)


def _fresh_init(levels, v, **kwargs):
    q = LsqQuantizer(*levels, num_channels=v.shape[0] if kwargs.get("per_channel") else None, **kwargs)
    q(torch.from_numpy(v))  # training mode: the first forward initialises
    assert bool(q.initialized)
    return q.step_size.detach().numpy()


@settings(max_examples=25, deadline=None)
@given(v=weights_2d, levels=levels_st, scale=st.sampled_from([1.0, 0.5, 2.0]))
def test_init_formula(v, levels, scale):
    q_p = levels[1]
    abs_v = np.abs(v.astype(np.float64))
    expected_tensor = max(2 * abs_v.mean() / math.sqrt(q_p) * scale, MIN_STEP_SIZE)
    expected_channel = np.maximum(2 * abs_v.mean(1) / math.sqrt(q_p) * scale, MIN_STEP_SIZE)
    np.testing.assert_allclose(_fresh_init(levels, v, init_scale=scale), expected_tensor, rtol=1e-5)
    np.testing.assert_allclose(
        _fresh_init(levels, v, per_channel=True, init_scale=scale), expected_channel, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(v=weights_2d, levels=levels_st)
def test_maxabs_init(v, levels):
    abs_v = np.abs(v.astype(np.float64))
    np.testing.assert_allclose(
        _fresh_init(levels, v, init_method="maxabs"), max(abs_v.max() / levels[1], MIN_STEP_SIZE),
        rtol=1e-6)
    np.testing.assert_allclose(
        _fresh_init(levels, v, init_method="maxabs", per_channel=True),
        np.maximum(abs_v.max(1) / levels[1], MIN_STEP_SIZE), rtol=1e-6)


def test_activation_init_uses_whole_batch():
    x = torch.rand(4, 3, 5, 5) * 3
    q = LsqQuantizer(0, 3, kind="activation")
    q(x)
    assert q.step_size.item() == pytest.approx(2 * x.abs().mean().item() / math.sqrt(3), rel=1e-5)


def test_init_happens_once_and_only_in_training():
    q = LsqQuantizer(-1, 1)
    q(torch.ones(10))
    first = q.step_size.item()
    q(torch.ones(10) * 100)
    assert q.step_size.item() == first


@pytest.mark.parametrize("kwargs", [
    dict(), dict(per_channel=True, num_channels=3), dict(kind="activation")], ids=str)
def test_all_zero_tensor_init_is_finite(kernels, kwargs):
    q = LsqQuantizer(-1, 1, **kwargs)
    x = torch.zeros(3, 4, requires_grad=True)
    out = q(x)
    out.backward(torch.ones_like(out))
    assert torch.isfinite(q.step_size).all() and (q.step_size > 0).all()
    assert torch.equal(out.detach(), torch.zeros(3, 4))
    assert torch.isfinite(x.grad).all() and torch.isfinite(q.step_size.grad).all()


def test_step_size_stays_positive_in_forward(kernels):
    """An optimizer may push s below zero; the forward clamps it to the floor, no NaN/sign flip."""
    q = make_quantizer(TERNARY, -0.5, dtype=torch.float32)
    out = q(torch.tensor([0.5, -0.5, 1e-9]))
    assert torch.isfinite(out).all()
    assert torch.equal(out, torch.tensor([MIN_STEP_SIZE, -MIN_STEP_SIZE, 0.0]))


def test_step_gradient_at_and_below_the_floor(kernels):
    """The floor acts as ``clamp_min(s, MIN_STEP_SIZE)``: a step size below it quantizes with the
    floor and gets no gradient; one exactly at it gets the paper's gradient (so projected SGD,
    which parks step sizes at the floor, can move them up again)."""
    step = torch.tensor([-0.5, MIN_STEP_SIZE, 0.3], dtype=torch.float64)
    q = make_quantizer(TERNARY, step, per_channel=True)
    v = torch.tensor([[2e-8, -3e-9], [4e-9, -2e-8], [0.2, -0.7]], dtype=torch.float64)
    grad_out = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.5, 2.5]], dtype=torch.float64)
    out = q(v)
    out.backward(grad_out)
    g = reference_grad_scale(v.shape, 1, kind="weight", per_channel=True)
    floored = step.clamp_min(MIN_STEP_SIZE)
    ref_out, _, ref_grad_s = reference_lsq(v, floored, *TERNARY, grad_out, g)
    np.testing.assert_allclose(out.detach().numpy(), ref_out, rtol=0, atol=1e-20)
    assert q.step_size.grad[0] == 0 and ref_grad_s[1] != 0
    np.testing.assert_allclose(q.step_size.grad[1:].numpy(), ref_grad_s[1:], rtol=1e-10)


@pytest.mark.parametrize("kwargs", [dict(), dict(kind="activation")], ids=str)
def test_eval_before_init_raises(kwargs):
    q = LsqQuantizer(0, 3, **kwargs).eval()
    with pytest.raises(RuntimeError, match="before its step size was initialised"):
        q(torch.rand(2, 3))
    with pytest.raises(RuntimeError, match="initialised"):
        q.integer_codes(torch.rand(2, 3))


def test_channels_last_activation_matches_contiguous(kernels):
    generator = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(2, 3, 5, 4, generator=generator)) * 2
    upstream = torch.randn(2, 3, 5, 4, generator=generator)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        q = make_quantizer(UNSIGNED_2BIT, 0.4, kind="activation", dtype=torch.float32)
        xi = x.clone().contiguous(memory_format=memory_format).requires_grad_()
        out = q(xi)
        (out * upstream).sum().backward()
        results.append((out.detach(), xi.grad, q.step_size.grad))
    (out_a, gx_a, gs_a), (out_b, gx_b, gs_b) = results
    assert torch.equal(out_a, out_b)
    assert torch.equal(gx_a, gx_b)
    torch.testing.assert_close(gs_a, gs_b, rtol=1e-5, atol=1e-6)


def test_bf16_autocast(kernels):
    from lsq.quant.layers import QConv2d

    torch.manual_seed(0)
    q = make_quantizer(UNSIGNED_2BIT, 0.3, kind="activation", dtype=torch.float32)
    x = torch.rand(2, 3, 4, 4).to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(x)
    assert out.dtype == torch.bfloat16
    # The kernel computes in float32 (s is float32) and rounds the result to bf16.
    assert torch.equal(out, q(x.float()).to(torch.bfloat16))
    out.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and q.step_size.grad.dtype == torch.float32

    conv = QConv2d(3, 4, 3, padding=1, weight_quantizer=LsqQuantizer(-1, 1),
                   input_quantizer=LsqQuantizer(0, 3, kind="activation"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(torch.rand(2, 3, 6, 6))
        assert y.dtype == torch.bfloat16
        second = QConv2d(4, 2, 1, input_quantizer=LsqQuantizer(0, 3, kind="activation"))
        z = second(torch.relu(y))  # the activation quantizer sees a bf16 tensor
    z.float().square().mean().backward()
    for name, p in [*conv.named_parameters(), *second.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# --- level helpers and bad input --------------------------------------------------------------


def test_level_helpers():
    assert signed_levels(2, narrow=True) == TERNARY
    assert signed_levels(4) == (-8, 7)
    assert signed_levels(8, narrow=True) == (-127, 127)
    assert unsigned_levels(2) == UNSIGNED_2BIT
    assert unsigned_levels(1) == (0, 1)
    for levels in [TERNARY, UNSIGNED_2BIT, (-8, 7)]:
        assert parse_levels(format_levels(levels)) == levels
    assert format_levels(TERNARY) == "[-1,0,1]"
    assert parse_levels(" [0, 1, 2, 3] ") == (0, 3)
    for text in (None, "none", "None", "", "float"):
        assert parse_levels(text) is None
    assert format_levels(None) == "none"


@pytest.mark.parametrize("args, match", [
    ((1, 1), "smaller than"),
    ((2, 1), "smaller than"),
    ((0.5, 1), "integer"),
    ((-1, 1.0), "integer"),
    ((False, True), "integer"),
    ((-1, 0), "at least 1"),
    ((-3, -1), "smaller than|at least 1"),
    ((1, 3), "zero is representable"),
])
def test_bad_levels(args, match):
    with pytest.raises(ValueError, match=match):
        check_levels(*args)
    with pytest.raises(ValueError, match=match):
        LsqQuantizer(*args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="activation", per_channel=True, num_channels=4), "per-channel"),
    (dict(per_channel=True), "num_channels"),
    (dict(per_channel=True, num_channels=0), "num_channels"),
    (dict(init_method="minmax"), "init_method"),
    (dict(init_scale=0.0), "init_scale"),
    (dict(init_scale=-1.0), "init_scale"),
    (dict(init_scale=float("nan")), "init_scale"),
    (dict(init_scale=float("inf")), "init_scale"),
    (dict(kind="bias"), "kind"),
])
def test_bad_quantizer_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LsqQuantizer(-1, 1, **kwargs)


@pytest.mark.parametrize("text", ["abc", "[]", "[1,3]", "[-1,0,x]", "[1,0]", "[2,3]", "[0]", "[-1;0;1]"])
def test_parse_levels_garbage(text):
    with pytest.raises(ValueError):
        parse_levels(text)


@pytest.mark.parametrize("call", [lambda: signed_levels(1), lambda: unsigned_levels(0)])
def test_bad_bit_widths(call):
    with pytest.raises(ValueError, match="bit"):
        call()


# --- the GPU reduction layout and whole-model compilation ---------------------------------------


def test_per_row_step_gradient_sums_to_the_whole(kernels):
    """The GPU layout (one partial step-size gradient per row, summed by the caller) equals the
    CPU one (the whole sum in the kernel)."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(16, 300, generator=generator, dtype=torch.float64)
    grad = torch.randn(16, 300, generator=generator, dtype=torch.float64)
    s = torch.tensor(0.4, dtype=torch.float64)
    kernel = lsq_kernels.fake_quantize_backward_kernel
    grad_x_rows, per_row = kernel(grad, x, s.expand(16, 1), -1, 1, 0.5, "rows")
    grad_x_split, split = kernel(grad, x, s, -1, 1, 0.5, "rows-then-all")
    grad_x_whole, whole = kernel(grad, x, s, -1, 1, 0.5, "all")
    assert per_row.shape == (16,) and split.shape == () and whole.shape == ()
    torch.testing.assert_close(per_row.sum(), whole)
    torch.testing.assert_close(split, whole)
    torch.testing.assert_close(grad_x_rows, grad_x_whole)
    torch.testing.assert_close(grad_x_split, grad_x_whole)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_kernels_match_reference(case, monkeypatch):
    """The compiled GPU kernels (per-row partial sums, then the total) against the reference,
    in float64 where rounding cannot differ."""
    monkeypatch.setenv("LSQ_COMPILE", "1")
    levels, kind, per_channel, shape = CASES[case]
    v, step, grad_out = _case_tensors(levels, per_channel, shape, seed=len(case))
    q = make_quantizer(levels, step, kind=kind, per_channel=per_channel).cuda()
    x = v.cuda().requires_grad_()
    out = q(x)
    out.backward(grad_out.cuda())
    g = reference_grad_scale(shape, levels[1], kind=kind, per_channel=per_channel)
    ref_out, ref_grad_v, ref_grad_s = reference_lsq(v, step, *levels, grad_out, g)
    np.testing.assert_allclose(out.detach().cpu().numpy(), ref_out, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(x.grad.cpu().numpy(), ref_grad_v)
    np.testing.assert_allclose(q.step_size.grad.cpu().numpy(), ref_grad_s, rtol=1e-10, atol=1e-12)
    assert not any(kernel.failed for kernel in _KERNELS), "fell back to eager on the GPU"


def _row4_model(channels_last: bool):
    from lsq.bench.train import _RepeatLoader
    from lsq.config import make_config
    from lsq.engine.step import Context
    from lsq.engine.recipe import build_run_model, calibrate

    torch.manual_seed(0)
    model = build_run_model(make_config("cifar10", 4, "paper"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    calibrate(model, _RepeatLoader(x, torch.zeros(4, dtype=torch.long)), Context(torch.device("cpu")))
    return model.train(), x


@pytest.mark.parametrize("channels_last", [False, True])
def test_whole_model_compiles_into_one_graph(channels_last):
    """Under torch.compile of the model the quantizers are traced into the model's graph (no
    graph break per layer), so the compiler can fuse them with BN and ReLU."""
    model, x = _row4_model(channels_last)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons[:3]
    assert explanation.graph_count == 1


@pytest.mark.skipif(not _have_cxx(), reason="no C++ compiler: torch.compile on the CPU cannot work here")
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_compiled_model_gradients_match_eager(per_channel, channels_last):
    """A compiled quantized layer stack (float64, where rounding cannot flip a level) gives the
    eager output and gradients, step sizes included. Inside the compiled graph the quantizer
    works on the tensors as they are (no 2-D view), per-channel step sizes and layouts too."""
    torch._dynamo.reset()
    from lsq.quant.layers import QConv2d

    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False).double()
    step = torch.linspace(0.03, 0.08, 6, dtype=torch.float64) if per_channel else 0.05
    weight_q = make_quantizer(TERNARY, step, per_channel=per_channel)
    act_q = LsqQuantizer(*UNSIGNED_2BIT, kind="activation").double()
    layer = torch.nn.Sequential(torch.nn.ReLU(), QConv2d.from_float(
        conv, weight_quantizer=weight_q, input_quantizer=act_q)).train()
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    layer(x)  # initialise the activation step size
    twin = __import__("copy").deepcopy(layer)
    out_compiled = torch.compile(layer)(x)
    out_eager = twin(x)
    torch.testing.assert_close(out_compiled, out_eager)
    out_compiled.square().sum().backward()
    out_eager.square().sum().backward()
    for (name, a), b in zip(layer.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_absorbed_relu_equals_quantizing_the_relu_output(kernels):
    """``q(x)`` with ``absorbs_relu`` is ``q(relu(x))``: initialisation, values and gradients."""
    generator = torch.Generator().manual_seed(5)
    v = torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)
    v[1, 2] = 0.0  # exact zeros (a dead channel after BN): ReLU passes no gradient there
    grad_out = torch.randn(4, 3, 5, 5, generator=generator, dtype=torch.float64)
    results = []
    for absorbs in (True, False):
        q = LsqQuantizer(*UNSIGNED_2BIT, kind="activation", absorbs_relu=absorbs).double()
        x = v.clone().requires_grad_()
        out = q(x if absorbs else torch.relu(x))
        out.backward(grad_out)
        results.append((out.detach(), x.grad, q.step_size.detach(), q.step_size.grad))
    for absorbed, kept in zip(*results):
        torch.testing.assert_close(absorbed, kept, rtol=1e-12, atol=0)
    assert "absorbs the preceding ReLU" in repr(
        LsqQuantizer(0, 3, kind="activation", absorbs_relu=True))


@pytest.mark.parametrize("kwargs", [dict(kind="weight"), dict(kind="activation", levels=(-2, 1))],
                         ids=str)
def test_absorbs_relu_needs_unsigned_activations(kwargs):
    levels = kwargs.pop("levels", UNSIGNED_2BIT)
    with pytest.raises(ValueError, match="absorbs_relu needs an activation quantizer"):
        LsqQuantizer(*levels, absorbs_relu=True, **kwargs)
