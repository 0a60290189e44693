"""quantize_model and the model registry: placement, gradients, parameter counts, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lsq.quant.convert import quantize_model, quantizers, relus_feeding_one_conv, step_size_parameters
from lsq.quant.layers import QConv2d, QLinear
from lsq.models import MODELS, build_model
from lsq.quant.quantizer import TERNARY, UNSIGNED_2BIT, LsqQuantizer

RESNET20_PARAMS = 269_722  # He et al.'s ResNet-20 (option A shortcuts), 10 classes, RGB
RESNET18_PARAMS = 11_689_512  # torchvision resnet18, 1000 classes

# name: (builder kwargs, input shape)
REGISTRY_CASES = {
    "resnet20-rgb": ("resnet20", dict(num_classes=10, in_channels=3), (2, 3, 32, 32)),
    "resnet20-gray": ("resnet20", dict(num_classes=10, in_channels=1), (2, 1, 28, 28)),
    "resnet18": ("resnet18", dict(num_classes=10, weights=None), (2, 3, 64, 64)),
}
SETTINGS = {
    "row1": dict(weight_levels=TERNARY),
    "row4": dict(weight_levels=TERNARY, act_levels=UNSIGNED_2BIT, quantize_first_last=True),
    "acts-only-first-last-float": dict(weight_levels=None, act_levels=UNSIGNED_2BIT),
    "per-channel": dict(weight_levels=(-8, 7), act_levels=UNSIGNED_2BIT, per_channel=True),
}


def layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return build_model("resnet20")


# --- placement ----------------------------------------------------------------------------------


@pytest.mark.parametrize("act_levels", [None, UNSIGNED_2BIT], ids=["weights-only", "weights+acts"])
@pytest.mark.parametrize("first_last", [False, True], ids=["first-last-float", "first-last-quant"])
def test_placement(resnet20, first_last, act_levels):
    model = quantize_model(copy.deepcopy(resnet20), weight_levels=TERNARY, act_levels=act_levels,
                           quantize_first_last=first_last)
    assert model.first_last_layers == ("conv1", "fc")
    for name, module in layers(model):
        if name in ("conv1", "fc") and not first_last:
            assert type(module) in (nn.Conv2d, nn.Linear), name  # fully float
            continue
        assert isinstance(module, (QConv2d, QLinear)), name
        wq, aq = module.weight_quantizer, module.input_quantizer
        assert isinstance(wq, LsqQuantizer) and (wq.q_min, wq.q_max) == TERNARY and wq.kind == "weight"
        if name == "conv1" or act_levels is None:
            # The first conv's input is the normalised image: always float.
            assert aq is None, name
        else:
            assert (aq.q_min, aq.q_max, aq.kind) == (*UNSIGNED_2BIT, "activation"), name
    fc = model.fc
    last_input_quantized = isinstance(fc, QLinear) and fc.input_quantizer is not None
    assert last_input_quantized == (first_last and act_levels is not None)


def test_inner_layers_all_quantized(resnet20):
    model = quantize_model(copy.deepcopy(resnet20), act_levels=UNSIGNED_2BIT)
    inner = [m for n, m in layers(model) if n not in ("conv1", "fc")]
    assert len(inner) == 18
    assert all(isinstance(m, QConv2d) and m.input_quantizer is not None for m in inner)
    # 18 weight + 18 activation quantizers, named after their layer (optimizer groups use names).
    assert len(quantizers(model)) == 36
    assert len(step_size_parameters(model)) == 36
    assert "layer1.0.conv1.weight_quantizer.step_size" in step_size_parameters(model)


def test_conversion_copies_weights_and_keeps_function(resnet20):
    model = quantize_model(copy.deepcopy(resnet20))
    reference = dict(resnet20.named_parameters())
    for name, p in model.named_parameters():
        if not name.endswith("step_size"):
            assert torch.equal(p, reference[name]), name
    # A converted model is still the same network: with float quantizers removed it matches.
    assert set(reference) <= {n for n, _ in model.named_parameters()}


def test_first_last_chosen_by_name_not_shape():
    """A model whose first conv is not the first module by shape: names decide."""
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(3, 3, 1))
    model.add_module("body", nn.Conv2d(3, 3, 1))
    model.add_module("head", nn.Conv2d(3, 3, 1))
    quantize_model(model, first_last_names=("body", "stem"))
    assert type(model.stem) is nn.Conv2d and type(model.body) is nn.Conv2d
    assert isinstance(model.head, QConv2d)


# --- gradients through every registry model ----------------------------------------------------


@pytest.mark.parametrize("case, setting", [
    ("resnet20-rgb", "float"), ("resnet20-rgb", "row4"), ("resnet20-rgb", "per-channel"),
    ("resnet20-gray", "row4"), ("resnet18", "row4"),  # resnet18: 11.7 M weights, one run only
])
def test_every_parameter_gets_a_gradient(case, setting):
    name, kwargs, shape = REGISTRY_CASES[case]
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    if setting != "float":
        quantize_model(model, **SETTINGS[setting])
    model.train()
    x = torch.randn(shape)
    out = model(x)
    assert out.shape == (shape[0], kwargs["num_classes"])
    F.cross_entropy(out, torch.arange(shape[0]) % kwargs["num_classes"]).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{case}: {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    steps = [p for n, p in model.named_parameters() if n.endswith("step_size")]
    assert (len(steps) > 0) == (setting != "float")
    assert all(p.grad.abs().sum() > 0 for p in steps), "a step size got an all-zero gradient"


def test_registry_covers_all_models():
    assert set(MODELS) == {c[0] for c in REGISTRY_CASES.values()}
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg11")


# --- parameter counts ---------------------------------------------------------------------------


def test_parameter_counts_float():
    assert n_params(build_model("resnet20")) == RESNET20_PARAMS
    # 1 input channel: the first conv loses 2 * 16 * 3 * 3 weights.
    assert n_params(build_model("resnet20", in_channels=1)) == RESNET20_PARAMS - 2 * 16 * 9
    assert n_params(build_model("resnet18", weights=None, num_classes=1000)) == RESNET18_PARAMS
    assert n_params(build_model("resnet18", weights=None, num_classes=10)) == RESNET18_PARAMS - 990 * 513


@pytest.mark.parametrize("setting, extra", [
    ("row1", 18),  # 18 inner conv weight step sizes
    ("row4", 20 + 19),  # 20 weight step sizes, 19 activation (all but the first conv's input)
    ("acts-only-first-last-float", 18),
    ("per-channel", 16 * 6 + 32 * 6 + 64 * 6 + 18),  # one per output channel + 18 activation
])
def test_parameter_counts_quantized(resnet20, setting, extra):
    model = quantize_model(copy.deepcopy(resnet20), **SETTINGS[setting])
    assert n_params(model) == RESNET20_PARAMS + extra


def test_parameter_count_resnet18_row4():
    model = quantize_model(build_model("resnet18", weights=None), **SETTINGS["row4"])
    n_layers = 21  # 20 convs (3 of them 1x1 downsample shortcuts) + fc
    assert len(layers(model)) == n_layers
    assert n_params(model) == RESNET18_PARAMS + n_layers + (n_layers - 1)


# --- per channel ------------------------------------------------------------------------------


def test_per_channel_shapes(resnet20):
    model = quantize_model(copy.deepcopy(resnet20), **SETTINGS["per-channel"])
    model(torch.randn(2, 3, 32, 32))
    for name, module in layers(model):
        if not isinstance(module, (QConv2d, QLinear)):
            continue
        step = module.weight_quantizer.step_size
        assert step.shape == (module.weight.shape[0],), name
        assert step.unique().numel() > 1, f"{name}: per-channel init gave one value"
        assert module.input_quantizer.step_size.shape == ()


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path, resnet20):
    torch.manual_seed(1)
    model = quantize_model(copy.deepcopy(resnet20), **SETTINGS["row4"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for _ in range(2):  # init + a real step, so step sizes differ from their init values
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    expected = model(x)
    torch.save(model.state_dict(), tmp_path / "checkpoint.pt")

    fresh = quantize_model(build_model("resnet20"), **SETTINGS["row4"]).eval()
    with pytest.raises(RuntimeError, match="initialised"):
        fresh(x)  # not initialised yet: a clear error, not a silent identity
    fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True))
    for (name, q), (_, q_loaded) in zip(quantizers(model), quantizers(fresh)):
        assert torch.equal(q.step_size, q_loaded.step_size), name
        assert bool(q_loaded.initialized), name
    # Eval mode straight away, no training-mode forward: same outputs, step sizes untouched.
    assert torch.equal(fresh(x), expected)
    fresh.train()
    fresh(x)
    for (name, q), (_, q_loaded) in zip(quantizers(model), quantizers(fresh)):
        assert torch.equal(q.step_size, q_loaded.step_size), f"{name} was re-initialised"


def test_state_dict_names_initialized_flag(resnet20):
    state = quantize_model(copy.deepcopy(resnet20), **SETTINGS["row4"]).state_dict()
    assert "layer1.0.conv1.weight_quantizer.initialized" in state
    assert "layer1.0.conv1.input_quantizer.step_size" in state


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight_levels=(1, 1)), "smaller than"),
    (dict(weight_levels=(-1, 0.5)), "integer"),
    (dict(weight_levels=(-1, 0)), "at least 1"),
    (dict(act_levels=(0, 0)), "smaller than"),
    (dict(act_levels=(1, 3)), "zero is representable"),
    (dict(act_levels=("0", 3)), "integer"),
    (dict(weight_levels=None, act_levels=None), "weight_levels or act_levels"),
    (dict(first_last_names=("conv1", "classifier")), "not a module"),
    (dict(init_method="bogus"), "init_method"),
])
def test_bad_conversion_arguments(resnet20, kwargs, match):
    model = copy.deepcopy(resnet20)
    with pytest.raises(ValueError, match=match):
        quantize_model(model, **kwargs)


def test_model_without_first_last_names():
    with pytest.raises(ValueError, match="first_last_names"):
        quantize_model(nn.Sequential(nn.Conv2d(3, 3, 1), nn.Linear(3, 2)))


def test_bad_levels_leave_model_untouched(resnet20):
    model = copy.deepcopy(resnet20)
    with pytest.raises(ValueError):
        quantize_model(model, weight_levels=(2, 1))
    assert not quantizers(model)


# --- resnet18 weights --------------------------------------------------------------------------


def test_resnet18_loads_local_weights(tmp_path):
    torch.manual_seed(3)
    source = build_model("resnet18", weights=None, num_classes=1000)
    path = tmp_path / "resnet18-local.pth"
    torch.save(source.state_dict(), path)
    loaded = build_model("resnet18", weights_path=path)
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # A smaller head on top of the pretrained backbone (like weights=...): backbone kept.
    small = build_model("resnet18", weights_path=str(path), num_classes=10)
    assert small.fc.out_features == 10
    assert torch.equal(small.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_resnet18_missing_weights_file(tmp_path):
    missing = tmp_path / "nope" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match="nope/resnet18.pth"):
        build_model("resnet18", weights_path=missing)


def test_resnet18_weights_and_path_exclusive(tmp_path):
    with pytest.raises(ValueError, match="either"):
        build_model("resnet18", weights="IMAGENET1K_V1", weights_path=tmp_path / "x.pth")


# --- ReLUs absorbed by unsigned input quantizers ----------------------------------------------


def test_inner_relus_absorbed_only_with_unsigned_activations(resnet20):
    row4 = quantize_model(copy.deepcopy(resnet20), **SETTINGS["row4"])
    inner = relus_feeding_one_conv(resnet20)
    # Each block's inner ReLU; the output ReLU (F.relu) also feeds the next shortcut.
    assert inner == {f"layer{s}.{b}.relu1": f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3)}
    assert len(inner) == 9  # one per basic block
    for relu_name, conv_name in inner.items():
        assert isinstance(row4.get_submodule(relu_name), nn.Identity), relu_name
        assert row4.get_submodule(conv_name).input_quantizer.absorbs_relu, conv_name
    absorbing = [name for name, q in quantizers(row4) if q.absorbs_relu]
    assert sorted(absorbing) == sorted(f"{conv}.input_quantizer" for conv in inner.values())
    for kwargs in (SETTINGS["row1"], dict(weight_levels=TERNARY, act_levels=(-2, 1)),
                   dict(SETTINGS["row4"], absorb_relus=False)):
        kept = quantize_model(copy.deepcopy(resnet20), **kwargs)
        assert all(isinstance(kept.get_submodule(name), nn.ReLU) for name in inner), kwargs
        assert not any(q.absorbs_relu for _, q in quantizers(kept)), kwargs


def test_absorbed_relus_give_the_same_values_and_gradients(resnet20):
    """Absorbing the inner ReLUs changes nothing but speed: the same step-size initialisation,
    outputs and gradients (float64, where no value lands exactly on 0 before a ReLU)."""
    torch.manual_seed(2)
    base = copy.deepcopy(resnet20).double()
    absorbed = quantize_model(copy.deepcopy(base), **SETTINGS["row4"])
    kept = quantize_model(base, **SETTINGS["row4"], absorb_relus=False)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    for model in (absorbed, kept):
        model.train()
        F.cross_entropy(model(x), y).backward()
    for (name, a), (_, b) in zip(quantizers(absorbed), quantizers(kept)):
        torch.testing.assert_close(a.step_size, b.step_size, rtol=1e-12, atol=0, msg=name)
    for (name, a), (_, b) in zip(absorbed.named_parameters(), kept.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)
    absorbed.eval(), kept.eval()
    torch.testing.assert_close(absorbed(x), kept(x), rtol=1e-12, atol=1e-12)


def test_only_a_relu_called_once_and_read_by_one_conv_alone_is_absorbed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.conv3 = (nn.Conv2d(4, 4, 3, padding=1) for _ in range(3))
            self.fed, self.shared, self.summed = nn.ReLU(), nn.ReLU(), nn.ReLU()

        def forward(self, x):
            x = self.conv2(self.fed(self.conv1(x)))  # absorbable
            y = self.shared(x) + self.shared(-x)  # one module called twice
            z = self.summed(y)
            return self.conv3(z) + z  # read by the conv and the sum

    assert relus_feeding_one_conv(Net()) == {"fed": "conv2"}

    class Untraceable(Net):
        def forward(self, x):
            return self.conv2(self.fed(self.conv1(x))) if x.sum() > 0 else x

    assert relus_feeding_one_conv(Untraceable()) == {}


def test_first_and_last_layer_take_their_own_levels(resnet20):
    from lsq.levels import signed_levels, unsigned_levels

    model = quantize_model(resnet20, weight_levels=(-1, 1), act_levels=(0, 3), quantize_first_last=True,
                           first_last_weight_levels=signed_levels(8),
                           first_last_act_levels=unsigned_levels(8))
    levels = {name: (q.q_min, q.q_max) for name, q in quantizers(model)}
    assert levels["conv1.weight_quantizer"] == levels["fc.weight_quantizer"] == (-128, 127)
    assert levels["fc.input_quantizer"] == (0, 255)
    assert "conv1.input_quantizer" not in levels  # the normalised image stays float
    inner = {v for k, v in levels.items() if not k.startswith(("conv1.", "fc."))}
    assert inner == {(-1, 1), (0, 3)}


def test_first_last_levels_in_the_config_round_trip_through_yaml():
    from lsq.config import ConfigError, RunConfig, make_config
    from lsq.engine.recipe import build_run_model
    from lsq.levels import format_levels, parse_levels

    assert parse_levels("[-128..127]") == (-128, 127) and format_levels((0, 255)) == "[0..255]"
    assert format_levels((0, 3)) == "[0,1,2,3]"  # short sets stay as the seed table writes them
    config = make_config("synthetic", 4, "smoke").with_overrides(
        "quant.first_last_weight_levels=[-128..127]", "quant.first_last_act_levels=[0..255]")
    assert RunConfig.from_dict(config.to_dict()) == config
    levels = {name: (q.q_min, q.q_max) for name, q in quantizers(build_run_model(config))}
    assert levels["fc.weight_quantizer"] == (-128, 127) and levels["fc.input_quantizer"] == (0, 255)
    with pytest.raises(ConfigError, match="quant.first_last_weight_levels"):
        config.with_overrides("quant.first_last_weight_levels=[3..1]")
