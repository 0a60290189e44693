"""``python -m lsq bench quantizer``: what LSQ adds to a ResNet-20 training step, and how the
default quantizer compares with the other ways of writing it.

One training step = forward, cross-entropy, backward, SGD step, on a CIFAR-shaped synthetic
batch. Settings, all timed in one process on the same weights:

* ``float``: the float ResNet-20;
* ``row1``: ternary weights ``[-1,0,1]``, first conv and last linear float (table row 1);
* ``row4``: ternary weights, 2-bit activations ``[0,1,2,3]``, first/last quantized (row 4), as
  ``quantize_model`` builds it: the default code path (compiled kernels unless ``LSQ_COMPILE=0``,
  the blocks' inner ReLUs absorbed by the unsigned quantizers after them);
* ``row4-relus-kept``: the same with ``absorb_relus=False`` (what absorbing the ReLUs saves);
* ``row4-torch.ao``: the same layers quantized by torch.ao's ``_LearnableFakeQuantize`` (the
  fused op ``torch._fake_quantize_learnable_per_tensor_affine``) with grad factor ``g`` set to the
  paper's ``1 / sqrt(N * Q_P)`` (its gradient mask differs slightly from the paper's; a speed
  anchor, not an oracle), on the model with its ReLUs;
* ``row4-detach-trick``: lsq-net's formulation, ``grad_scale(x, g) = (x - x g).detach() + x g``
  and ``round_pass(x) = (round(x) - x).detach() + x``, in plain eager ops, with the ReLUs;
* ``row4-eager``: the default quantizer with ``LSQ_COMPILE=0`` (its eager fallback);
* with ``--compile-model``: ``float-compiled-model`` and ``row4-compiled-model``, the whole model
  under ``torch.compile``; their ratio is to ``float-compiled-model``.

Noise control: settings run interleaved in ``--rounds`` rounds (the order rotates each round),
``--steps`` steps per setting and round; the table shows the median over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from lsq.quant.convert import quantize_model
from lsq.models import build_model
from lsq.quant.quantizer import MIN_STEP_SIZE, TERNARY, UNSIGNED_2BIT, LsqQuantizer
from lsq.quant import kernels as lsq_kernels
from lsq.bench import sync
from lsq.engine.host import device_description

ROW1 = dict(weight_levels=TERNARY)
ROW4 = dict(weight_levels=TERNARY, act_levels=UNSIGNED_2BIT, quantize_first_last=True)


# --- the alternative quantizers (same step size, same layers) -------------------------------


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward identity, backward times ``g`` (lsq-net)."""
    return (x - x * g).detach() + x * g


def round_pass(x: torch.Tensor) -> torch.Tensor:
    """Forward round, backward identity (lsq-net)."""
    return (x.round() - x).detach() + x


class DetachTrickQuantizer(nn.Module):
    """lsq-net's LSQ: ``round_pass(clamp(x / s', q_min, q_max)) * s'``, ``s' = grad_scale(s, g)``."""

    def __init__(self, lsq: LsqQuantizer):
        super().__init__()
        self.reference = [lsq]  # a list: borrow grad_scale() without registering a submodule
        self.q_min, self.q_max, self.per_channel = lsq.q_min, lsq.q_max, lsq.per_channel
        self.step_size = nn.Parameter(lsq.step_size.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = grad_scale(self.step_size.clamp_min(MIN_STEP_SIZE), self.reference[0].grad_scale(x))
        if self.per_channel:
            s = s.reshape(-1, *([1] * (x.dim() - 1)))
        return round_pass(torch.clamp(x / s, self.q_min, self.q_max)) * s


def torch_ao_quantizer(lsq: LsqQuantizer) -> nn.Module:
    """torch.ao's learnable fake-quant module with LSQ's step size and the paper's ``g``."""
    from torch.ao.quantization import MovingAverageMinMaxObserver
    from torch.ao.quantization._learnable_fake_quantize import _LearnableFakeQuantize

    if lsq.per_channel:
        raise ValueError("the torch.ao comparison covers per-tensor step sizes (table row 4)")

    class PaperScaledLearnableFakeQuantize(_LearnableFakeQuantize):
        # The stock forward uses N = x.numel() (batch included) and runs the observer checks on
        # every call; here only the fused op runs, with the paper's g.
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.scale.clamp_min(MIN_STEP_SIZE), self.zero_point,
                self.quant_min, self.quant_max, lsq.grad_scale(x))

    module = PaperScaledLearnableFakeQuantize(
        MovingAverageMinMaxObserver, quant_min=lsq.q_min, quant_max=lsq.q_max,
        scale=float(lsq.step_size.detach()), zero_point=0.0,
        dtype=torch.qint8 if lsq.q_min < 0 else torch.quint8,
    )
    module.enable_param_learning()
    module.zero_point.requires_grad_(False)  # LSQ has no zero point to learn
    return module


def swap_quantizers(model: nn.Module, make: Callable[[LsqQuantizer], nn.Module]) -> nn.Module:
    """Replace every (initialised) LsqQuantizer of ``model`` in place by ``make(quantizer)``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LsqQuantizer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, make(module))
    return model


# --- timing -----------------------------------------------------------------------------------


@dataclass
class Setting:
    name: str
    model: nn.Module
    baseline: str
    env: dict | None = None  # environment while this setting runs (LSQ_COMPILE=0)
    optimizer: torch.optim.Optimizer | None = None
    times: list | None = None
    error: str | None = None


@contextlib.contextmanager
def _environment(env: dict | None):
    saved = {key: os.environ.get(key) for key in env or {}}
    os.environ.update(env or {})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value



def _train_steps(setting: Setting, x, y, steps: int, device) -> float:
    """Seconds per step over ``steps`` training steps."""
    with _environment(setting.env):
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            setting.optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(setting.model(x), y).backward()
            setting.optimizer.step()
        sync(device)
    return (time.perf_counter() - start) / max(steps, 1)


def build_settings(device: torch.device, x: torch.Tensor, compile_model: bool) -> list[Setting]:
    torch.manual_seed(0)
    float_model = build_model("resnet20").to(device)
    row1 = quantize_model(copy.deepcopy(float_model), **ROW1)
    row4 = quantize_model(copy.deepcopy(float_model), **ROW4)
    # torch.ao's gradient mask passes v/s in (-0.5, 0), so its models keep their ReLUs.
    row4_relus = quantize_model(copy.deepcopy(float_model), **ROW4, absorb_relus=False)
    with torch.no_grad():  # initialise the step sizes once, so every row-4 variant shares them
        row1(x)
        row4(x)
        row4_relus(x)
    settings = [
        Setting("float", float_model, "float"),
        Setting("row1", row1, "float"),
        Setting("row4", row4, "float"),
        Setting("row4-relus-kept", row4_relus, "float"),
        Setting("row4-torch.ao", swap_quantizers(copy.deepcopy(row4_relus), torch_ao_quantizer), "float"),
        Setting("row4-detach-trick", swap_quantizers(copy.deepcopy(row4_relus), DetachTrickQuantizer),
                "float"),
        Setting("row4-eager", copy.deepcopy(row4), "float", env={"LSQ_COMPILE": "0"}),
    ]
    if compile_model:
        settings += [
            Setting("float-compiled-model", torch.compile(copy.deepcopy(float_model)),
                    "float-compiled-model"),
            Setting("row4-compiled-model", torch.compile(copy.deepcopy(row4)), "float-compiled-model"),
        ]
    for setting in settings:
        setting.model.to(device).train()
        setting.optimizer = torch.optim.SGD(setting.model.parameters(), lr=0.01, momentum=0.9)
        setting.times = []
    return settings


def run(settings: list[Setting], x, y, *, steps: int, warmup: int, rounds: int, device) -> None:
    """Warm every setting up, then time them interleaved; a failing setting is reported, not fatal."""

    def attempt(setting: Setting, n: int):
        if setting.error is not None:
            return None
        try:
            return _train_steps(setting, x, y, n, device)
        except Exception as error:  # noqa: BLE001 - e.g. torch.compile unavailable: report it
            setting.error = f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"
            return None

    for setting in settings:
        if warmup:
            attempt(setting, warmup)
    for index in range(rounds):
        shift = index % len(settings)
        for setting in settings[shift:] + settings[:shift]:
            seconds = attempt(setting, steps)
            if seconds is not None:
                setting.times.append(seconds)


# --- report -----------------------------------------------------------------------------------


def format_table(settings: list[Setting], batch_size: int) -> list[str]:
    medians = {s.name: statistics.median(s.times) for s in settings if s.times}
    lines = [f"{'setting':<22} {'ms/step':>9} {'images/s':>10} {'x baseline':>11}  baseline"]
    for s in settings:
        if s.name not in medians:
            lines.append(f"{s.name:<22} {'failed':>9}  {s.error}")
            continue
        seconds = medians[s.name]
        base = medians.get(s.baseline)
        ratio = f"{seconds / base:.2f}" if base else "n/a"
        lines.append(f"{s.name:<22} {seconds * 1e3:9.1f} {batch_size / seconds:10.0f} "
                     f"{ratio:>11}  {s.baseline}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lsq bench quantizer", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting first")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (median shown)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compile-model", action="store_true",
                        help="also time torch.compile(model), float and row 4")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--batch-size, --steps and --rounds must be >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available")
        return 2
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    settings = build_settings(device, x, args.compile_model)
    run(settings, x, y, steps=args.steps, warmup=args.warmup, rounds=args.rounds, device=device)

    print("LSQ quantizer benchmark: ResNet-20 training step (forward + backward + SGD), "
          "CIFAR-shaped synthetic input, float32")
    print(f"machine: {device_description(device)} | torch {torch.__version__} | device {device} | "
          f"batch {args.batch_size} | median of {args.rounds} rounds x {args.steps} steps "
          f"(warmup {args.warmup}) | LSQ_COMPILE={os.environ.get('LSQ_COMPILE', '1')}")
    for line in format_table(settings, args.batch_size):
        print(line)
    fallen_back = [k for k in (lsq_kernels.fake_quantize_kernel,
                               lsq_kernels.fake_quantize_backward_kernel) if k.failed]
    if fallen_back:
        print("note: torch.compile of the LSQ kernels failed; 'row4' ran the eager fallback")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
