"""Integer export: exact round trip, 2-bit packing, sparsity, sizes, atomic writes, runs."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from lsq.quant import export as lsq_export
from lsq.config import make_config
from lsq.errors import ExportError
from lsq.quant.convert import quantize_model
from lsq.engine.checkpoint import export_run
from lsq.quant.inspect import quantized_layers
from lsq.quant.export import (
    apply_export,
    decode_codes,
    dequantize,
    export_model,
    export_summary,
    load_export,
    pack_codes,
    save_export,
    unpack_codes,
)
from lsq.quant.layers import QConv2d, QLinear
from lsq.models import build_model
from lsq.quant.quantizer import TERNARY, UNSIGNED_2BIT, LsqQuantizer

# levels -> expected storage
LEVEL_CASES = {
    "ternary": (TERNARY, "2bit"),
    "2bit-unsigned": (UNSIGNED_2BIT, "2bit"),
    "2bit-signed": ((-2, 1), "2bit"),
    "3bit-signed": ((-4, 3), "4bit"),
    "4bit-signed": ((-8, 7), "4bit"),
    "4bit-unsigned": ((0, 15), "4bit"),
    "5bit-signed": ((-16, 15), "int8"),
    "8bit-signed": ((-128, 127), "int8"),
    "8bit-unsigned": ((0, 255), "int16"),
}


def _layer(kind, levels, per_channel, seed=0):
    torch.manual_seed(seed)
    if kind == "conv":
        layer = QConv2d(3, 5, 3, weight_quantizer=LsqQuantizer(
            *levels, per_channel=per_channel, num_channels=5 if per_channel else None))
        x = torch.randn(2, 3, 6, 6)
    else:
        layer = QLinear(7, 3, weight_quantizer=LsqQuantizer(
            *levels, per_channel=per_channel, num_channels=3 if per_channel else None))
        x = torch.randn(2, 7)
    layer(x)  # training mode: initialises the step size
    return layer


def _row4(seed=0, **kwargs):
    torch.manual_seed(seed)
    options = dict(weight_levels=TERNARY, act_levels=UNSIGNED_2BIT, quantize_first_last=True)
    options.update(kwargs)
    return quantize_model(build_model("resnet20"), **options)


def _train_a_step(model, x):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):  # init, then one update so weights and step sizes move off their init
        optimizer.zero_grad()
        F.cross_entropy(model(x), torch.arange(x.shape[0]) % 10).backward()
        optimizer.step()
    return model


# --- exact round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
@pytest.mark.parametrize("kind", ["conv", "linear"])
@pytest.mark.parametrize("case", list(LEVEL_CASES))
def test_round_trip_is_bitwise_exact(case, kind, per_channel, tmp_path):
    levels, packing = LEVEL_CASES[case]
    layer = _layer(kind, levels, per_channel)
    with torch.no_grad():  # step sizes away from the init value: nothing special about init
        layer.weight_quantizer.step_size.mul_(1.37)
    expected = layer.weight_quantizer(layer.weight).detach()

    export = export_model(layer)
    entry = export["layers"][""]
    assert entry["packing"] == packing
    if packing in ("2bit", "4bit"):
        assert entry["codes"].dtype == torch.uint8
        per_byte = 8 // int(packing[0])
        assert entry["codes"].numel() == math.ceil(layer.weight.numel() / per_byte)
    else:
        assert entry["codes"].dtype == getattr(torch, packing)
    assert torch.equal(dequantize(export)[""], expected)

    save_export(export, tmp_path / "export.pt")
    loaded = load_export(tmp_path / "export.pt")
    assert torch.equal(dequantize(loaded)[""], expected)
    codes = decode_codes(loaded["layers"][""])
    assert codes.shape == layer.weight.shape
    assert codes.min() >= levels[0] and codes.max() <= levels[1]


def test_codes_equal_the_quantizer_levels():
    layer = _layer("conv", TERNARY, False)
    s = layer.weight_quantizer.step_size.detach()
    codes = decode_codes(export_model(layer)["layers"][""])
    direct = torch.clamp(layer.weight.detach() / s, -1, 1).round()
    assert torch.equal(codes.float(), direct)


def test_export_file_loads_with_weights_only(tmp_path):
    model = _row4()
    model(torch.randn(2, 3, 32, 32))
    path = save_export(model, tmp_path / "sub" / "export.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "lsq-export" and set(raw["layers"]) == {n for n, _ in quantized_layers(model)}


# --- packing ----------------------------------------------------------------------------------


def test_pack_2bit_format_is_pinned():
    # u = code - q_min = [2, 0, 1, 2 | 2]: byte0 = 2 | 0 << 2 | 1 << 4 | 2 << 6 = 146, byte1 = 2.
    packed = pack_codes(torch.tensor([1, -1, 0, 1, 1]), q_min=-1, bits=2)
    assert packed.dtype == torch.uint8 and packed.tolist() == [146, 2]
    assert unpack_codes(packed, 5, -1, bits=2).tolist() == [1, -1, 0, 1, 1]


def test_pack_4bit_format_is_pinned():
    # u = code - q_min = [11, 0 | 15]: byte0 = 11 | 0 << 4 = 11, byte1 = 15 (high nibble padding).
    packed = pack_codes(torch.tensor([3, -8, 7]), q_min=-8, bits=4)
    assert packed.dtype == torch.uint8 and packed.tolist() == [11, 15]
    assert pack_codes(torch.tensor([0, 15]), q_min=0, bits=4).tolist() == [0 | 15 << 4]
    assert unpack_codes(packed, 3, -8, bits=4).tolist() == [3, -8, 7]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 41), bits=st.sampled_from([2, 4]), q_min=st.sampled_from([-8, -2, -1, 0]),
       data=st.data())
def test_pack_unpack_any_length(n, bits, q_min, data):
    top = q_min + (1 << bits) - 1
    codes = data.draw(st.lists(st.integers(q_min, top), min_size=n, max_size=n))
    codes = torch.tensor(codes, dtype=torch.int16)
    packed = pack_codes(codes, q_min, bits)
    assert packed.numel() == math.ceil(n / (8 // bits))
    assert torch.equal(unpack_codes(packed, n, q_min, bits), codes)


@pytest.mark.parametrize("bits, codes", [(2, [0, 4]), (4, [0, 16])])
def test_pack_rejects_wide_codes(bits, codes):
    with pytest.raises(ValueError, match=f"{bits} bits"):
        pack_codes(torch.tensor(codes), q_min=0, bits=bits)


def test_a_version_1_export_still_loads_and_a_newer_one_is_refused(tmp_path):
    # Version 1 had no "4bit" packing; its layers (2bit / int8 / int16) read unchanged.
    layer = _layer("conv", TERNARY, False)
    expected = layer.weight_quantizer(layer.weight).detach()
    export = export_model(layer)
    save_export({**export, "version": 1}, tmp_path / "v1.pt")
    assert torch.equal(dequantize(load_export(tmp_path / "v1.pt"))[""], expected)
    save_export({**export, "version": 3}, tmp_path / "v3.pt")
    with pytest.raises(ExportError, match="unsupported LSQ export version 3; this lsq reads versions 1, 2"):
        load_export(tmp_path / "v3.pt")


# --- summary ----------------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_sparsity_matches_direct_count(per_channel):
    model = _row4(per_channel=per_channel)
    _train_a_step(model, torch.randn(4, 3, 32, 32))
    summary = export_summary(model)
    total = zeros = 0
    for name, layer in quantized_layers(model):
        fake = layer.weight_quantizer(layer.weight).detach()
        layer_zeros = int((fake == 0).sum())
        assert summary["layers"][name]["zero_codes"] == layer_zeros, name
        assert summary["layers"][name]["sparsity"] == pytest.approx(layer_zeros / fake.numel())
        total += fake.numel()
        zeros += layer_zeros
    assert summary["quantized_weights"] == total
    assert summary["weight_sparsity"] == pytest.approx(zeros / total)
    assert 0 < summary["weight_sparsity"] < 1


def test_size_accounting():
    model = _row4()
    model(torch.randn(2, 3, 32, 32))
    summary = export_summary(model)
    layers = dict(quantized_layers(model))

    float_model_state = build_model("resnet20").state_dict()
    float32_bytes = sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
                        for t in float_model_state.values())
    assert summary["float32_bytes"] == float32_bytes

    weight_keys = {f"{n}.weight" for n in layers}
    rest = {k: t for k, t in float_model_state.items() if k not in weight_keys}
    rest_bytes = sum(t.numel() * t.element_size() for t in rest.values())
    codes_bytes = sum(math.ceil(layer.weight.numel() / 4) for layer in layers.values())
    n_step_sizes = 20 + 19  # weight + activation quantizers, one float32 each
    initialized_flags = 19  # activation quantizers' bool buffers stay in the float state
    assert summary["export_bytes"] == codes_bytes + 4 * n_step_sizes + initialized_flags + rest_bytes
    assert summary["compression_ratio"] == pytest.approx(float32_bytes / summary["export_bytes"])
    # Ternary weights at 2 bits: most of the 16x is kept (BN and step sizes stay float).
    assert 10 < summary["compression_ratio"] < 16
    assert summary["quantized_layers"] == 20


def test_summary_of_export_equals_summary_of_model():
    model = _row4()
    model(torch.randn(2, 3, 32, 32))
    assert export_summary(model) == export_summary(export_model(model))


# --- applying an export ------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_applied_export_gives_identical_outputs(tmp_path, per_channel):
    x = torch.randn(4, 3, 32, 32)
    model = _train_a_step(_row4(per_channel=per_channel), x).eval()
    expected = model(x)
    save_export(model, tmp_path / "export.pt")

    fresh = _row4(seed=123, per_channel=per_channel)  # other random weights, uninitialised
    apply_export(fresh, load_export(tmp_path / "export.pt")).eval()
    assert torch.equal(fresh(x), expected)
    # The stored weights are the fake-quantized ones (the integer model), not the latent floats.
    for name, layer in quantized_layers(fresh):
        assert torch.equal(layer.weight, layer.weight_quantizer(layer.weight)), name


def test_apply_to_wrong_architecture_fails():
    model = _row4()
    model(torch.randn(2, 3, 32, 32))
    other = quantize_model(build_model("resnet20"), weight_levels=TERNARY)  # no act quantizers
    with pytest.raises(RuntimeError, match="state_dict"):
        apply_export(other, export_model(model))


def test_export_before_init_names_the_layer():
    with pytest.raises(RuntimeError, match="layer .conv1.: its weight step size"):
        export_model(_row4())


def test_load_export_rejects_other_files(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an LSQ export"):
        load_export(tmp_path / "other.pt")


# --- atomic write -------------------------------------------------------------------------------


def test_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
    model = _row4()
    model(torch.randn(2, 3, 32, 32))
    target = tmp_path / "export.pt"
    target.write_bytes(b"previous export")

    def failing_save(obj, path_or_handle, *args, **kwargs):
        if hasattr(path_or_handle, "write"):
            path_or_handle.write(b"half a file")
        else:
            with open(path_or_handle, "wb") as handle:
                handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_export(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.pt"]
    assert target.read_bytes() == b"previous export"


# --- runs ---------------------------------------------------------------------------------------


def _make_run(run_dir, row):
    from lsq.engine.recipe import build_run_model

    config = make_config("synthetic", row, "smoke")
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config.to_yaml())
    torch.manual_seed(0)
    model = build_run_model(config)
    x = torch.randn(4, 3, 32, 32)
    if row:
        _train_a_step(model, x)
    torch.save({"model": model.state_dict(), "epoch": 1, "rng": {"numpy": np.random.get_state()}},
               run_dir / "checkpoint.pt")
    return config, model.eval(), x


def test_export_run(tmp_path):
    pytest.importorskip("torch")
    from lsq.engine.recipe import build_run_model

    run_dir = tmp_path / "row4" / "seed0"
    config, model, x = _make_run(run_dir, 4)
    summary = export_run(run_dir)
    path = run_dir / "export.pt"
    assert summary["path"] == str(path) and path.is_file()
    assert summary["file_bytes"] == path.stat().st_size
    assert summary["quantized_layers"] == 20 and 0 < summary["weight_sparsity"] < 1
    assert summary["export_bytes"] < summary["float32_bytes"]
    rebuilt = apply_export(build_run_model(config), load_export(path)).eval()
    assert torch.equal(rebuilt(x), model(x))

    other = tmp_path / "elsewhere.pt"
    assert export_run(run_dir, other)["path"] == str(other) and other.is_file()


def test_export_run_errors(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(ExportError, match="config.yaml"):
        export_run(tmp_path / "missing")
    float_run = tmp_path / "row0"
    _make_run(float_run, 0)
    with pytest.raises(ExportError, match="float run"):
        export_run(float_run)
    assert not (float_run / "export.pt").exists()


def test_export_entries_are_plain(tmp_path):
    """Only tensors, ints, bools, strings, lists and dicts: safe for weights_only loading."""
    model = _row4()
    model(torch.randn(2, 3, 32, 32))

    def check(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                assert isinstance(key, str)
                check(inner)
        elif isinstance(value, list):
            for inner in value:
                check(inner)
        else:
            assert isinstance(value, (torch.Tensor, int, bool, str)), type(value)

    check(export_model(model))
    assert lsq_export.FORMAT == "lsq-export"
    assert copy.deepcopy(export_model(model))["version"] == 2
