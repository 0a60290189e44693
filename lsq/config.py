"""Run configuration: frozen dataclasses, YAML in and out, dotted overrides, unknown keys rejected.

Every choice the paper does not publish lives here, in one place:

* batch size 128 (CIFAR-10, Fashion-MNIST, synthetic) and 256 (ImageNet), test batch 512;
* float baselines trained from scratch (CIFAR-10, Fashion-MNIST, synthetic): SGD momentum 0.9,
  lr 0.1, weight decay 5e-4, cosine schedule, same epoch count as the quantized rows of the
  profile; ImageNet's float row is torchvision's pretrained ResNet-18, evaluated (0 epochs);
* quantized rows (the published recipe): start from the float model of the same dataset, profile
  and seed, SGD momentum 0.9, lr 0.01, cosine schedule; weight decay 1e-4 on weights (the LSQ
  paper's ImageNet value), none on step sizes, step-size lr factor 1;
* profiles scale the work, never the method: ``paper`` (90 epochs, full data), ``full`` (all
  of Fashion-MNIST at a budget a 2-core CPU trains to convergence), ``quick`` (a CPU-feasible
  real-data budget per dataset, below) and ``smoke`` (seconds).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import yaml

from lsq.errors import ConfigError  # noqa: F401 - part of this module's API
from lsq.experiments import PROFILES, TABLES, get_ablation, get_table
from lsq.levels import Levels, format_levels, parse_levels
from lsq.runs import RunId

SCHEDULERS = ("cosine", "step", "constant")
INIT_METHODS = ("lsq", "maxabs")
# The models the tables train (lsq.models builds them; importing it here would load torch).
MODELS = tuple(sorted({table.model for table in TABLES.values()}))
DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64 bits; one to spare for the sign

# --- validation: every dataclass checks its values when it is built (make_config, from_yaml,
# with_overrides and replace all construct one), so a bad value fails before anything is written.

# The lsq train flags that set a key: the message names what the user typed.
_FLAGS = {"optim.epochs": "--epochs", "optim.batch_size": "--batch-size", "optim.lr": "--lr",
          "data.workers": "--workers", "seed": "--seed", "device": "--device"}


def _bad(key: str, allowed: str, value) -> ConfigError:
    flag = f" ({_FLAGS[key]})" if key in _FLAGS else ""
    return ConfigError(f"{key}{flag} must be {allowed}, got {value!r}")


def _check_int(key: str, value, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(key, f"an integer >= {low}{note}", value)


def _check_number(key: str, value, allowed: str, ok) -> None:
    """A finite int or float for which ``ok(value)`` holds; ``allowed`` says which in words."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not ok(value):
        raise _bad(key, f"a finite number {allowed}", value)


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise _bad(key, f"one of {', '.join(map(str, choices))}", value)


@dataclass(frozen=True)
class DataConfig:
    data_dir: str | None = None
    train_subset: int | None = None  # first N of a fixed seeded permutation; None = all
    test_subset: int | None = None
    workers: int = 4  # ImageNet only: decoding worker processes
    download: bool = False  # torchvision download where the internet is reachable

    def __post_init__(self):
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None:  # 0 must not read as "all": None says that
                _check_int(f"data.{name}", value, 1, note=" (images), or null for the whole split")
        _check_int("data.workers", self.workers, 0)


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 90
    batch_size: int = 128
    eval_batch_size: int = 512
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # cosine | step | constant
    step_size_lr_factor: float = 1.0
    step_size_weight_decay: float = 0.0
    distill: bool = False  # quantized rows: distil the run's own float baseline (T = 1, 1:1)
    # Row 0's control: start from the trained row 0 (its checkpoint), as rows 1-4 always do.
    from_baseline: bool = False

    def __post_init__(self):
        # 0 epochs: evaluate only (ImageNet's pretrained row 0; a quantized row's calibration).
        _check_int("optim.epochs", self.epochs, 0)
        _check_int("optim.batch_size", self.batch_size, 1)
        _check_int("optim.eval_batch_size", self.eval_batch_size, 1)
        _check_number("optim.lr", self.lr, "> 0", lambda v: v > 0)
        _check_number("optim.momentum", self.momentum, "in [0, 1)", lambda v: 0 <= v < 1)
        _check_number("optim.weight_decay", self.weight_decay, ">= 0", lambda v: v >= 0)
        _check_number("optim.step_size_weight_decay", self.step_size_weight_decay, ">= 0",
                      lambda v: v >= 0)
        _check_choice("optim.scheduler", self.scheduler, SCHEDULERS)
        _check_number("optim.step_size_lr_factor", self.step_size_lr_factor, "> 0", lambda v: v > 0)


@dataclass(frozen=True)
class QuantConfig:
    weight_levels: str = "none"  # the seed table's notation, e.g. "[-1,0,1]"
    act_levels: str = "none"
    quantize_first_last: bool = False
    per_channel: bool = False
    init_scale: float = 1.0
    init_method: str = "lsq"  # lsq | maxabs
    grad_scale: bool = True
    # With quantize_first_last: the first and last layer's own levels (the LSQ paper keeps them at
    # 8 bits, "[-128..127]" and "[0..255]"); None quantizes them like every other layer.
    first_last_weight_levels: str | None = None
    first_last_act_levels: str | None = None

    def __post_init__(self):
        for name in ("weight_levels", "act_levels", "first_last_weight_levels",
                     "first_last_act_levels"):
            try:
                parse_levels(getattr(self, name))
            except ConfigError as error:
                raise ConfigError(f"quant.{name}: {error}") from None
        _check_number("quant.init_scale", self.init_scale, "> 0", lambda v: v > 0)
        _check_choice("quant.init_method", self.init_method, INIT_METHODS)

    @property
    def weight_range(self) -> Levels | None:
        return parse_levels(self.weight_levels)

    @property
    def act_range(self) -> Levels | None:
        return parse_levels(self.act_levels)

    @property
    def is_float(self) -> bool:
        return self.weight_range is None and self.act_range is None


@dataclass(frozen=True)
class RunConfig:
    dataset: str = "synthetic"
    row: int = 0
    profile: str = "smoke"
    seed: int = 0
    ablation: str | None = None
    model: str = "resnet20"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bf16 autocast
    channels_last: bool = False
    compile_model: bool | None = None  # torch.compile the whole model; None: auto (CUDA, long CPU runs)
    cuda_graphs: bool | None = None  # capture the training step; None: on for one CUDA device
    pretrained_weights: str | None = None  # ImageNet row 0: local torchvision weights file
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)

    def __post_init__(self):
        table = get_table(self.dataset)  # unknown names raise, listing the known ones
        _check_choice("profile", self.profile, PROFILES)
        table.row(self.row)
        # A negative seed would train into seed-1/, a folder the run format does not know.
        _check_int("seed", self.seed, 0)
        if self.seed > MAX_SEED:
            raise _bad("seed", "below 2**63 (torch seeds are 64-bit)", self.seed)
        if self.optim.distill and table.row(self.row).is_float:
            raise ConfigError("optim.distill (--distill) trains a quantized row (1-4) against its "
                              "float baseline as teacher; row 0 is that baseline")
        if self.optim.from_baseline and not table.row(self.row).is_float:
            raise ConfigError("optim.from_baseline trains the float row 0 on from its trained "
                              "model; rows 1-4 always start from it, so leave it out there")
        if self.ablation:
            ablation = get_ablation(self.ablation)  # unknown names raise, listing the known ones
            if table.row(self.row).is_float and not ablation.float_row:
                raise ConfigError(f"ablation {self.ablation} applies to quantized rows (1-4), not "
                                  "the float row 0")
            if ablation.float_row and not table.row(self.row).is_float:
                raise ConfigError(f"ablation {self.ablation} is a control of the float row 0; "
                                  "use --row 0")
        _check_choice("model", self.model, MODELS)
        if not isinstance(self.device, str) or not DEVICE.fullmatch(self.device):
            raise _bad("device", "auto, cpu, cuda or cuda:N", self.device)

    @property
    def starts_from_baseline(self) -> bool:
        """Whether the run starts from its float baseline's trained model: rows 1-4, and row 0's
        control (``optim.from_baseline``)."""
        return not self.quant.is_float or self.optim.from_baseline

    @property
    def run_name(self) -> str:
        return RunId(self.dataset, self.profile, self.row, self.ablation or "", self.seed).run_name

    def run_dir(self, runs_dir: str | Path) -> Path:
        """``<runs>/<dataset>/<profile>/row<k>[-<ablation>]/seed<s>``."""
        return RunId(self.dataset, self.profile, self.row, self.ablation or "", self.seed).path(runs_dir)

    def result_defining(self) -> "RunConfig":
        """This config without where and how the run executes (device, compilation, CUDA graphs,
        data location, loader workers, download): what may change between an interrupted run
        and its resume, or between a run and its reproduction, without changing its result."""
        return replace(self, device="auto", compile_model=None, cuda_graphs=None,
                       data=replace(self.data, data_dir=None, workers=0, download=False))

    def baseline(self) -> "RunConfig":
        """The float run a quantized row starts from (same profile and seed): row 0 of its table,
        or of the table it takes its float models from (``Table.baseline_from``)."""
        return make_config(get_table(self.dataset).baseline_from or self.dataset, 0, self.profile,
                           self.seed)

    # --- YAML ------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return _from_dict(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        with open(path) as handle:
            try:
                data = yaml.safe_load(handle)
            except yaml.YAMLError as error:
                raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} does not hold a YAML mapping")
        try:
            return cls.from_dict(data)
        except ConfigError as error:
            raise ConfigError(f"{path}: {error}") from None

    def with_overrides(self, *overrides: str) -> "RunConfig":
        """Apply ``"optim.lr=0.02"``-style overrides; unknown keys and bad values raise."""
        config = self
        for override in overrides:
            key, sep, raw = override.partition("=")
            if not sep:
                raise ConfigError(f"override {override!r} must look like key=value, e.g. optim.lr=0.02")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise ConfigError(f"override {override!r}: {raw!r} is not a valid value") from None
            config = _set_path(config, key.strip().split("."), value, key)
        return config


def _field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def _coerce(value, annotation, key: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (list, tuple)):  # YAML reads [-1,0,1] as a list
            return "[" + ",".join(str(v) for v in value) + "]"
        return str(value)
    return value


def _from_dict(cls, data: dict, prefix: str):
    types = _field_types(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys here: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        annotation = types[name]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a mapping")
            kwargs[name] = _from_dict(annotation, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, annotation, prefix + name)
    return cls(**kwargs)


def _set_path(obj, parts: list[str], value, key: str):
    names = {f.name for f in fields(obj)}
    if parts[0] not in names:
        raise ConfigError(f"unknown config key {key!r}; valid keys here: {sorted(names)}")
    annotation = _field_types(type(obj))[parts[0]]
    if len(parts) == 1:
        if dataclasses.is_dataclass(annotation):
            raise ConfigError(f"{key} is a section; set one of its keys, e.g. {key}.<name>=...")
        return replace(obj, **{parts[0]: _coerce(value, annotation, key)})
    child = getattr(obj, parts[0])
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"unknown config key {key!r}: {parts[0]} has no sub-keys")
    return replace(obj, **{parts[0]: _set_path(child, parts[1:], value, key)})


# --- profiles --------------------------------------------------------------------------------

# Per dataset and profile: epochs of the float baseline and of the quantized rows, subsets.
# quick budgets fit a 2-core CPU; full is all 60,000 Fashion-MNIST images and the whole test
# set, at the epochs docs/profiles.md chose from the measured curves.
_BUDGETS: dict[tuple[str, str], dict] = {
    ("cifar10", "paper"): dict(float_epochs=90, quant_epochs=90),
    ("cifar10", "quick"): dict(float_epochs=10, quant_epochs=5),
    ("imagenet", "paper"): dict(float_epochs=0, quant_epochs=90),
    ("imagenet", "quick"): dict(float_epochs=0, quant_epochs=1, train_subset=25600, test_subset=10000),
    ("fashion-mnist", "paper"): dict(float_epochs=90, quant_epochs=90),
    ("fashion-mnist", "full"): dict(float_epochs=20, quant_epochs=8),
    ("fashion-mnist", "quick"): dict(float_epochs=4, quant_epochs=2, train_subset=10000),
    ("synthetic", "paper"): dict(float_epochs=90, quant_epochs=90),
    ("synthetic", "quick"): dict(float_epochs=3, quant_epochs=2, train_subset=2048, test_subset=1024),
}
# Float baselines trained from scratch, and the quantized rows (the paper's ImageNet value).
FLOAT_WEIGHT_DECAY, QUANT_WEIGHT_DECAY = 5e-4, 1e-4
_SMOKE = dict(float_epochs=1, quant_epochs=1, train_subset=256, test_subset=256, batch_size=64)
_BATCH = {"imagenet": 256}


def make_config(
    dataset: str, row: int, profile: str = "smoke", seed: int = 0, ablation: str | None = None
) -> RunConfig:
    """The configuration of one table row (optionally an ablation of it) under a profile."""
    table = get_table(dataset)
    table_row = table.row(row)
    if table_row.is_float and table.baseline_from:
        raise ConfigError(f"{dataset} takes its float models from the {table.baseline_from} table: "
                          f"train row 0 there (--dataset {table.baseline_from} --row 0)")
    data_name = table.data_name  # a table on another's data has that data's budgets
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")
    if profile != "smoke" and (data_name, profile) not in _BUDGETS:
        offered = sorted(p for d, p in _BUDGETS if d == data_name) + ["smoke"]
        raise ConfigError(f"profile {profile!r} is not defined for {dataset}; choose one of {offered}")
    budget = _SMOKE if profile == "smoke" else _BUDGETS[(data_name, profile)]
    is_float = table_row.is_float
    epochs = budget["float_epochs" if is_float else "quant_epochs"]
    if data_name == "imagenet" and is_float:
        epochs = 0  # torchvision's pretrained model, evaluated
    optim = OptimConfig(
        epochs=epochs,
        batch_size=budget.get("batch_size", _BATCH.get(data_name, 128)),
        lr=table_row.lr_base,
        weight_decay=FLOAT_WEIGHT_DECAY if is_float else QUANT_WEIGHT_DECAY,
    )
    quant = QuantConfig(
        weight_levels=format_levels(table_row.constr_w),
        act_levels=format_levels(table_row.constr_a),
        quantize_first_last=table_row.quan_lr,
        first_last_weight_levels=(format_levels(table_row.first_last_w)
                                  if table_row.first_last_w else None),
        first_last_act_levels=(format_levels(table_row.first_last_a)
                               if table_row.first_last_a else None),
    )
    data = DataConfig(train_subset=budget.get("train_subset"), test_subset=budget.get("test_subset"))
    config = RunConfig(
        dataset=dataset, row=row, profile=profile, seed=seed, model=table.model,
        data=data, optim=optim, quant=quant,
    )
    if ablation is not None and get_ablation(ablation).float_row and is_float:
        # The control: the quantized rows' recipe (epochs, lr, weight decay) with nothing
        # quantized, starting from the trained float model as they do.
        quantized = next(r for r in table.rows if not r.is_float)
        config = replace(config, optim=replace(
            config.optim, epochs=budget["quant_epochs"], lr=quantized.lr_base,
            weight_decay=QUANT_WEIGHT_DECAY, from_baseline=True))
    if ablation is not None:
        config = replace(config.with_overrides(*get_ablation(ablation).overrides), ablation=ablation)
    return config
