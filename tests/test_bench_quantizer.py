"""The quantizer benchmark runs end to end (tiny settings) and prints every setting's ratio."""

from __future__ import annotations

import copy
import os

import torch

from lsq.bench import quantizer as bench
from lsq.quant.convert import quantize_model
from lsq.models import build_model

SETTINGS = ("float", "row1", "row4", "row4-relus-kept", "row4-torch.ao", "row4-detach-trick",
            "row4-eager")


def test_bench_prints_every_setting(capsys):
    before = os.environ.get("LSQ_COMPILE")
    assert bench.main(["--device", "cpu", "--batch-size", "8", "--steps", "1", "--warmup", "0",
                       "--rounds", "1"]) == 0
    assert os.environ.get("LSQ_COMPILE") == before  # the eager setting restores the environment
    out = capsys.readouterr().out
    assert "torch " + torch.__version__ in out and "batch 8" in out and "machine: " in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    for name in SETTINGS:
        assert name in rows, f"{name} missing from:\n{out}"
        ms, images, ratio = (float(v) for v in rows[name][1:4])
        assert ms > 0 and images > 0 and ratio > 0, rows[name]
    assert float(rows["float"][3]) == 1.0


def test_alternative_quantizers_match_the_default_forward():
    """The swapped row-4 models quantize the same layers with the same step sizes."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    float_model = build_model("resnet20")
    row4 = quantize_model(copy.deepcopy(float_model), **bench.ROW4)
    row4_relus = quantize_model(float_model, **bench.ROW4, absorb_relus=False)
    row4(x)  # initialise
    row4_relus(x)
    row4.eval()
    expected = row4(x)
    for make in (bench.DetachTrickQuantizer, bench.torch_ao_quantizer):
        other = bench.swap_quantizers(copy.deepcopy(row4_relus), make).eval()
        assert not any(isinstance(m, bench.LsqQuantizer) for m in other.modules())
        torch.testing.assert_close(other(x), expected, rtol=1e-4, atol=1e-4)


def test_detach_trick_has_the_paper_gradients():
    """The detach-trick formulation is the paper's math (a fair speed comparison)."""
    torch.manual_seed(0)
    lsq = bench.LsqQuantizer(0, 3, kind="activation")
    x = torch.rand(4, 3, 5, 5) * 2
    lsq(x)
    other = bench.DetachTrickQuantizer(lsq)
    grads = []
    for q in (lsq, other):
        xi = x.clone().requires_grad_()
        (q(xi) * torch.arange(xi.numel()).reshape(xi.shape)).sum().backward()
        grads.append((xi.grad, q.step_size.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)
