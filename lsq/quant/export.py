"""Integer export of an LSQ model: codes + step sizes that reproduce the fake-quantized weights.

For a quantized layer with levels ``q_min..q_max`` and step size ``s`` (0-d, or one per output
channel), the forward uses ``W_hat = round(clip(W / s, q_min, q_max)) * s``. The export stores the
integer codes ``k = W_hat / s`` (integers in ``[q_min, q_max]``, taken from the quantizer's own
output by :meth:`~lsq.quant.quantizer.LsqQuantizer.integer_codes`) and ``s``; :func:`dequantize`
computes ``k * s`` in the same dtype as the forward, so the result is bitwise equal to the
quantizer's output.

Storage of the codes (``span = q_max - q_min``):

* ``span <= 3`` (ternary, 2-bit): packed 4 codes per ``uint8`` byte, little end first,
  ``byte = u0 | u1 << 2 | u2 << 4 | u3 << 6`` with ``u = k - q_min`` in ``0..3``;
* ``span <= 15`` (3-bit, 4-bit): packed 2 codes per ``uint8`` byte, ``byte = u0 | u1 << 4`` with
  ``u`` in ``0..15``;
* levels that fit ``[-128, 127]``: one ``int8`` per code;
* anything wider: one ``int16`` per code.

In the packed forms the last byte is zero-padded, and ``numel`` says how many codes are real.
Version 1 exports (written before the 4-bit packing existed) have no ``"4bit"`` layer and read
as before.

The export is a plain dict of tensors, ints, strings and lists, so that
``torch.load(path, weights_only=True)`` reads it::

    {"format": "lsq-export", "version": 2,
     "layers": {name: {"codes", "packing" ("2bit" | "4bit" | "int8" | "int16"), "shape", "numel",
                       "q_min", "q_max", "step_size", "per_channel", "dtype"}},
     "float_state": {key: tensor},   # the rest of state_dict: BN, biases, float layers,
                                     # activation step sizes
     "quantizer_keys": [key, ...]}   # the float_state keys that belong to LSQ quantizers

Summary (:func:`export_summary`): weight sparsity = fraction of zero codes (per layer and over
all quantized weights); ``export_bytes`` = bytes of every tensor in the export (codes, step
sizes, float state; pickle framing not counted); ``float32_bytes`` = the same model without
quantization stored in float32 (quantized weights at 4 bytes each plus the float state minus the
quantizers' own entries); ``compression_ratio = float32_bytes / export_bytes``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lsq.errors import ExportError
from lsq.quant.inspect import quantized_layers
from lsq.quant.quantizer import MIN_STEP_SIZE, LsqQuantizer
from lsq.runs import atomic_torch_save

FORMAT = "lsq-export"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # 2 added the "4bit" packing; a version-1 export reads unchanged
# Packed forms: name -> bits per code; a byte holds 8 // bits codes, the first in the low bits.
PACKED_BITS = {"2bit": 2, "4bit": 4}


# --- code packing ---------------------------------------------------------------------------


def pack_codes(codes: torch.Tensor, q_min: int, bits: int) -> torch.Tensor:
    """Pack integer codes in ``q_min..q_min+2^bits-1`` ``8 // bits`` to a ``uint8`` byte (see
    the module docstring); ``bits`` is 2 or 4."""
    per_byte, top = 8 // bits, (1 << bits) - 1
    u = (codes.flatten().to(torch.int16) - q_min).to(torch.uint8)
    if u.numel() and (int(u.max()) > top):
        raise ValueError(f"codes span more than {top + 1} levels from q_min={q_min}; "
                         f"cannot pack to {bits} bits")
    padding = (-u.numel()) % per_byte
    u = torch.cat([u, u.new_zeros(padding)]).view(-1, per_byte)
    packed = u[:, 0]
    for column in range(1, per_byte):
        packed = packed | (u[:, column] << (column * bits))
    return packed.contiguous()


def unpack_codes(packed: torch.Tensor, numel: int, q_min: int, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``numel`` codes, as int16."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=packed.device)
    u = (packed.reshape(-1, 1) >> shifts) & ((1 << bits) - 1)
    return u.flatten()[:numel].to(torch.int16) + q_min


def _packing(q_min: int, q_max: int) -> str:
    for packing, bits in PACKED_BITS.items():
        if q_max - q_min < 1 << bits:
            return packing
    if q_min >= -128 and q_max <= 127:
        return "int8"
    return "int16"


def encode_codes(codes: torch.Tensor, q_min: int, q_max: int) -> tuple[torch.Tensor, str]:
    """Store integer codes compactly; returns ``(stored tensor, packing name)``."""
    packing = _packing(q_min, q_max)
    if packing in PACKED_BITS:
        return pack_codes(codes, q_min, PACKED_BITS[packing]), packing
    return codes.flatten().to(getattr(torch, packing)).contiguous(), packing


def decode_codes(layer: dict) -> torch.Tensor:
    """The integer codes of an exported layer, int16, in the weight's shape."""
    if layer["packing"] in PACKED_BITS:
        flat = unpack_codes(layer["codes"], layer["numel"], layer["q_min"],
                            PACKED_BITS[layer["packing"]])
    else:
        flat = layer["codes"].to(torch.int16)
    return flat.reshape(layer["shape"])


# --- export / import ------------------------------------------------------------------------


def _export_layer(name: str, layer: nn.Module) -> dict:
    quantizer: LsqQuantizer = layer.weight_quantizer
    if not quantizer._initialized:
        raise RuntimeError(
            f"layer {name!r}: its weight step size was never initialised; run a training-mode "
            "forward or load a checkpoint before exporting"
        )
    codes = quantizer.integer_codes(layer.weight.detach())
    stored, packing = encode_codes(codes, quantizer.q_min, quantizer.q_max)
    return {
        "codes": stored.cpu(),
        "packing": packing,
        "shape": list(layer.weight.shape),
        "numel": layer.weight.numel(),
        "q_min": quantizer.q_min,
        "q_max": quantizer.q_max,
        "step_size": quantizer.step_size.detach().cpu().clone(),
        "per_channel": quantizer.per_channel,
        "dtype": str(layer.weight.dtype).removeprefix("torch."),
    }


def _weight_keys(name: str) -> tuple[str, str, str]:
    prefix = f"{name}." if name else ""
    return (f"{prefix}weight", f"{prefix}weight_quantizer.step_size",
            f"{prefix}weight_quantizer.initialized")


def export_model(model: nn.Module) -> dict:
    """The integer export of a converted, initialised model (format in the module docstring)."""
    layers = {name: _export_layer(name, layer) for name, layer in quantized_layers(model)}
    exported_keys = {key for name in layers for key in _weight_keys(name)}
    quantizer_prefixes = tuple(
        f"{name}." for name, module in model.named_modules() if isinstance(module, LsqQuantizer)
    )
    float_state = {
        key: value.detach().cpu().clone()
        for key, value in model.state_dict().items() if key not in exported_keys
    }
    return {
        "format": FORMAT,
        "version": VERSION,
        "layers": layers,
        "float_state": float_state,
        "quantizer_keys": [key for key in float_state if key.startswith(quantizer_prefixes)],
    }


def _check_export(export: dict) -> dict:
    if not isinstance(export, dict) or export.get("format") != FORMAT:
        raise ExportError("not an LSQ export (missing format='lsq-export')")
    if export.get("version") not in READABLE_VERSIONS:
        raise ExportError(f"unsupported LSQ export version {export.get('version')!r}; this lsq reads "
                          f"versions {', '.join(map(str, READABLE_VERSIONS))}: read it with the lsq that "
                          "wrote it, or export the run again (python -m lsq export RUN_DIR)")
    return export


def dequantize_layer(layer: dict) -> torch.Tensor:
    """``k * s`` in the forward's dtype: bitwise equal to the quantizer's output."""
    dtype = getattr(torch, layer["dtype"])
    # The forward clamps s to the floor before using it (lsq.quant.quantizer.MIN_STEP_SIZE).
    s = layer["step_size"].clamp_min(MIN_STEP_SIZE)
    codes = decode_codes(layer)
    if layer["per_channel"]:
        s = s.reshape(-1, *([1] * (codes.dim() - 1)))
    # The kernel computes round(...) * s in the promoted dtype of (weight, s) and casts back.
    compute = torch.promote_types(dtype, s.dtype)
    return (codes.to(compute) * s.to(compute)).to(dtype)


def dequantize(export: dict) -> dict[str, torch.Tensor]:
    """``{layer name: fake-quantized weight}`` for every exported layer."""
    _check_export(export)
    return {name: dequantize_layer(layer) for name, layer in export["layers"].items()}


def export_state_dict(export: dict) -> dict[str, torch.Tensor]:
    """A ``state_dict`` for the converted model: dequantized weights, step sizes, float state."""
    state = dict(_check_export(export)["float_state"])
    for name, layer in export["layers"].items():
        weight_key, step_key, init_key = _weight_keys(name)
        state[weight_key] = dequantize_layer(layer)
        state[step_key] = layer["step_size"]
        state[init_key] = torch.tensor(True)
    return state


def apply_export(model: nn.Module, export: dict) -> nn.Module:
    """Load an export into a converted model of the same architecture (strict); returns it.

    The loaded weights are already on the grid, so the weight quantizers map them to themselves
    and the model computes exactly what the exported model computed.
    """
    model.load_state_dict(export_state_dict(export), strict=True)
    return model


def save_export(model_or_export: nn.Module | dict, path: str | Path) -> Path:
    """Write the export atomically (temp file in the same directory, then ``os.replace``)."""
    export = export_model(model_or_export) if isinstance(model_or_export, nn.Module) else model_or_export
    path = Path(path)
    atomic_torch_save(export, path)
    return path


def load_export(path: str | Path) -> dict:
    """Read an export written by :func:`save_export` (``weights_only``: no code runs on load)."""
    return _check_export(torch.load(path, map_location="cpu", weights_only=True))


# --- summary --------------------------------------------------------------------------------


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _float32_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * 4 if tensor.is_floating_point() else _nbytes(tensor)


def _layer_summary(layer: dict) -> dict:
    codes = decode_codes(layer)
    zeros = int((codes == 0).sum())
    return {
        "shape": list(layer["shape"]),
        "numel": layer["numel"],
        "q_min": layer["q_min"],
        "q_max": layer["q_max"],
        "packing": layer["packing"],
        "zero_codes": zeros,
        "sparsity": zeros / max(layer["numel"], 1),
        "export_bytes": _nbytes(layer["codes"]) + _nbytes(layer["step_size"]),
        "float32_bytes": 4 * layer["numel"],
    }


def export_summary(model_or_export: nn.Module | dict) -> dict:
    """Weight sparsity, quantized weight count and sizes (definitions in the module docstring)."""
    export = export_model(model_or_export) if isinstance(model_or_export, nn.Module) else model_or_export
    _check_export(export)
    layers = {name: _layer_summary(layer) for name, layer in export["layers"].items()}
    quantizer_keys = set(export["quantizer_keys"])
    float_state = export["float_state"]
    export_bytes = sum(s["export_bytes"] for s in layers.values()) + sum(
        _nbytes(t) for t in float_state.values())
    float32_bytes = sum(s["float32_bytes"] for s in layers.values()) + sum(
        _float32_nbytes(t) for key, t in float_state.items() if key not in quantizer_keys)
    numel = sum(s["numel"] for s in layers.values())
    zeros = sum(s["zero_codes"] for s in layers.values())
    return {
        "layers": layers,
        "quantized_layers": len(layers),
        "quantized_weights": numel,
        "zero_codes": zeros,
        "weight_sparsity": zeros / numel if numel else None,
        "export_bytes": export_bytes,
        "float32_bytes": float32_bytes,
        "compression_ratio": float32_bytes / export_bytes if export_bytes else None,
    }
