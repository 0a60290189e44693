"""ONNX export of an LSQ model: integer codes as int8 initializers, in one of three forms.

The model is traced with ``torch.fx`` (quantized layers and quantizers as leaves) and written
node by node with ``onnx.helper``, so every quantizer becomes exactly one known pattern.

Common to all forms:

* a quantized weight ``W_hat = k * s`` is an ``int8`` initializer ``<layer>.weight_codes``
  holding the codes ``k`` that :meth:`~lsq.quant.quantizer.LsqQuantizer.integer_codes` gives
  (ternary stays ``{-1, 0, 1}``), in PyTorch's layout;
* an activation quantizer with levels ``q_min..q_max`` and step size ``s`` is
  ``QuantizeLinear`` (scale ``s``, zero point 0, uint8 for ``q_min >= 0``, int8 otherwise) ->
  ``Clip(q_min, q_max)`` on the integers. QuantizeLinear saturates at the type's range only, so
  the Clip supplies LSQ's ``Q_P``; clipping the rounded integers equals rounding the clipped
  ``x / s`` (rounding is monotone and the bounds are integers), and QuantizeLinear divides by
  ``s`` and rounds half to even as ``torch.round`` does, so these are LSQ's own codes. The clip
  sits after QuantizeLinear rather than before it so that a layer whose output feeds only a
  quantizer is followed by QuantizeLinear directly, the pattern ONNX Runtime fuses;
* what the row leaves float (layers without quantizers, BatchNorm, ReLU, residual additions,
  pooling, the option-A shortcut's slice and pad) stays float.

Forms:

* ``"qdq"`` (default): weights ``DequantizeLinear(codes, s)`` (per tensor, or per channel with
  ``axis=0`` for per-channel quantizers), activations ``DequantizeLinear`` after the Clip, every
  other op as in PyTorch, biases and BatchNorm float. It computes what the PyTorch model
  computes, up to float32 rounding;
* ``"qlinear"``: ``"qdq"`` with each BatchNorm that reads a conv alone folded into it (codes
  unchanged, weight scale per output channel ``s_c = s * gamma_c / sqrt(var_c + eps)``, bias
  ``beta_c - mean_c * gamma_c / sqrt(var_c + eps)``), and the bias of each layer whose input and
  weight are quantized stored as int32 behind ``DequantizeLinear`` with scale ``s_x * s_c``, as
  ONNX Runtime needs it to fuse ``QLinearConv`` / ``QGemm``. Not exact: the bias is rounded to
  the accumulator's step ``s_x * s_c``, which at 2-bit activations and ternary weights is coarse;
* ``"integer"``: each layer whose input and weight are quantized is ``ConvInteger`` /
  ``MatMulInteger`` on the codes (int32 accumulators, exact), ``Cast`` to float, ``Mul`` by
  ``s_x * s_w``, then the float bias; layers with a float input use ``"qdq"``'s pattern. As
  exact as ``"qdq"``, and every such layer runs on an integer kernel.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

from lsq.errors import ExportError
from lsq.quant.inspect import unwrap
from lsq.quant.layers import QConv2d, QLinear
from lsq.quant.quantizer import MIN_STEP_SIZE, LsqQuantizer

OPSET = 17
FORMS = ("qdq", "qlinear", "integer")
INPUT = "input"
OUTPUT = "logits"
_INT64_MAX = 2**63 - 1


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ExportError("ONNX export needs the onnx package: pip install onnx") from None
    return onnx


class _Tracer(fx.Tracer):
    """Quantized layers and quantizers are single nodes: the exporter writes their pattern."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (QConv2d, QLinear, LsqQuantizer)) or super().is_leaf_module(
            module, qualified_name)


def _step_size(quantizer: LsqQuantizer) -> torch.Tensor:
    if not quantizer._initialized:
        raise ExportError("a quantizer's step size was never initialised; load a checkpoint "
                          "or run a training-mode forward before exporting")
    # The forward uses max(s, MIN_STEP_SIZE) (lsq.quant.kernels).
    return quantizer.step_size.detach().float().clamp_min(MIN_STEP_SIZE).cpu()


def _integer_type(q_min: int, q_max: int, what: str):
    onnx = _onnx()
    if 0 <= q_min and q_max <= 255:
        return onnx.TensorProto.UINT8, np.uint8
    if -128 <= q_min and q_max <= 127:
        return onnx.TensorProto.INT8, np.int8
    raise ExportError(f"{what}: levels [{q_min}..{q_max}] do not fit 8 bits; the ONNX export "
                      "stores 8-bit integers only")


class _Writer:
    """The ONNX graph being written: nodes, initializers, unique names."""

    def __init__(self):
        self.nodes, self.initializers, self._used = [], [], set()

    def name(self, base: str) -> str:
        name, k = base, 1
        while name in self._used:
            name, k = f"{base}_{k}", k + 1
        self._used.add(name)
        return name

    def const(self, base: str, array) -> str:
        from onnx import numpy_helper

        name = self.name(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attributes) -> str:
        from onnx import helper

        output = self.name(base)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output


class _Exporter:
    def __init__(self, model: nn.Module, form: str):
        self.model = model
        self.modules = dict(model.named_modules())
        self.form = form
        self.w = _Writer()
        self.env: dict[fx.Node, str] = {}
        self.folded: set[fx.Node] = set()

    # --- patterns ----------------------------------------------------------------------------

    def codes(self, x: str, quantizer: LsqQuantizer, base: str) -> tuple[str, str, str]:
        """QuantizeLinear -> Clip(q_min, q_max): the integer codes, their scale and zero point."""
        q_min, q_max = quantizer.q_min, quantizer.q_max
        _, np_type = _integer_type(q_min, q_max, base)
        scale = self.w.const(f"{base}.step_size", _step_size(quantizer).reshape(()).numpy())
        zero = self.w.const(f"{base}.zero_point", np.zeros((), np_type))
        q = self.w.node("QuantizeLinear", [x, scale, zero], f"{base}.quantized")
        info = np.iinfo(np_type)
        if (q_min, q_max) != (info.min, info.max):
            low = self.w.const(f"{base}.q_min", np.array(q_min, np_type))
            high = self.w.const(f"{base}.q_max", np.array(q_max, np_type))
            q = self.w.node("Clip", [q, low, high], f"{base}.codes")
        return q, scale, zero

    def activation(self, x: str, quantizer: LsqQuantizer, base: str) -> str:
        q, scale, zero = self.codes(x, quantizer, base)
        return self.w.node("DequantizeLinear", [q, scale, zero], f"{base}.dequantized")

    def weight(self, name: str, layer: nn.Module, channel_factor: np.ndarray | None):
        """The weight's tensor name and its per-output-channel scale (None: float weight)."""
        quantizer = getattr(layer, "weight_quantizer", None)
        weight = layer.weight.detach()
        if quantizer is None:
            array = weight.float().cpu().numpy().astype(np.float64)
            if channel_factor is not None:
                array = array * channel_factor.reshape(-1, *([1] * (array.ndim - 1)))
            return self.w.const(f"{name}.weight", array.astype(np.float32)), None
        _, np_type = _integer_type(quantizer.q_min, quantizer.q_max, f"{name} weight")
        codes = quantizer.integer_codes(weight).cpu().numpy().astype(np_type)
        s = _step_size(quantizer).numpy().astype(np.float64).reshape(-1)
        if channel_factor is not None:
            s = s * channel_factor
        scale = s.astype(np.float32)
        per_channel = scale.size > 1 or quantizer.per_channel
        shape = scale.shape if per_channel else ()
        codes_name = self.w.const(f"{name}.weight_codes", codes)
        scale_name = self.w.const(f"{name}.weight_scale", scale.reshape(shape))
        zero_name = self.w.const(f"{name}.weight_zero_point", np.zeros(shape, np_type))
        attributes = {"axis": 0} if per_channel else {}
        out = self.w.node("DequantizeLinear", [codes_name, scale_name, zero_name],
                          f"{name}.weight_dequantized", **attributes)
        return out, np.broadcast_to(scale, (weight.shape[0],))

    def bias(self, name: str, bias: np.ndarray | None, input_scale: float | None,
             weight_scale: np.ndarray | None) -> str | None:
        """int32 behind DequantizeLinear (scale ``s_x * s_w``) where the layer can run as an
        integer kernel, float32 elsewhere; None without a bias."""
        if bias is None:
            return None
        if input_scale is not None and weight_scale is not None:
            scale = np.float32(input_scale) * weight_scale.astype(np.float32)
            codes = np.round(bias / scale.astype(np.float64))
            if np.all(np.abs(codes) < 2**31 - 1):
                codes_name = self.w.const(f"{name}.bias_codes", codes.astype(np.int32))
                scale_name = self.w.const(f"{name}.bias_scale", scale)
                zero_name = self.w.const(f"{name}.bias_zero_point", np.zeros(scale.shape, np.int32))
                return self.w.node("DequantizeLinear", [codes_name, scale_name, zero_name],
                                   f"{name}.bias_dequantized", axis=0)
        return self.w.const(f"{name}.bias", bias.astype(np.float32))

    # --- graph walk --------------------------------------------------------------------------

    def _batchnorm_to_fold(self, node: fx.Node) -> nn.BatchNorm2d | None:
        users = list(node.users)
        if self.form != "qlinear" or len(users) != 1 or users[0].op != "call_module":
            return None
        bn = self.modules[users[0].target]
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            return None
        self.folded.add(users[0])
        return bn

    def _feeds_one_quantizer(self, node: fx.Node) -> bool:
        """Does this tensor go, alone, into one quantized layer's input quantizer (through
        Identity only)? Then its producer's output is followed by QuantizeLinear directly."""
        while True:
            users = list(node.users)
            if len(users) != 1 or users[0].op != "call_module":
                return False
            module = self.modules[users[0].target]
            if isinstance(module, nn.Identity):
                node = users[0]
                continue
            return (isinstance(module, (QConv2d, QLinear)) and module.input_quantizer is not None
                    and users[0].args[0] is node)

    def layer(self, node: fx.Node, module: nn.Module) -> str:
        name = node.target
        x = self.env[node.args[0]]
        input_q = getattr(module, "input_quantizer", None)
        weight_q = getattr(module, "weight_quantizer", None)
        if self.form == "integer" and input_q is not None and weight_q is not None:
            return self.integer_layer(name, x, module)
        if input_q is not None:
            x = self.activation(x, input_q, f"{name}.input")
        is_conv = isinstance(module, nn.Conv2d)
        bn = self._batchnorm_to_fold(node) if is_conv else None
        out_node = next(iter(node.users)) if bn is not None else node
        bias = None if module.bias is None else module.bias.detach().double().cpu().numpy()
        factor = None
        if bn is not None:
            factor = (bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
                      ).cpu().numpy()
            bias = (bn.bias.detach().double().cpu().numpy() - bn.running_mean.double().cpu().numpy()
                    * factor + (0 if bias is None else bias * factor))
        weight, weight_scale = self.weight(name, module, factor)
        # QLinearConv needs the output quantized; QGemm may output float.
        integer_bias = (self.form == "qlinear" and input_q is not None and weight_q is not None
                        and (not is_conv or self._feeds_one_quantizer(out_node)))
        bias_name = self.bias(name, bias, float(_step_size(input_q)) if integer_bias else None,
                              weight_scale if integer_bias else None)
        inputs = [x, weight] + ([bias_name] if bias_name else [])
        if not is_conv:
            return self.w.node("Gemm", inputs, name, transB=1)
        return self.w.node("Conv", inputs, name, **_conv_attributes(module))

    def integer_layer(self, name: str, x: str, module: nn.Module) -> str:
        """ConvInteger / MatMulInteger on the codes -> Cast -> Mul(s_x * s_w) -> Add(bias)."""
        input_q, weight_q = module.input_quantizer, module.weight_quantizer
        x_codes, _, x_zero = self.codes(x, input_q, f"{name}.input")
        _, np_type = _integer_type(weight_q.q_min, weight_q.q_max, f"{name} weight")
        codes = weight_q.integer_codes(module.weight.detach()).cpu().numpy().astype(np_type)
        codes = self.w.const(f"{name}.weight_codes", codes)
        w_zero = self.w.const(f"{name}.weight_zero_point", np.zeros((), np_type))
        is_conv = isinstance(module, nn.Conv2d)
        if is_conv:
            accumulator = self.w.node("ConvInteger", [x_codes, codes, x_zero, w_zero],
                                      f"{name}.accumulator", **_conv_attributes(module))
        else:
            transposed = self.w.node("Transpose", [codes], f"{name}.weight_codes_t", perm=[1, 0])
            accumulator = self.w.node("MatMulInteger", [x_codes, transposed, x_zero, w_zero],
                                      f"{name}.accumulator")
        # One float32 product, as each of the float layers' own products is.
        scale = (_step_size(input_q).reshape(()) * _step_size(weight_q).reshape(-1)).numpy()
        channels_axis = (-1, 1, 1) if is_conv else (-1,)
        scale = scale.reshape(channels_axis) if scale.size > 1 else scale.reshape(())
        as_float = self.w.node("Cast", [accumulator], f"{name}.accumulator_float",
                               to=_onnx().TensorProto.FLOAT)
        out = self.w.node("Mul", [as_float, self.w.const(f"{name}.output_scale", scale)],
                          name if module.bias is None else f"{name}.scaled")
        if module.bias is None:
            return out
        bias = module.bias.detach().float().cpu().numpy().reshape(channels_axis)
        return self.w.node("Add", [out, self.w.const(f"{name}.bias", bias)], name)

    def call_module(self, node: fx.Node) -> str:
        module = self.modules[node.target]
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            return self.layer(node, module)
        x = self.env[node.args[0]]
        if isinstance(module, LsqQuantizer) and module.kind == "activation":
            return self.activation(x, module, node.target)
        if isinstance(module, nn.BatchNorm2d):
            if node in self.folded:
                return x
            return self._batchnorm(node.target, x, module)
        if isinstance(module, nn.ReLU):
            return self.w.node("Relu", [x], node.target)
        if isinstance(module, nn.Identity):
            return x
        if isinstance(module, nn.MaxPool2d):
            return self.w.node("MaxPool", [x], node.target, **_pool_attributes(module))
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return self._global_pool(node.target, x, module.output_size)
        if isinstance(module, nn.Flatten):
            return self._flatten(node.target, x, node, module.start_dim, module.end_dim)
        raise ExportError(f"cannot export module {node.target!r} ({type(module).__name__}) to ONNX")

    def call_function(self, node: fx.Node) -> str:
        target, args, kwargs = node.target, node.args, node.kwargs
        base = node.name
        if target in (F.relu, torch.relu):
            return self.w.node("Relu", [self.env[args[0]]], base)
        if target in (operator.add, operator.iadd, torch.add) and not kwargs:
            return self.w.node("Add", [self._operand(a, base) for a in args[:2]], base)
        if target is operator.getitem:
            return self._slice(base, self.env[args[0]], args[1])
        if target is F.pad:
            return self._pad(base, node)
        if target is F.adaptive_avg_pool2d:
            return self._global_pool(base, self.env[args[0]], args[1] if len(args) > 1
                                     else kwargs["output_size"])
        if target is torch.flatten:
            return self._flatten(base, self.env[args[0]], args[0], *_flatten_dims(args, kwargs))
        raise ExportError(f"cannot export the function {getattr(target, '__name__', target)!r} "
                          f"(node {node.name}) to ONNX")

    def call_method(self, node: fx.Node) -> str:
        if node.target == "flatten":
            return self._flatten(node.name, self.env[node.args[0]], node.args[0],
                                 *_flatten_dims(node.args, node.kwargs))
        if node.target == "relu":
            return self.w.node("Relu", [self.env[node.args[0]]], node.name)
        raise ExportError(f"cannot export the method .{node.target}() (node {node.name}) to ONNX")

    # --- small float ops ---------------------------------------------------------------------

    def _operand(self, arg, base: str) -> str:
        if isinstance(arg, fx.Node):
            return self.env[arg]
        return self.w.const(f"{base}.constant", np.array(arg, np.float32))

    def _batchnorm(self, name: str, x: str, bn: nn.BatchNorm2d) -> str:
        if bn.running_mean is None:
            raise ExportError(f"BatchNorm {name!r} has no running statistics to export")
        channels = bn.num_features
        weight = bn.weight if bn.weight is not None else torch.ones(channels)
        bias = bn.bias if bn.bias is not None else torch.zeros(channels)
        inputs = [self.w.const(f"{name}.{key}", t.detach().float().cpu().numpy()) for key, t in
                  (("weight", weight), ("bias", bias), ("running_mean", bn.running_mean),
                   ("running_var", bn.running_var))]
        return self.w.node("BatchNormalization", [x, *inputs], name, epsilon=float(bn.eps))

    def _global_pool(self, base: str, x: str, output_size) -> str:
        if output_size not in (1, (1, 1), [1, 1]):
            raise ExportError(f"{base}: only adaptive average pooling to 1x1 is exported to ONNX")
        return self.w.node("GlobalAveragePool", [x], base)

    def _flatten(self, base: str, x: str, source: fx.Node, start_dim: int, end_dim: int) -> str:
        rank = len(source.meta["tensor_meta"].shape)
        if start_dim != 1 or end_dim not in (-1, rank - 1):
            raise ExportError(f"{base}: only flatten(x, 1) is exported to ONNX")
        return self.w.node("Flatten", [x], base, axis=1)

    def _slice(self, base: str, x: str, index) -> str:
        index = index if isinstance(index, tuple) else (index,)
        starts, ends, axes, steps = [], [], [], []
        for axis, item in enumerate(index):
            if not isinstance(item, slice) or (item.step is not None and item.step < 1):
                raise ExportError(f"{base}: only slicing with positive steps is exported to ONNX")
            if item == slice(None):
                continue
            starts.append(item.start or 0)
            ends.append(_INT64_MAX if item.stop is None else item.stop)
            axes.append(axis)
            steps.append(item.step or 1)
        if not axes:
            return x
        inputs = [self.w.const(f"{base}.{key}", np.array(v, np.int64)) for key, v in
                  (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))]
        return self.w.node("Slice", [x, *inputs], base)

    def _pad(self, base: str, node: fx.Node) -> str:
        args, kwargs = node.args, node.kwargs
        pad = list(args[1] if len(args) > 1 else kwargs["pad"])
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        value = args[3] if len(args) > 3 else kwargs.get("value", None)
        if mode != "constant" or value not in (None, 0, 0.0):
            raise ExportError(f"{base}: only zero padding is exported to ONNX")
        rank = len(args[0].meta["tensor_meta"].shape)
        begins, ends = [0] * rank, [0] * rank
        for k in range(len(pad) // 2):  # F.pad lists (begin, end) pairs from the last axis on
            begins[rank - 1 - k], ends[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
        pads = self.w.const(f"{base}.pads", np.array(begins + ends, np.int64))
        return self.w.node("Pad", [self.env[args[0]], pads], base, mode="constant")

    # --- the whole model ---------------------------------------------------------------------

    def run(self, input_shape: tuple[int, ...]):
        onnx = _onnx()
        from onnx import helper

        try:
            graph_module = fx.GraphModule(self.model, _Tracer().trace(self.model))
        except Exception as error:  # noqa: BLE001 - any tracing failure is "not exportable"
            raise ExportError(f"the model cannot be traced for ONNX export "
                              f"({type(error).__name__}: {error})") from None
        example = torch.zeros(1, *input_shape[1:], device=_device(self.model))
        with torch.no_grad():
            ShapeProp(graph_module).propagate(example)
        output_meta = None
        for node in graph_module.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = INPUT
                self.w._used.add(INPUT)
            elif node.op == "output":
                result = node.args[0]
                output_meta = result.meta["tensor_meta"]
                self.w.nodes.append(helper.make_node("Identity", [self.env[result]], [OUTPUT],
                                                     name=OUTPUT))
            elif node.op in ("call_module", "call_function", "call_method"):
                self.env[node] = getattr(self, node.op)(node)
            else:
                raise ExportError(f"cannot export fx node {node.name} ({node.op}) to ONNX")
        graph = helper.make_graph(
            self.w.nodes, "lsq", [helper.make_tensor_value_info(
                INPUT, onnx.TensorProto.FLOAT, ["batch", *input_shape[1:]])],
            [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                           ["batch", *output_meta.shape[1:]])],
            self.w.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                 producer_name="lsq-repro")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _pairs(value, what: str) -> list[int]:
    if isinstance(value, str):
        raise ExportError(f"{what}={value!r} is not exported to ONNX; use explicit integers")
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def _conv_attributes(conv: nn.Conv2d) -> dict:
    if conv.padding_mode != "zeros":
        raise ExportError(f"padding_mode={conv.padding_mode!r} is not exported to ONNX")
    pads = _pairs(conv.padding, "padding")
    return {"kernel_shape": list(conv.kernel_size), "strides": list(conv.stride),
            "pads": pads + pads, "dilations": list(conv.dilation), "group": conv.groups}


def _pool_attributes(pool: nn.MaxPool2d) -> dict:
    if pool.return_indices:
        raise ExportError("MaxPool2d(return_indices=True) is not exported to ONNX")
    pads = _pairs(pool.padding, "padding")
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return {"kernel_shape": _pairs(pool.kernel_size, "kernel_size"),
            "strides": _pairs(stride, "stride"),
            "pads": pads + pads, "dilations": _pairs(pool.dilation, "dilation"),
            "ceil_mode": int(pool.ceil_mode)}


def _flatten_dims(args, kwargs) -> tuple[int, int]:
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return start, end


def to_onnx(model: nn.Module, input_shape: tuple[int, ...], *, form: str = "qdq"):
    """The ``onnx.ModelProto`` of ``model`` (its quantizers initialised) in ``form`` (see the
    module docstring), for inputs of ``input_shape`` = ``(N, C, H, W)``; the batch dimension is
    left free. The model is traced in eval mode and its training flag restored afterwards. The
    result passes ``onnx.checker.check_model``."""
    if form not in FORMS:
        raise ExportError(f"unknown ONNX form {form!r}; choose one of {', '.join(FORMS)}")
    onnx = _onnx()
    model = unwrap(model)
    training = model.training
    model.eval()
    try:
        proto = _Exporter(model, form).run(tuple(input_shape))
    finally:
        model.train(training)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def weight_codes(proto) -> dict[str, np.ndarray]:
    """``{layer name: int8 codes}`` of every quantized weight in an exported graph."""
    from onnx import numpy_helper

    suffix = ".weight_codes"
    return {t.name[:-len(suffix)]: numpy_helper.to_array(t) for t in proto.graph.initializer
            if t.name.endswith(suffix)}
