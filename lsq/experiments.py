"""The published LSQ tables as data, the extra datasets that reuse their rows, the seed README's
claims with their thresholds, and the ablations.

The report reads the paper's numbers and the claims' tests from here only. Row 0 is the float
baseline; its published accuracy is implied by "accuracy + drop" of the quantized rows (CIFAR-10
89.56; ImageNet 69.69 top-1 / 89.07 top-5, from row 1; the other rows imply values up to 0.07
away, which the report shows as they are).

Columns follow the seed table: ``quan_lr`` (quantize the first and last layer), ``constr_w``
(weight levels), ``constr_a`` (activation levels), ``lr_base``, ``epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lsq.errors import ConfigError
from lsq.levels import TERNARY, UNSIGNED_2BIT, Levels, format_levels


@dataclass(frozen=True)
class Row:
    """One row of a results table: what is quantized and how, plus what the paper reported."""

    id: int
    quan_lr: bool = False
    constr_w: Levels | None = None
    constr_a: Levels | None = None
    lr_base: float = 0.01
    epoch: int | None = 90  # None: the published source does not state it
    # With quan_lr: the first and last layer's own levels where they differ from the row's (the
    # LSQ paper's 8 bits); None: the row's levels.
    first_last_w: Levels | None = None
    first_last_a: Levels | None = None
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
        if not self.quan_lr:
            parts.append("first/last float")
        elif self.first_last_w is not None:
            parts.append(f"first/last w{format_levels(self.first_last_w)}, "
                         f"a{format_levels(self.first_last_a)}")
        else:
            parts.append("first/last quantized")
        return ", ".join(parts)

    @property
    def bits(self) -> int | None:
        """Weight bits of a row whose weights span a whole signed b-bit range, else None."""
        if self.constr_w is None:
            return None
        q_min, q_max = self.constr_w
        bits = (q_max - q_min + 1).bit_length() - 1
        return bits if (q_min, q_max) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) else None

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
    name: str = ""  # how the text names the dataset, e.g. "CIFAR-10"
    # A table with no published numbers may stand in for one that has them: the report puts the
    # published rows of ``stands_in_for`` beside its own and says what that does and does not show.
    stands_in_for: str | None = None
    stand_in_reason: str = ""  # why the published dataset itself was not trained here
    # The dataset whose files this table trains on ("": its own name), and the table whose row-0
    # runs are its float baseline (None: its own row 0): the paper's table reuses the seed
    # table's data and float models rather than training them twice.
    data_from: str = ""
    baseline_from: str | None = None
    claims: tuple[str, ...] = ()  # keys of CLAIMS checked on its page; () : the seed's claims
    # Ablations (row, name) that `make <table>` trains with its rows, seed for seed.
    table_ablations: tuple[tuple[int, str], ...] = ()
    published_note: str = ""  # what the published numbers are, or why some are left out
    # Whose table this is: "seed" (the seed README's four rows, its claims and three analysis
    # factors) or "paper" (the LSQ paper's precisions, its own claims and distilled rows).
    source: str = "seed"

    @property
    def data_name(self) -> str:
        return self.data_from or self.dataset

    @property
    def trained_rows(self) -> tuple[int, ...]:
        """The rows `make <table>` trains: all, less row 0 where it is another table's."""
        return tuple(r.id for r in self.rows if not (r.is_float and self.baseline_from))

    def row(self, row_id: int) -> Row:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise ConfigError(
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
        rows.append(Row(row_id, quan_lr, constr_w, constr_a, 0.01, 90,
                        published=published.get(row_id, {})))
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

def _paper_rows() -> tuple[Row, ...]:
    """The LSQ paper's ImageNet precisions, w/a = 2/2, 3/3, 4/4 and 8/8: signed weights
    [-2^(b-1), 2^(b-1)-1] (2 bits is {-2..1}, not ternary), unsigned activations [0, 2^b-1],
    first and last layers at 8 bits. No published number: see PAPER_NOTE."""
    first_last = ((-128, 127), (0, 255))
    rows = [Row(0, lr_base=0.1, epoch=None)]
    for row_id, bits in enumerate((2, 3, 4, 8), start=1):
        weights, acts = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1), (0, 2 ** bits - 1)
        rows.append(Row(row_id, True, weights, acts, 0.01, None, first_last_w=first_last[0],
                        first_last_a=first_last[1]))
    return tuple(rows)


PAPER_SOURCE = "the LSQ paper (arXiv 1902.08153, ICLR 2020)"
PAPER_NOTE = (
    "The paper's ImageNet numbers for these rows are not shown: no copy of its results table "
    "could be read where this project is built (the stored copies of the paper give its abstract "
    "and opening only), and numbers from secondary summaries are not used. What is confirmed "
    "from the paper itself: its abstract, that LSQ trains \"3-bit models that reach full precision "
    "baseline accuracy\" (the claim checked below), with weights and activations at 2, 3 or 4 "
    "bits; and, as a stored page quotes its training paragraph, SGD with momentum 0.9 and cosine "
    "learning-rate decay without restarts. The 8/8 row and the 8-bit first and last layers "
    "follow secondary summaries (an implementer's account of the paper's protocol) and are "
    "marked so in the protocol audit.")

TABLES: dict[str, Table] = {
    "cifar10": Table(
        "cifar10", "resnet20", 10, 3, 32, ("top1",),
        _rows(CIFAR10_PUBLISHED, {"top1": 89.56}), "real", True,
        "CIFAR-10, ResNet-20 (published table)", "CIFAR-10",
    ),
    "imagenet": Table(
        "imagenet", "resnet18", 1000, 3, 224, ("top1", "top5"),
        _rows(IMAGENET_PUBLISHED, {"top1": 69.69, "top5": 89.07}), "real", True,
        "ImageNet, ResNet-18 (published table)", "ImageNet",
    ),
    "fashion-mnist": Table(
        "fashion-mnist", "resnet20", 10, 1, 28, ("top1",), _rows(None, {}), "real", False,
        "Fashion-MNIST, ResNet-20 with a 1-channel stem (real data available offline)",
        "Fashion-MNIST", stands_in_for="cifar10",
        stand_in_reason="CIFAR-10 cannot be downloaded on this machine's network, and "
                        "Fashion-MNIST is installed with the system's packages",
    ),
    "imagenet-paper": Table(
        "imagenet-paper", "resnet18", 1000, 3, 224, ("top1", "top5"), _paper_rows(), "real", True,
        "ImageNet, ResNet-18 at the LSQ paper's precisions (w/a 2/2, 3/3, 4/4, 8/8; first and "
        "last layers at 8 bits)", "ImageNet (LSQ paper)", data_from="imagenet",
        baseline_from="imagenet", claims=("three-bit-full-precision",), published_note=PAPER_NOTE,
        source="paper",
        table_ablations=((1, "distill"), (2, "distill")),  # the paper distilled 2/2 and 3/3
    ),
    "fashion-mnist-paper": Table(
        "fashion-mnist-paper", "resnet20", 10, 1, 28, ("top1",), _paper_rows(), "real", False,
        "Fashion-MNIST, ResNet-20 at the LSQ paper's precisions (w/a 2/2, 3/3, 4/4, 8/8; first "
        "and last layers at 8 bits), from the Fashion-MNIST table's float models",
        "Fashion-MNIST (paper precisions)", stands_in_for="imagenet-paper",
        stand_in_reason="ImageNet cannot be downloaded on this machine's network, and "
                        "Fashion-MNIST is installed with the system's packages",
        data_from="fashion-mnist", baseline_from="fashion-mnist",
        table_ablations=((1, "distill"),), source="paper",
    ),
    "synthetic": Table(
        "synthetic", "resnet20", 10, 3, 32, ("top1",), _rows(None, {}), "synthetic", False,
        "Synthetic CIFAR-shaped tensors: smoke and timing only, accuracies mean nothing",
        "synthetic data",
    ),
}


DATASETS = tuple(TABLES)
# Budgets scale the work, never the method (lsq.config); longest first, the order in which the
# report lists pages and picks a table's strongest evidence.
PROFILES = ("paper", "full", "quick", "smoke")


# --- the published protocol, element by element (None: the source does not say) -----------------


@dataclass(frozen=True)
class Protocol:
    """How a published table was trained, as its source states it. The report's protocol audit
    compares every run's config.yaml with it (lsq.report.audit)."""

    source: str
    network: str | None
    optimizer: str  # e.g. "SGD, momentum 0.9"
    lr_schedule: str
    quantized_epochs: int | None
    batch_size: int | None = None
    weight_decay: float | None = None
    step_size_init: str | None = None
    gradient_scale: str | None = None
    first_last_precision: str | None = None
    float_baseline: str | None = None
    distillation: str | None = None
    # Which of the table rows' settings the source states (the audit shows the rest as not
    # stated): the seed's table lists all four; the paper's text, as far as readable, only the
    # precisions.
    stated_row_settings: tuple[str, ...] = ("base lr", "weight levels", "activation levels",
                                            "first/last quantized")


_SEED_SOURCE = "the seed repository's README (lsq-reference-results.md)"
PROTOCOLS: dict[str, Protocol] = {
    "cifar10": Protocol(_SEED_SOURCE, "resnet20", "SGD, momentum 0.9", "cosine", 90),
    "imagenet": Protocol(_SEED_SOURCE, "resnet18", "SGD, momentum 0.9", "cosine", 90),
    # Only what the paper's own text, as far as it could be read here, states (PAPER_NOTE); the
    # rest is None, "not stated by the source", rather than taken from secondary summaries.
    "imagenet-paper": Protocol(
        f"{PAPER_SOURCE}, its abstract and its training paragraph as a stored page quotes it",
        None, "SGD, momentum 0.9", "cosine", None,
        stated_row_settings=("weight levels", "activation levels")),
}


def get_table(dataset: str) -> Table:
    try:
        return TABLES[dataset]
    except KeyError:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {sorted(TABLES)}") from None


# --- the seed README's claims, each a test on paired per-seed differences ----------------------

BELOW, ABOVE, WITHIN = "below", "above", "within"  # which side of the threshold the claim says


@dataclass(frozen=True)
class Comparison:
    """Final top-1 of row ``first`` minus row ``second``, seed by seed (a drop when ``first`` is
    the float row 0)."""

    first: int
    second: int

    @property
    def label(self) -> str:
        if self.first == 0:
            return f"drop row {self.second}"
        return f"row {self.first} − row {self.second}"


@dataclass(frozen=True)
class Claim:
    """A claim of the seed README and the test that decides it.

    Each comparison's per-seed differences ``d`` must lie ``side`` of ``threshold`` (top-1
    points): ``below``: ``d < T``; ``above``: ``d > T``; ``within``: ``|d| < T``. The claim needs
    every one of its comparisons.
    """

    key: str
    quote: str  # the seed README's words
    about: str  # the dataset the seed said it about
    comparisons: tuple[Comparison, ...]
    side: str
    threshold: float
    rule: str  # the test in words; "{threshold:g}" is filled in from ``threshold``

    @property
    def test(self) -> str:
        return self.rule.format(threshold=self.threshold)


# Thresholds, in top-1 points. A drop under 1 point is what quantization papers call "no loss"
# (the seed's ImageNet row 1 drops 0.26); 1 point also separates the seed's "not obvious" CIFAR
# first/last effect (0.12, 0.44) from its ImageNet one (2.00, 2.75); 0.5 points is the smallest
# activation cost worth a claim; 2 points is "significant" for a full-quantization gap (the
# seed's ImageNet row 4 drops 8.21, its CIFAR row 4 2.32).
_FIRST_LAST = (Comparison(1, 2), Comparison(3, 4))
CLAIMS: dict[str, Claim] = {claim.key: claim for claim in (
    Claim(
        "weight-only-no-drop",
        "for just weight quantization, we can achieve comparable performance with float point "
        "weight", "imagenet", (Comparison(0, 1),), BELOW, 1.0,
        "row 1 (ternary weights, first/last float) drops less than {threshold:g} point",
    ),
    Claim(
        "first-last-matters",
        "for imagenet dataset, we can see the influence of first and last layers' quantization",
        "imagenet", _FIRST_LAST, ABOVE, 1.0,
        "quantizing first/last adds more than {threshold:g} point of drop, both weight-only "
        "(row 1 − row 2) and full quantization (row 3 − row 4)",
    ),
    Claim(
        "first-last-not-obvious",
        "because the mission is easy. the influence of first and last layers' quantization [...] "
        "is not obvious in this dataset", "cifar10", _FIRST_LAST, WITHIN, 1.0,
        "quantizing first/last changes accuracy by less than {threshold:g} point either way, both "
        "weight-only (row 1 − row 2) and full quantization (row 3 − row 4)",
    ),
    Claim(
        "activations-cost",
        "2-bit activations cost accuracy (the tables: rows 3/4 below rows 1/2 on both datasets; "
        "the seed calls it \"not obvious\" on CIFAR-10)", "both",
        (Comparison(1, 3), Comparison(2, 4)), ABOVE, 0.5,
        "2-bit activations lose more than {threshold:g} point, with first/last float "
        "(row 1 − row 3) and quantized (row 2 − row 4)",
    ),
    Claim(
        "weight-only-generalises",
        "for weight quantization, the model achieves better performance after quantization. "
        "this is because quantization is a way to enhance model's generalization", "cifar10",
        (Comparison(0, 1),), BELOW, 0.0,
        "row 1 is more accurate than the float baseline (drop below {threshold:g})",
    ),
    Claim(
        "full-quantization-gap",
        "for quantizing weight and activation with first and last layers, there is a significant "
        "gap between float point model and quantized model", "imagenet", (Comparison(0, 4),),
        ABOVE, 2.0,
        "row 4 (everything quantized) drops more than {threshold:g} points",
    ),
    # The LSQ paper's abstract (the one number-free claim of the paper confirmed here): row 2
    # of its table is 3/3.
    Claim(
        "three-bit-full-precision",
        "[LSQ] can train 3-bit models that reach full precision baseline accuracy (the LSQ "
        "paper's abstract)", "imagenet-paper", (Comparison(0, 2),), BELOW, 1.0,
        "row 2 (3-bit weights and activations, first/last 8-bit) drops less than {threshold:g} "
        "point",
    ),
)}

# Across datasets: per seed, the extra drop from quantizing first/last (the mean of
# ``_FIRST_LAST`` over the pairs measured) on ImageNet minus that on CIFAR-10.
FIRST_LAST_ACROSS = Claim(
    "first-last-imagenet-vs-cifar",
    "for imagenet dataset, we can see the influence of first and last layers' quantization "
    "[...] the influence [...] is not obvious in this dataset [CIFAR-10]", "both",
    _FIRST_LAST, ABOVE, 1.0,
    "the extra drop from quantizing first/last, averaged over rows 1−2 and 3−4, is more than "
    "{threshold:g} point larger on ImageNet than on CIFAR-10",
)
FIRST_LAST_DATASETS = ("imagenet", "cifar10")  # (larger effect claimed, smaller)


# --- ablations of the three factors the seed's analysis names --------------------------------


@dataclass(frozen=True)
class Ablation:
    """One ablation setting: a name, the factor it probes, and config overrides it applies.

    ``float_row``: a control of the float row 0 rather than an ablation of a quantized row: the
    float model trained on with the quantized rows' recipe (``lsq.config.make_config``)."""

    name: str
    factor: str  # "step_init", "step_lr", "scheduler", "distillation", "control"
    value: str  # human-readable value on the factor's axis
    overrides: tuple[str, ...]  # dotted config overrides, e.g. ("quant.init_scale=4",)
    float_row: bool = False


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
    # The LSQ paper's distillation (teacher: the run's own float baseline, T = 1, 1:1 with the
    # cross-entropy); not one of the seed's factors, so `make ablations` leaves it out.
    Ablation("distill", "distillation", "distilled from the float baseline", ("optim.distill=true",)),
    # Rows 1-4 train on from the float model for their own epochs, so a row can end above float
    # for the extra training alone: the float model trained on exactly as they are, with nothing
    # quantized, is what separates the two.
    Ablation("finetune", "control", "float + the quantized rows' epochs", (), float_row=True),
)
SEED_FACTORS = ("step_init", "step_lr", "scheduler")  # what the seed's analysis names
# The LSQ paper's own ablations of a factor, on 2-bit ResNet-18 / ImageNet: what they vary, and
# the published top-1 per setting where the paper's text confirms it (none could be: PAPER_NOTE).
PAPER_ABLATIONS: dict[str, tuple[str, dict[str, float]]] = {
    "step_lr": ("the step-size gradient scale (1/sqrt(N·Q_P), 1/sqrt(N), 1)", {}),
    "scheduler": ("cosine against step learning-rate decay", {}),
}
ABLATION_BASELINE_VALUES = {
    "step_init": "LSQ init x1",
    "step_lr": "step-size lr x1, g on",
    "scheduler": "cosine lr",
    "distillation": "no teacher",
    "control": "float, as trained (row 0)",
}
ABLATION_ROWS = (1, 3)
# The full-data profile spends its CPU budget on row 3 (ternary weights, 2-bit activations), the
# row whose step sizes matter most.
_ABLATION_ROWS_BY_PROFILE = {"full": (3,)}


def ablation_rows(profile: str) -> tuple[int, ...]:
    """The rows whose ablations a profile trains."""
    return _ABLATION_ROWS_BY_PROFILE.get(profile, ABLATION_ROWS)


# The budgets at which the float control is trained: those that converge. Under the quick
# budget every row is far from it, and extra epochs would mostly measure that.
CONTROL_PROFILES = ("paper", "full")


def controls(profile: str) -> tuple[str, ...]:
    """The float-row controls (``Ablation.float_row``) a profile trains."""
    return tuple(a.name for a in ABLATIONS if a.float_row) if profile in CONTROL_PROFILES else ()
# A row's budget has levelled off when its last epoch moves test top-1 by less than this, in
# points, averaged over seeds (mean |Δ|): the criterion the `full` profile's epochs were chosen by.
LEVELLED_POINTS = 0.3
# An ablated setting "costs" or "gains" accuracy when the 95 % interval of its paired Δ against
# the baseline setting lies wholly below −T or above +T points; T = 0 is the plain two-sided test.
ABLATION_THRESHOLD = 0.0


def get_ablation(name: str) -> Ablation:
    for ablation in ABLATIONS:
        if ablation.name == name:
            return ablation
    raise ConfigError(f"unknown ablation {name!r}; choose one of {[a.name for a in ABLATIONS]}")
