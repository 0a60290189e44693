"""TEST ONLY: fabricated run directories in the format of docs/run-format.md.

Nothing here was trained; every number below is made up so that the report's tests can assert
exact means, drops and deltas. The report code must never import this module.

The fabricated tree (``write_fake_runs(root)``):

* ``fashion-mnist/quick``: rows 0-4, seeds 0-2 (row 4 seed 2 is in progress: no summary.json),
  ablations of rows 1 and 3 (init-x4, init-x0.25, sched-step for seeds 0-1; steplr-x10 seed 0
  only; the rest not run), and one corrupt trailing line in a metrics.jsonl;
* ``cifar10/paper``: rows 0-3, seeds 0-1 (row 4 not run), real data, published table;
* ``imagenet/quick``: row 0 (pretrained: one ``"epoch": 0`` line) and rows 1-2, seeds 0-1, top-5;
* ``synthetic/smoke``: rows 0-4 and one ablation (row 1, init-x4), seed 0 only,
  ``data_kind: synthetic``.

``write_full_runs(root)`` adds ``fashion-mnist/full`` caught mid-training (not part of the tree
above): rows 0, 1 and 3 finished for some seeds, row 2 in progress, row 4 not started; with
``started_only=True``, only two float runs at their first epoch, as the first hour leaves it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import NamedTuple

from lsq.config import make_config

# Final test top-1 per (dataset, profile) -> run name -> seed. Chosen so that means are exact.
FINAL_TOP1: dict[tuple[str, str], dict[str, dict[int, float]]] = {
    ("fashion-mnist", "quick"): {
        "row0": {0: 92.0, 1: 92.4, 2: 92.2},
        "row1": {0: 91.9, 1: 92.1, 2: 92.3},
        "row2": {0: 91.5, 1: 91.9, 2: 91.7},
        "row3": {0: 90.0, 1: 90.4, 2: 90.2},
        "row4": {0: 89.0, 1: 89.6},  # seed 2 in progress
        "row1-init-x4": {0: 88.9, 1: 89.1},
        "row3-init-x4": {0: 87.0, 1: 87.6},
        "row1-init-x0.25": {0: 91.8, 1: 92.2},
        "row3-init-x0.25": {0: 90.1, 1: 90.3},
        "row1-sched-step": {0: 91.7, 1: 92.3},
        "row3-sched-step": {0: 89.8, 1: 90.6},
        "row1-steplr-x10": {0: 90.0},
    },
    ("cifar10", "paper"): {
        "row0": {0: 91.0, 1: 91.4},
        "row1": {0: 91.2, 1: 91.4},
        "row2": {0: 90.8, 1: 91.2},
        "row3": {0: 89.0, 1: 89.4},
    },
    ("imagenet", "quick"): {
        "row0": {0: 69.76, 1: 69.76},
        "row1": {0: 60.0, 1: 61.0},
        "row2": {0: 57.0, 1: 58.0},
    },
    ("synthetic", "smoke"): {
        "row0": {0: 12.0}, "row1": {0: 11.0}, "row2": {0: 10.5}, "row3": {0: 10.0},
        "row4": {0: 9.0}, "row1-init-x4": {0: 10.0},
    },
}
FINAL_TOP5 = {("imagenet", "quick"): {"row0": 89.08, "row1": 83.0, "row2": 81.0}}
IN_PROGRESS = {("fashion-mnist", "quick", "row4", 2): 1}  # epochs done of a run with no summary
EPOCHS = {  # (float, quantized) epochs per profile, as lsq.config budgets them
    ("fashion-mnist", "quick"): (4, 2),
    ("cifar10", "paper"): (3, 3),
    ("imagenet", "quick"): (0, 2),
    ("synthetic", "smoke"): (1, 1),
    ("fashion-mnist", "full"): (20, 8),
}
FULL_TOP1 = {  # fashion-mnist/full, finished runs of write_full_runs
    "row0": {0: 93.0, 1: 93.4, 2: 93.2},
    "row1": {0: 92.9, 1: 93.1, 2: 93.3},
    "row3": {0: 91.0, 1: 91.6},
}
FULL_IN_PROGRESS = {("row2", 0): 3, ("row3", 2): 5}  # (run, seed) -> epochs done
# Final fraction of zero ternary weights: larger inits zero more weights.
FINAL_SPARSITY = {"": 0.40, "init-x4": 0.80, "init-x0.25": 0.10}
WALL_SECONDS = 360.0
CORRUPT_RUN = "fashion-mnist/quick/row1/seed0"


def quantizer_names(row: int) -> list[str]:
    """ResNet-20 quantizer names as lsq.quant.convert would create them for a table row."""
    quan_lr, activations = row in (2, 4), row in (3, 4)
    names = ["conv1.weight_quantizer"] if quan_lr else []
    for stage in (1, 2, 3):
        for block in (0, 1, 2):
            for conv in (1, 2):
                layer = f"layer{stage}.{block}.conv{conv}"
                names.append(f"{layer}.weight_quantizer")
                if activations:
                    names.append(f"{layer}.input_quantizer")
    if quan_lr:
        names.append("fc.weight_quantizer")
        if activations:
            names.append("fc.input_quantizer")
    return names


def _epoch_lines(dataset, row, ablation, final, top5, epochs, sparsity) -> list[dict]:
    """A curve rising by 1 point per epoch to ``final``; quantized runs start with epoch 0."""
    quantized = row > 0
    first = 0 if (quantized or epochs == 0) else 1
    names = quantizer_names(row) if quantized else []
    lines = []
    for epoch in range(first, epochs + 1):
        behind = epochs - epoch
        layer_sparsity = {n.rsplit(".", 1)[0]: sparsity + 0.02 * behind
                          for n in names if n.endswith("weight_quantizer")}
        lines.append({
            "epoch": epoch, "lr": 0.01 * behind / max(epochs, 1),
            "train_loss": 0.3 + 0.1 * behind, "train_top1": final + 1.0 - behind,
            "test_loss": 0.35 + 0.1 * behind, "test_top1": round(final - 1.0 * behind, 4),
            "test_top5": round(top5 - 0.5 * behind, 4),
            "step_sizes": {
                n: {"mean": (0.5 if "input" in n else 0.02) * (1 + 0.1 * i) * (1 + 0.05 * epoch),
                    "min": 0.0, "max": 1.0}
                for i, n in enumerate(names)
            },
            "weight_sparsity": round(sparsity + 0.02 * behind, 4) if quantized else None,
            "layer_sparsity": layer_sparsity if quantized else None,
            "epoch_seconds": 30.0, "images_per_second": 300.0,
        })
    return lines


def write_run(root: Path, dataset: str, profile: str, run_name: str, seed: int, final: float,
              *, data_kind: str = "real", done: bool = True, epochs_done: int | None = None,
              top5: float = 99.5) -> Path:
    row = int(run_name.split("-", 1)[0][3:])
    ablation = run_name.split("-", 1)[1] if "-" in run_name else None
    float_epochs, quant_epochs = EPOCHS[(dataset, profile)]
    epochs = quant_epochs if row > 0 else float_epochs
    sparsity = FINAL_SPARSITY.get(ablation or "", 0.40)
    run_dir = root / dataset / profile / run_name / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    # The whole config, as lsq train writes it: the report's settings columns come from here.
    config = make_config(dataset, row, profile, seed, ablation).with_overrides(f"optim.epochs={epochs}")
    (run_dir / "config.yaml").write_text(config.to_yaml())
    lines = _epoch_lines(dataset, row, ablation, final, top5, epochs, sparsity)
    if epochs_done is not None:
        lines = [line for line in lines if line["epoch"] <= epochs_done]
    with open(run_dir / "metrics.jsonl", "w") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")
    if done:
        summary = {
            "dataset": dataset, "profile": profile, "row": row, "seed": seed,
            "ablation": ablation, "data_kind": data_kind, "epochs": epochs,
            "final_top1": final, "final_top5": top5, "best_top1": final, "best_top5": top5,
            "final_test_loss": 0.35, "final_weight_sparsity": sparsity if row > 0 else None,
            "wall_seconds": WALL_SECONDS, "train_images": 10000, "test_images": 10000,
            "device": "cpu (fabricated, 2 threads)", "compiled": row == 4, "torch_version": "2.14.1",
            "git_sha": "fab0001", "hostname": "test", "started_at": "2026-11-27T04:10:00Z",
            "finished_at": "2026-11-27T04:16:00Z",
            "baseline_run": f"{dataset}/{profile}/row0/seed{seed}" if row > 0 else None,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return run_dir


def write_fake_runs(root: str | Path, datasets: tuple[str, ...] | None = None) -> Path:
    """Fabricate the tree described in the module docstring under ``root`` (only ``datasets``
    when given); returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for (dataset, profile), runs in FINAL_TOP1.items():
        if datasets is not None and dataset not in datasets:
            continue
        kind = "synthetic" if dataset == "synthetic" else "real"
        for run_name, seeds in runs.items():
            for seed, final in seeds.items():
                top5 = FINAL_TOP5.get((dataset, profile), {}).get(run_name, 99.5)
                write_run(root, dataset, profile, run_name, seed, final, data_kind=kind, top5=top5)
    for (dataset, profile, run_name, seed), done in IN_PROGRESS.items():
        if datasets is None or dataset in datasets:
            write_run(root, dataset, profile, run_name, seed, 50.0, done=False, epochs_done=done)
    if (root / CORRUPT_RUN).is_dir():
        with open(root / CORRUPT_RUN / "metrics.jsonl", "a") as handle:
            handle.write('{"epoch": 3, "test_top1": 9')  # a line cut by a kill mid-write
    return root


def write_full_runs(root: str | Path, started_only: bool = False) -> Path:
    """Fabricate ``fashion-mnist/full`` in training (module docstring) under ``root``."""
    root = Path(root)
    if started_only:
        for seed in (0, 1):
            write_run(root, "fashion-mnist", "full", "row0", seed, 70.0, done=False, epochs_done=1)
        return root
    for run_name, seeds in FULL_TOP1.items():
        for seed, final in seeds.items():
            write_run(root, "fashion-mnist", "full", run_name, seed, final)
    for (run_name, seed), done in FULL_IN_PROGRESS.items():
        write_run(root, "fashion-mnist", "full", run_name, seed, 50.0, done=False, epochs_done=done)
    return root


# --- built reports, shared by the report tests of one pytest session --------------------------


class BuiltReport(NamedTuple):
    runs: Path
    out: Path
    errors: list[str]  # notebook errors reported by build_report


def shared_dir(tmp_path_factory) -> Path:
    """A temp folder shared by all pytest-xdist workers of the session (their basetemp's parent)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_report(kind: str, shared: Path) -> BuiltReport:
    """A report built once per session (across xdist workers, under a file lock).

    ``"full"``: every fabricated dataset, no notebooks (fast; most assertions use it).
    ``"notebooks"``: synthetic only (one page with an analysis), notebooks executed — the slow
    path, kept to two kernels.
    """
    import fcntl

    from lsq.report import build_report

    base = shared / f"lsq-report-{kind}"
    done = shared / f"lsq-report-{kind}.json"
    with open(shared / f"lsq-report-{kind}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits, then reuses the build
        if not done.exists():
            datasets = ("synthetic",) if kind == "notebooks" else None
            runs = write_fake_runs(base / "runs", datasets)
            with warnings.catch_warnings():  # the corrupt line's warning is tested elsewhere
                warnings.simplefilter("ignore")
                build_report(runs, base / "report", execute_notebooks=kind == "notebooks")
            done.write_text(json.dumps(build_report.last_errors))
    return BuiltReport(base / "runs", base / "report", json.loads(done.read_text()))
