"""Turn a float model into an LSQ model: swap Conv2d/Linear for QConv2d/QLinear in place.

Placement (the seed table's ``quan_lr`` column is ``quantize_first_last``):

* every Conv2d / Linear except the first conv and the last linear: weight quantized with
  ``weight_levels`` and, when ``act_levels`` is given, input quantized with ``act_levels``
  (inputs are post-ReLU in the ResNets, so unsigned levels fit);
* ``quantize_first_last=False``: the first conv and the last linear stay fully float;
* ``quantize_first_last=True``: their weights are quantized with ``weight_levels`` and the last
  linear's input with ``act_levels``; the first conv's input is the normalised image (signed,
  not a ReLU output) and stays float.

The first and last layer are chosen by module name (``model.first_last_layers``, set by the model
registry, or the ``first_last_names`` argument), never by shape.

With unsigned activation levels (``q_min = 0``) a ReLU module whose output only one quantized conv
reads (found by tracing the model with ``torch.fx``: ResNet-20's inner block ReLUs) is replaced
by ``nn.Identity`` and that conv's input quantizer absorbs it (``absorbs_relu``): the clip at 0
is the ReLU, so the values and gradients are the same and one pass over the tensor is saved,
forward and backward. ``absorb_relus=False`` keeps the ReLU modules.
"""

from __future__ import annotations

from torch import nn

from lsq.quant.layers import QConv2d, QLinear
from lsq.quant.quantizer import Levels, LsqQuantizer, check_levels


def _first_last_names(model: nn.Module, names: tuple[str, str] | None) -> tuple[str, str]:
    names = names or getattr(model, "first_last_layers", None)
    if names is None:
        raise ValueError(
            "quantize_model needs the first conv and last linear layer names: pass "
            "first_last_names=('conv1', 'fc') or set model.first_last_layers"
        )
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ValueError(f"first/last layer {name!r} is not a module of the model")
    return tuple(names)


def quantize_model(
    model: nn.Module,
    *,
    weight_levels: Levels | None = (-1, 1),
    act_levels: Levels | None = None,
    quantize_first_last: bool = False,
    per_channel: bool = False,
    first_last_names: tuple[str, str] | None = None,
    first_last_weight_levels: Levels | None = None,
    first_last_act_levels: Levels | None = None,
    absorb_relus: bool = True,
    **quantizer_options,
) -> nn.Module:
    """Replace every Conv2d/Linear of ``model`` in place with its quantized twin; returns it.

    ``quantizer_options`` (``init_scale``, ``init_method``, ``use_grad_scale``) go to every
    :class:`~lsq.quant.quantizer.LsqQuantizer` (ablations). With ``quantize_first_last``, the
    first and last layer's weights take ``first_last_weight_levels`` and the last layer's input
    ``first_last_act_levels`` where given (the LSQ paper's 8 bits), else the others' levels.
    """
    if weight_levels is None and act_levels is None:
        raise ValueError("quantize_model needs weight_levels or act_levels (or both)")
    if weight_levels is not None:
        weight_levels = check_levels(*weight_levels)
    if act_levels is not None:
        act_levels = check_levels(*act_levels)
    first, last = _first_last_names(model, first_last_names)
    edge_weights = check_levels(*first_last_weight_levels) if first_last_weight_levels else weight_levels
    edge_acts = check_levels(*first_last_act_levels) if first_last_act_levels else act_levels

    def weight_quantizer(module, levels):
        if levels is None:
            return None
        return LsqQuantizer(*levels, kind="weight", per_channel=per_channel,
                            num_channels=module.weight.shape[0] if per_channel else None,
                            **quantizer_options)

    def input_quantizer(levels):
        if levels is None:
            return None
        return LsqQuantizer(*levels, kind="activation", **quantizer_options)

    replacements = {}
    for name, module in model.named_modules():
        if isinstance(module, (QConv2d, QLinear)) or not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if name in (first, last) and not quantize_first_last:
            continue
        quantize_input = name != first
        edge = name in (first, last)
        twin = QConv2d if isinstance(module, nn.Conv2d) else QLinear
        replacements[name] = twin.from_float(
            module,
            weight_quantizer=weight_quantizer(module, edge_weights if edge else weight_levels),
            input_quantizer=input_quantizer(edge_acts if edge else act_levels) if quantize_input else None,
        )
    if absorb_relus and act_levels is not None and act_levels[0] == 0:
        feeds = relus_feeding_one_conv(model)
        for relu_name, conv_name in feeds.items():
            conv = replacements.get(conv_name)
            if conv is not None and conv.input_quantizer is not None:
                conv.input_quantizer.absorbs_relu = True
                replacements[relu_name] = nn.Identity()
    for name, replacement in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacement)
    return model


def relus_feeding_one_conv(model: nn.Module) -> dict[str, str]:
    """``{ReLU module: the Conv2d that alone reads its output}`` in ``model``'s traced graph. A
    ReLU module called more than once, or whose output anything else reads (a residual sum),
    is left out; so is every ReLU of a model ``torch.fx`` cannot trace."""
    from torch import fx

    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - absorbing ReLUs is a speed-up, never part of the result
        return {}
    modules = dict(model.named_modules())
    calls: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    feeds = {}
    for name, nodes in calls.items():
        if not isinstance(modules.get(name), nn.ReLU) or len(nodes) != 1:
            continue
        users = list(nodes[0].users)
        if (len(users) == 1 and users[0].op == "call_module"
                and isinstance(modules.get(users[0].target), nn.Conv2d)):
            feeds[name] = users[0].target
    return feeds


def quantizers(model: nn.Module):
    """``(name, LsqQuantizer)`` pairs of a converted model, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LsqQuantizer)]


def is_step_size(parameter_name: str) -> bool:
    """Step sizes are selected by parameter name (optimizer groups, projection), never by shape."""
    return parameter_name.endswith("step_size")


def step_size_parameters(model: nn.Module):
    """Names of the step-size parameters."""
    return [name for name, _ in model.named_parameters() if is_step_size(name)]
