"""The published LSQ tables as data, the extra datasets that reuse their rows, and the ablations.

The report reads the paper's numbers from here only. Row 0 is the float baseline; its published
accuracy is implied by "accuracy + drop" of the quantized rows (CIFAR-10 89.56; ImageNet
69.69 top-1 / 89.07 top-5, from row 1; the other rows imply values up to 0.07 away, which the
report shows as they are).

Columns follow the seed table: ``quan_lr`` (quantize the first and last layer), ``constr_w``
(weight levels), ``constr_a`` (activation levels), ``lr_base``, ``epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lsq.levels import TERNARY, UNSIGNED_2BIT, Levels, format_levels


@dataclass(frozen=True)
class Row:
    """One row of a results table: what is quantized and how, plus what the paper reported."""

    id: int
    quan_lr: bool = False
    constr_w: Levels | None = None
    constr_a: Levels | None = None
    lr_base: float = 0.01
    epoch: int = 90
    # Published numbers, percent: {"top1": ..., "top5": ..., "drop_top1": ..., "drop_top5": ...}
    published: dict[str, float] = field(default_factory=dict)

    @property
    def is_float(self) -> bool:
        return self.constr_w is None and self.constr_a is None

    @property
    def label(self) -> str:
        if self.is_float:
            return "float"
        parts = [f"w{format_levels(self.constr_w)}"]
        if self.constr_a is not None:
            parts.append(f"a{format_levels(self.constr_a)}")
        parts.append("first/last quantized" if self.quan_lr else "first/last float")
        return ", ".join(parts)

    def as_columns(self) -> dict[str, object]:
        """The seed table's settings columns."""
        return {
            "ID": self.id,
            "quan_lr": "yes" if self.quan_lr else "no",
            "constr_w": format_levels(self.constr_w),
            "constr_a": format_levels(self.constr_a),
            "lr_base": self.lr_base,
            "epoch": self.epoch,
        }


@dataclass(frozen=True)
class Table:
    """A dataset's experiment table: model, data facts and rows 0-4."""

    dataset: str
    model: str
    num_classes: int
    in_channels: int
    image_size: int
    metrics: tuple[str, ...]  # "top1" and, for ImageNet, "top5"
    rows: tuple[Row, ...]
    data_kind: str  # "real" or "synthetic"
    has_published: bool  # False: the rows are reused, the paper reported nothing for this data
    description: str = ""

    def row(self, row_id: int) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise ValueError(
            f"unknown row {row_id} for {self.dataset}; choose one of {[r.id for r in self.rows]}"
        )


def _rows(published: dict[int, dict[str, float]] | None, float_published: dict[str, float]):
    published = published or {}
    settings = [
        (1, False, TERNARY, None),
        (2, True, TERNARY, None),
        (3, False, TERNARY, UNSIGNED_2BIT),
        (4, True, TERNARY, UNSIGNED_2BIT),
    ]
    rows = [Row(0, lr_base=0.1, published=float_published)]
    for row_id, quan_lr, constr_w, constr_a in settings:
        rows.append(Row(row_id, quan_lr, constr_w, constr_a, 0.01, 90, published.get(row_id, {})))
    return tuple(rows)


CIFAR10_PUBLISHED = {
    1: {"top1": 89.69, "drop_top1": -0.13},
    2: {"top1": 89.55, "drop_top1": -0.01},
    3: {"top1": 87.68, "drop_top1": 1.88},
    4: {"top1": 87.24, "drop_top1": 2.32},
}
IMAGENET_PUBLISHED = {
    1: {"top1": 69.43, "top5": 88.69, "drop_top1": 0.26, "drop_top5": 0.38},
    2: {"top1": 67.43, "top5": 87.70, "drop_top1": 2.27, "drop_top5": 1.37},
    3: {"top1": 64.24, "top5": 85.47, "drop_top1": 5.46, "drop_top5": 3.53},
    4: {"top1": 61.49, "top5": 83.65, "drop_top1": 8.21, "drop_top5": 5.35},
}

TABLES: dict[str, Table] = {
    "cifar10": Table(
        "cifar10", "resnet20", 10, 3, 32, ("top1",),
        _rows(CIFAR10_PUBLISHED, {"top1": 89.56}), "real", True,
        "CIFAR-10, ResNet-20 (published table)",
    ),
    "imagenet": Table(
        "imagenet", "resnet18", 1000, 3, 224, ("top1", "top5"),
        _rows(IMAGENET_PUBLISHED, {"top1": 69.69, "top5": 89.07}), "real", True,
        "ImageNet, ResNet-18 (published table)",
    ),
    "fashion-mnist": Table(
        "fashion-mnist", "resnet20", 10, 1, 28, ("top1",), _rows(None, {}), "real", False,
        "Fashion-MNIST, ResNet-20 with a 1-channel stem (real data available offline)",
    ),
    "synthetic": Table(
        "synthetic", "resnet20", 10, 3, 32, ("top1",), _rows(None, {}), "synthetic", False,
        "Synthetic CIFAR-shaped tensors: smoke and timing only, accuracies mean nothing",
    ),
}


def get_table(dataset: str) -> Table:
    try:
        return TABLES[dataset]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {sorted(TABLES)}") from None


# --- ablations of the three factors the seed's analysis names --------------------------------


@dataclass(frozen=True)
class Ablation:
    """One ablation setting: a name, the factor it probes, and config overrides it applies."""

    name: str
    factor: str  # "step_init", "step_lr", "scheduler"
    value: str  # human-readable value on the factor's axis
    overrides: tuple[str, ...]  # dotted config overrides, e.g. ("quant.init_scale=4",)


# The baseline setting of each factor (init x1, lr factor 1 with grad scale, cosine) is the
# plain table run, so it is not repeated here; the report pairs each ablation with it.
ABLATIONS: tuple[Ablation, ...] = (
    Ablation("init-x0.25", "step_init", "LSQ init x0.25", ("quant.init_scale=0.25",)),
    Ablation("init-x4", "step_init", "LSQ init x4", ("quant.init_scale=4.0",)),
    Ablation("init-maxabs", "step_init", "max|v|/Q_P init", ("quant.init_method=maxabs",)),
    Ablation("steplr-x0.1", "step_lr", "step-size lr x0.1", ("optim.step_size_lr_factor=0.1",)),
    Ablation("steplr-x10", "step_lr", "step-size lr x10", ("optim.step_size_lr_factor=10.0",)),
    Ablation("no-gradscale", "step_lr", "grad scale g off", ("quant.grad_scale=false",)),
    Ablation("sched-step", "scheduler", "step lr", ("optim.scheduler=step",)),
    Ablation("sched-constant", "scheduler", "constant lr", ("optim.scheduler=constant",)),
)
ABLATION_BASELINE_VALUES = {
    "step_init": "LSQ init x1",
    "step_lr": "step-size lr x1, g on",
    "scheduler": "cosine lr",
}
ABLATION_ROWS = (1, 3)


def get_ablation(name: str) -> Ablation:
    for ablation in ABLATIONS:
        if ablation.name == name:
            return ablation
    raise ValueError(f"unknown ablation {name!r}; choose one of {[a.name for a in ABLATIONS]}")
