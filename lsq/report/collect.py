"""Load run directories (docs/run-format.md) into tidy pandas DataFrames.

Only the files of the run format are read: ``summary.json``, ``diverged.json``, ``metrics.jsonl``
and ``config.yaml``
(through :class:`lsq.config.RunConfig`: the settings a run trained with, and the planned epoch count
of a run in progress). The trainer is never imported, so the report renders anywhere the run
directories are, with no GPU and no data.

A run's identity (dataset, profile, row, ablation, seed) comes from its path,
``<runs>/<dataset>/<profile>/row<k>[-<ablation>]/seed<s>/``; ``summary.json`` is checked against it.
Plain table runs have ``ablation == ""`` (an empty string rather than None, so that ``groupby`` and
``==`` filters keep them).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from lsq import runs as run_format
from lsq.config import RunConfig
from lsq.errors import ConfigError
from lsq.experiments import ABLATIONS, PROFILES, TABLES
from lsq.levels import format_levels

KEYS = ["dataset", "profile", "row", "ablation", "seed"]

# What a run trained with, from its config.yaml, named as the seed table's columns; None where the
# config could not be read.
CONFIG_COLUMNS = ["quan_lr", "constr_w", "constr_a", "lr_base"]
SUMMARY_COLUMNS = [
    *KEYS, "data_kind", "epochs", "final_top1", "final_top5", "best_top1", "best_top5",
    "final_test_loss", "final_weight_sparsity", "wall_seconds", "train_images", "test_images",
    "device", "compiled", "torch_version", "git_sha", "hostname", "started_at", "finished_at",
    "baseline_run", *CONFIG_COLUMNS, "path",
]
# Summary fields the tables compute with: a summary where one is not a number is malformed.
NUMERIC_SUMMARY = ["epochs", "final_top1", "final_top5", "best_top1", "best_top5",
                   "final_test_loss", "final_weight_sparsity", "wall_seconds", "train_images",
                   "test_images"]
EPOCH_COLUMNS = [
    "epoch", "lr", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5",
    "weight_sparsity", "epoch_seconds", "images_per_second",
]
IN_PROGRESS_COLUMNS = [*KEYS, "epochs_done", "epochs_planned", *CONFIG_COLUMNS, "path"]
# A run whose loss became non-finite (diverged.json): where, and the code and machine it ran on.
DIVERGED_COLUMNS = [*KEYS, "epoch", "step", "layer", "found_in", "epochs", "last_finite_epoch",
                    "last_finite_top1",
                    "wall_seconds", "device", "torch_version", "git_sha", *CONFIG_COLUMNS, "path"]
STEP_SIZE_COLUMNS = [*KEYS, "epoch", "layer", "mean", "min", "max"]
LAYER_SPARSITY_COLUMNS = [*KEYS, "epoch", "layer", "sparsity"]



class RunWarning(UserWarning):
    """A run file that could not be read completely; the report goes on without that part."""


@dataclass
class Runs:
    """Every run under one runs directory, as tidy DataFrames.

    ``summaries``: one row per finished run (``summary.json`` present): the results.
    ``epochs``: one row per finished run per epoch, every scalar of ``metrics.jsonl``.
    ``step_sizes``/``layer_sparsity``: the per-layer dicts of ``metrics.jsonl``, exploded long.
    ``in_progress``: runs without a usable ``summary.json`` (none yet, or a malformed one);
    listed, never used as results.
    ``diverged``: runs whose loss became non-finite (``diverged.json``, no summary): a result
    with no accuracy, counted beside the finished seeds.
    ``summaries``, ``in_progress`` and ``diverged`` carry ``CONFIG_COLUMNS``: what the run
    trained with.
    ``problems``: human-readable notes about what could not be read (also emitted as warnings).
    """

    root: Path
    summaries: pd.DataFrame
    epochs: pd.DataFrame
    step_sizes: pd.DataFrame
    layer_sparsity: pd.DataFrame
    in_progress: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    dataset: str | None = None  # set by select(): the page these runs belong to
    profile: str | None = None
    diverged: pd.DataFrame = field(default_factory=lambda: _frame([], DIVERGED_COLUMNS, True))

    def pages(self) -> list[tuple[str, str]]:
        """The (dataset, profile) pairs that have any run, finished or not: datasets with real
        measurements first, each dataset's profiles longest first (``lsq.experiments.PROFILES``).
        A profile that ``PROFILES`` does not name comes after the known ones, by name."""
        frames = [frame[["dataset", "profile"]]
                  for frame in (self.summaries, self.in_progress, self.diverged)]
        pairs = pd.concat(frames).drop_duplicates()
        order = {"fashion-mnist": 0, "fashion-mnist-paper": 1, "cifar10": 2, "imagenet": 3,
                 "imagenet-paper": 4, "synthetic": 5}
        return sorted(
            map(tuple, pairs.itertuples(index=False)),
            key=lambda p: (order.get(p[0], len(order)), p[0], profile_rank(p[1]), p[1]),
        )

    def select(self, dataset: str, profile: str) -> "Runs":
        """The runs of one (dataset, profile) page. A table that takes its float models from
        another (``Table.baseline_from``) gets that table's row-0 runs of the profile as its own
        row 0, with row 0's float control (its rows train with the same recipe); their ``path``
        says where they live."""
        source = TABLES[dataset].baseline_from if dataset in TABLES else None
        row0 = {"", *(a.name for a in ABLATIONS if a.float_row)}

        def pick(df: pd.DataFrame) -> pd.DataFrame:
            chosen = (df["dataset"] == dataset) & (df["profile"] == profile)
            if source is not None:
                borrowed = df[(df["dataset"] == source) & (df["profile"] == profile)
                              & (df["row"] == 0) & df["ablation"].isin(row0)]
                return pd.concat([borrowed.assign(dataset=dataset), df[chosen]],
                                 ignore_index=True)
            return df[chosen].reset_index(drop=True)

        return Runs(
            self.root, pick(self.summaries), pick(self.epochs), pick(self.step_sizes),
            pick(self.layer_sparsity), pick(self.in_progress), list(self.problems),
            dataset, profile, pick(self.diverged),
        )


def profile_rank(profile: str) -> int:
    """Position in ``lsq.experiments.PROFILES`` (longest budget first); unknown profiles last."""
    return PROFILES.index(profile) if profile in PROFILES else len(PROFILES)


def longest_profile(summaries: pd.DataFrame, dataset: str) -> pd.DataFrame | None:
    """The plain finished runs of ``dataset``'s longest-trained profile that has any (None if
    none): the strongest evidence the runs hold for that dataset."""
    runs = summaries[(summaries["dataset"] == dataset) & (summaries["ablation"] == "")]
    if runs.empty:
        return None
    profile = min(runs["profile"].unique(), key=lambda p: (profile_rank(p), p))
    return runs[runs["profile"] == profile]


def load_runs(runs_dir: str | Path) -> Runs:
    """Read every run directory under ``runs_dir``; a missing directory gives empty frames."""
    root = Path(runs_dir)
    problems: list[str] = []
    summaries, epochs, steps, sparsity, in_progress, diverged = [], [], [], [], [], []
    for run_id, run_dir in run_format.discover(root):
        key = run_id.as_dict()
        # Problems name files relative to the runs directory, as the report shows them.
        label = run_dir.relative_to(root).as_posix()
        metrics = _read_metrics(run_dir / run_format.METRICS, problems, f"{label}/{run_format.METRICS}")
        summary = _read_summary(run_dir / run_format.SUMMARY, key, problems, f"{label}/{run_format.SUMMARY}")
        config = _read_config(run_dir / run_format.CONFIG, problems, f"{label}/{run_format.CONFIG}")
        settings = _settings(config)
        divergence = None if summary is not None else _read_diverged(
            run_dir / run_format.DIVERGED, problems, f"{label}/{run_format.DIVERGED}")
        if divergence is not None:
            diverged.append({**{c: divergence.get(c) for c in DIVERGED_COLUMNS}, **key,
                             **settings, "path": label})
            continue
        if summary is None:
            in_progress.append({
                **key,
                "epochs_done": int(metrics["epoch"].max()) if len(metrics) else 0,
                "epochs_planned": float(config.optim.epochs) if config else float("nan"),
                **settings,
                "path": label,
            })
            continue
        summaries.append({**summary, **settings, "path": label})
        if len(metrics):
            epochs.append(_scalar_epochs(metrics, key))
            steps.append(_explode_step_sizes(metrics, key))
            sparsity.append(_explode_layer_sparsity(metrics, key))
    return Runs(
        root,
        _frame(summaries, SUMMARY_COLUMNS, records=True),
        _frame(epochs, [*KEYS, *EPOCH_COLUMNS]),
        _frame(steps, STEP_SIZE_COLUMNS),
        _frame(sparsity, LAYER_SPARSITY_COLUMNS),
        _frame(in_progress, IN_PROGRESS_COLUMNS, records=True),
        problems,
        diverged=_frame(diverged, DIVERGED_COLUMNS, records=True),
    )


# --- reading, tolerant of partial files --------------------------------------------------------


def _problem(problems: list[str], message: str) -> None:
    problems.append(message)
    warnings.warn(message, RunWarning, stacklevel=3)


def _read_metrics(path: Path, problems: list[str], label: str) -> pd.DataFrame:
    """metrics.jsonl as a DataFrame; corrupt lines (e.g. a line cut by a kill) are skipped.

    Each line is checked with ``json.loads`` first because ``pd.read_json`` rejects the whole
    file on one bad line, and a run interrupted mid-write must not take the report down.
    """
    if not path.exists():
        return pd.DataFrame(columns=["epoch"])
    good = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            _problem(problems, f"{label}: line {number} is not valid JSON; skipped")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            _problem(problems, f"{label}: line {number} has no integer 'epoch'; skipped")
            continue
        good.append(line)
    if not good:
        return pd.DataFrame(columns=["epoch"])
    frame = pd.read_json(io.StringIO("\n".join(good)), lines=True)
    # A resumed run may have re-written an epoch; the last line for an epoch is the one to trust.
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_summary(path: Path, key: dict, problems: list[str], label: str) -> dict | None:
    """The summary's fields, or None (the run counts as unfinished) when there is none or it is
    malformed: a half-written file, no numeric ``final_top1``, or a result field that is not a
    number. Only the problem is reported, never a made-up number."""
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as error:
        _problem(problems, f"{label}: unreadable ({error}); the run is treated as not finished")
        return None
    top1 = summary.get("final_top1")
    if not _is_number(top1) or not 0 <= top1 <= 100:  # also NaN
        found = "no final_top1" if top1 is None else f"final_top1 {top1!r} is not a percentage"
        _problem(problems, f"{label}: {found}; the run is treated as not finished")
        return None
    for name in NUMERIC_SUMMARY:
        value = summary.get(name)
        if value is not None and not _is_number(value):
            _problem(problems, f"{label}: {name} {value!r} is not a number; the run is treated "
                               "as not finished")
            return None
    for name, value in key.items():
        found = summary.get(name)
        if name == "ablation":
            found = found or ""
        if found is not None and found != value:
            _problem(problems, f"{label}: {name}={found!r} disagrees with the path ({value!r}); "
                               "the path is used")
    return {**{c: summary.get(c) for c in SUMMARY_COLUMNS}, **key}


def _read_diverged(path: Path, problems: list[str], label: str) -> dict | None:
    """``diverged.json``, or None (the run counts as unfinished) when there is none or it is not
    a JSON object with an integer ``epoch``."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise ValueError("not a JSON object with an integer 'epoch'")
    except (ValueError, OSError) as error:
        _problem(problems, f"{label}: unreadable ({error}); the run is treated as not finished")
        return None
    return record


def _read_config(path: Path, problems: list[str], label: str) -> RunConfig | None:
    """The run's config, or None (its settings shown as unknown) when it is missing or invalid."""
    if not path.exists():
        _problem(problems, f"{label}: missing; the run's settings are shown as unknown")
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ConfigError("not a YAML mapping")
        return RunConfig.from_dict(data)  # validated as lsq train validates it
    except (yaml.YAMLError, ConfigError, OSError, UnicodeDecodeError) as error:
        _problem(problems, f"{label}: unreadable ({error}); the run's settings are shown as unknown")
        return None


def _settings(config: RunConfig | None) -> dict:
    """``CONFIG_COLUMNS`` of one run, in the seed table's notation."""
    if config is None:
        return dict.fromkeys(CONFIG_COLUMNS)
    quant = config.quant
    return {"quan_lr": "yes" if quant.quantize_first_last else "no",
            "constr_w": format_levels(quant.weight_range), "constr_a": format_levels(quant.act_range),
            "lr_base": config.optim.lr}


# --- reshaping ---------------------------------------------------------------------------------


def _scalar_epochs(metrics: pd.DataFrame, key: dict) -> pd.DataFrame:
    frame = metrics.reindex(columns=EPOCH_COLUMNS)
    for name, value in key.items():
        frame[name] = value
    return frame[[*KEYS, *EPOCH_COLUMNS]]


def _explode(metrics: pd.DataFrame, column: str, key: dict, unpack) -> list[dict]:
    records = []
    if column not in metrics:
        return records
    for epoch, layers in zip(metrics["epoch"], metrics[column]):
        if not isinstance(layers, dict):
            continue  # null for float runs
        for layer, value in layers.items():
            records.append({**key, "epoch": int(epoch), "layer": layer, **unpack(value)})
    return records


def _explode_step_sizes(metrics: pd.DataFrame, key: dict) -> pd.DataFrame:
    def unpack(value):
        if isinstance(value, dict):
            return {k: value.get(k) for k in ("mean", "min", "max")}
        return {"mean": value, "min": value, "max": value}

    return pd.DataFrame(_explode(metrics, "step_sizes", key, unpack), columns=STEP_SIZE_COLUMNS)


def _explode_layer_sparsity(metrics: pd.DataFrame, key: dict) -> pd.DataFrame:
    records = _explode(metrics, "layer_sparsity", key, lambda v: {"sparsity": v})
    return pd.DataFrame(records, columns=LAYER_SPARSITY_COLUMNS)


def _frame(parts: list, columns: list[str], records: bool = False) -> pd.DataFrame:
    if records:
        frame = pd.DataFrame(parts, columns=columns)
    else:
        parts = [p for p in parts if len(p)]
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    frame = frame.reindex(columns=columns)
    for name in ("row", "seed"):
        frame[name] = frame[name].astype("int64")
    for name in ("dataset", "profile", "ablation"):
        frame[name] = frame[name].astype(object)
    if "epoch" in frame:
        frame["epoch"] = frame["epoch"].astype("int64")
    return frame.sort_values([c for c in (*KEYS, "epoch") if c in frame]).reset_index(drop=True)
