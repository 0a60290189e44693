"""Runs in the tools researchers already open: TensorBoard logs beside each run, and an MLflow
store that run directories are imported into.

TensorBoard (``<run_dir>/tensorboard/``): one scalar per metric per epoch, the global step being
the epoch (0 is the converted model before any step). The log is derived from ``metrics.jsonl``:
a run writes each epoch's scalars once that epoch's checkpoint is saved, and a resumed run first
rebuilds the log from the records its checkpoint kept, so the curves have neither duplicated nor
missing steps whenever the run was killed. ``tensorboard --logdir runs`` shows every run, and
``python -m lsq tensorboard`` rebuilds the logs of runs made before they existed.

MLflow (``python -m lsq mlflow``): one experiment per table (``<dataset>/<profile>``), one MLflow
run per finished run directory, named ``row<k>[-<ablation>]/seed<s>``: params from
``config.yaml`` (dotted keys), per-epoch metrics (step = epoch), the summary's results as
``final_*``/``best_*`` metrics, and tags for the git SHA, device, data kind and profile. A run is
identified by its path below the runs directory and its ``finished_at``: importing twice adds
nothing, and a retrained run replaces the old record.
"""

from __future__ import annotations

import argparse
import math
import shutil
import warnings
from pathlib import Path

from lsq import runs as run_format
from lsq.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

# metrics.jsonl key -> TensorBoard tag; the per-quantizer step sizes go under step_size/.
_SCALARS = {
    "train_loss": "loss/train", "test_loss": "loss/test",
    "train_top1": "top1/train", "test_top1": "top1/test", "test_top5": "top5/test",
    "lr": "lr", "weight_sparsity": "weight_sparsity", "step_sizes_at_floor": "step_sizes_at_floor",
}


def _scalars(record: dict) -> dict[str, float]:
    """The finite scalars of one epoch record, by TensorBoard tag."""
    out = {tag: record[key] for key, tag in _SCALARS.items()
           if isinstance(record.get(key), (int, float)) and not isinstance(record.get(key), bool)}
    for name, stats in (record.get("step_sizes") or {}).items():
        out[f"step_size/{name}"] = stats["mean"]
    return {tag: float(v) for tag, v in out.items() if math.isfinite(v)}


class TensorBoardLog:
    """The TensorBoard log of one run directory (rank 0 writes it)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / TENSORBOARD_DIR
        self._writer = None

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._writer = SummaryWriter(log_dir=str(self.path))
        return self._writer

    def rebuild(self, records: list[dict]) -> None:
        """Start the log over from ``records`` (those a checkpoint kept, or a finished run's)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        for record in records:
            self.write(record, flush=False)
        if self._writer is not None:
            self._writer.flush()

    def write(self, record: dict, *, flush: bool = True) -> None:
        writer = self._open()
        for tag, value in _scalars(record).items():
            writer.add_scalar(tag, value, global_step=int(record["epoch"]))
        if flush:
            writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def rebuild_tensorboard(runs_dir: str | Path) -> int:
    """Rebuild every run's TensorBoard log under ``runs_dir`` from its metrics; returns the count."""
    count = 0
    for _, run_dir in run_format.discover(_existing(runs_dir)):
        try:
            records = run_format.read_metrics(run_dir / run_format.METRICS)
        except ValueError as error:
            warnings.warn(f"{run_dir}: TensorBoard log not rebuilt ({error})", stacklevel=2)
            continue
        if records:
            log = TensorBoardLog(run_dir)
            log.rebuild(records)
            log.close()
            count += 1
    return count


# --- MLflow ------------------------------------------------------------------------------------


def _flatten(data: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = "null" if value is None else str(value)
    return flat


def _existing(runs_dir: str | Path) -> Path:
    root = Path(runs_dir)
    if not root.is_dir():
        raise ConfigError(f"runs directory {root} does not exist; pass --runs-dir with the folder "
                          "that holds <dataset>/<profile>/row<k>/seed<s>/")
    return root


def import_runs(runs_dir: str | Path = "runs", tracking_uri: str = DEFAULT_TRACKING_URI) -> dict:
    """Import every finished or diverged run under ``runs_dir`` into the MLflow store at
    ``tracking_uri``; returns counts: ``imported``, ``replaced``, ``unchanged``, ``unfinished``,
    ``unreadable`` (a run whose files do not parse: warned about, skipped), and ``diverged``
    (of those imported or replaced, the runs with ``diverged.json``: MLflow status FAILED,
    tagged with where they diverged)."""
    import yaml
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    root = _existing(runs_dir)
    client = MlflowClient(tracking_uri=tracking_uri)
    counts = {"imported": 0, "replaced": 0, "unchanged": 0, "unfinished": 0, "unreadable": 0,
              "diverged": 0}
    for run_id, run_dir in run_format.discover(root):
        try:
            summary = run_format.read_summary(run_dir)
            divergence = run_format.read_diverged(run_dir) if summary is None else None
            records = run_format.read_metrics(run_dir / run_format.METRICS)
            config = yaml.safe_load((run_dir / run_format.CONFIG).read_text())
        except (OSError, ValueError, yaml.YAMLError) as error:
            warnings.warn(f"{run_dir}: not imported ({error})", stacklevel=2)
            counts["unreadable"] += 1
            continue
        if summary is None and divergence is None:
            counts["unfinished"] += 1
            continue
        result = summary if summary is not None else divergence
        ended_at = str(result.get("finished_at" if summary is not None else "diverged_at"))
        path = run_dir.relative_to(root).as_posix()
        name = f"{run_id.dataset}/{run_id.profile}"
        experiment = client.get_experiment_by_name(name)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else client.create_experiment(name))
        previous = client.search_runs([experiment_id], filter_string=f"tags.`lsq.path` = '{path}'")
        if any(r.data.tags.get("lsq.finished_at") == ended_at for r in previous):
            counts["unchanged"] += 1
            continue
        for stale in previous:
            client.delete_run(stale.info.run_id)
        counts["replaced" if previous else "imported"] += 1
        tags = {"lsq.path": path, "lsq.finished_at": ended_at,
                "git_sha": str(result.get("git_sha")), "device": str(result.get("device")),
                "data_kind": str(result.get("data_kind")), "profile": run_id.profile}
        if divergence is not None:
            counts["diverged"] += 1
            tags.update({"lsq.diverged_epoch": str(divergence.get("epoch")),
                         "lsq.diverged_step": str(divergence.get("step")),
                         "lsq.first_nonfinite": str(divergence.get("layer")),
                         "lsq.diverged": str(divergence.get("message"))[:5000]})
        run = client.create_run(experiment_id, run_name=f"{run_id.run_name}/seed{run_id.seed}",
                                tags=tags)
        params = [Param(k, v[:6000]) for k, v in _flatten(config).items()]
        metrics = [Metric(key, value, 0, int(record["epoch"]))
                   for record in records
                   for key, value in _scalars(record).items()]  # the TensorBoard tags: MLflow allows '/'
        metrics += [Metric(key, float(value), 0, int(summary.get("epochs", 0)))
                    for key, value in (summary or {}).items()
                    if key.startswith(("final_", "best_")) and isinstance(value, (int, float))
                    and value is not None and math.isfinite(value)]
        for start in range(0, len(params), 100):  # MLflow's batch limits
            client.log_batch(run.info.run_id, params=params[start:start + 100])
        for start in range(0, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[start:start + 1000])
        client.log_batch(run.info.run_id, tags=[RunTag("mlflow.note.content",
                                                       f"imported from {path}")])
        client.set_terminated(run.info.run_id, "FINISHED" if summary is not None else "FAILED")
    return counts


def main(argv: list[str] | None = None, *, command: str = "mlflow") -> int:
    parser = argparse.ArgumentParser(prog=f"python -m lsq {command}")
    parser.add_argument("--runs-dir", default="runs")
    if command == "mlflow":
        parser.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                            help=f"MLflow store (default: {DEFAULT_TRACKING_URI}, a SQLite file)")
    args = parser.parse_args(argv)
    if command == "mlflow":
        counts = import_runs(args.runs_dir, args.tracking_uri)
        print(f"{args.tracking_uri}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    else:
        count = rebuild_tensorboard(args.runs_dir)
        print(f"rebuilt the TensorBoard logs of {count} run(s); tensorboard --logdir {args.runs_dir}")
    return 0
