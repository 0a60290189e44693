"""Command line: ``python -m lsq {train,report,export,bench,check-data,compare-runs} ...``.

Thin by design: parse, build a config, call one function. Bad input ends with one ``error:`` line
naming the problem and the fix, and exit status 2 (``LSQ_DEBUG=1`` shows the traceback); any
other exception is a bug and keeps its traceback. SIGINT and SIGTERM end a command with one
``interrupted`` line, after the same cleanup (the run's lock released, no temp file left), and
exit 130 or 143.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = "interrupted ({signal}): run the same command again to resume"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the process is, so that ``finally`` blocks and
    ``except BaseException`` cleanups run as they do for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_MAIN_PID = os.getpid()
_cleanup_armed = False  # set once main() is inside the block that turns Interrupted into a line


def _on_signal(signum: int, _frame) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker (data loading): as if we had not been here
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if not _cleanup_armed:
        # Still importing: nothing is held or half-written yet, and an exception here would
        # surface as a traceback from the import machinery.
        os.write(2, (INTERRUPTED.format(signal=signal.Signals(signum).name) + "\n").encode())
        os._exit(128 + signum)
    raise Interrupted(signum)


if __name__ == "__main__":
    # First thing, before the imports below: a signal in the first milliseconds is handled too.
    for _signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signum, _on_signal)

import argparse  # noqa: E402
from dataclasses import replace  # noqa: E402

from lsq.errors import ConfigError, LsqError  # noqa: E402
from lsq.experiments import (ABLATIONS, DATASETS, PROFILES, SEED_FACTORS, TABLES,  # noqa: E402
                             ablation_rows, controls)

BENCHES = ("quantizer", "data", "train", "imagenet")
# What `python -m lsq list` prints: the one copy of each list, read by the Makefile.
# Each takes (profile, dataset); --dataset names a table for the per-table lists.
LISTS = {
    "datasets": lambda profile, dataset: DATASETS,
    # A table's trained rows (row 0 is another table's where it borrows its float models).
    "rows": lambda profile, dataset: TABLES[dataset or "cifar10"].trained_rows,
    "baseline": lambda profile, dataset: [TABLES[dataset].baseline_from or dataset],
    "table-ablations": lambda profile, dataset: [
        f"row{row}-{name}" for row, name in TABLES[dataset].table_ablations],
    # One word per table for the Makefile, "name:baseline table:rows,...:row1-distill,...", so
    # that one Python start gives make every table's lists.
    "tables": lambda profile, dataset: [
        f"{name}:{t.baseline_from or name}:{','.join(map(str, t.trained_rows))}:"
        + ",".join(f"row{row}-{abl}" for row, abl in t.table_ablations)
        for name, t in TABLES.items()],
    "profiles": lambda profile, dataset: PROFILES,
    "ablations": lambda profile, dataset: [a.name for a in ABLATIONS if a.factor in SEED_FACTORS],
    "ablation-rows": lambda profile, dataset: ablation_rows(profile),
    "controls": lambda profile, dataset: controls(profile),  # row 0's, at converging budgets
}
NEEDS_DATASET = ("baseline", "table-ablations")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train (or resume) one table row into a run directory",
                       description="Train one row of a table. Finished runs are skipped; "
                                   "interrupted runs resume from their checkpoint.")
    p.add_argument("--dataset", required=True, choices=sorted(TABLES))
    p.add_argument("--row", required=True, type=int, help="0 = float baseline, 1-4 = LSQ rows")
    p.add_argument("--profile", default="smoke", choices=PROFILES,
                   help="paper (as published), full (all of Fashion-MNIST, trained to convergence on a CPU), "
                   "quick (CPU-feasible real-data budget), smoke (seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablation", choices=[a.name for a in ABLATIONS], help="run an ablation of the row")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--data-dir", help="dataset location (default: data/<dataset>, or $LSQ_DATA_DIR/<dataset>)")
    p.add_argument("--download", action="store_true", help="download CIFAR-10 / Fashion-MNIST (needs internet)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--epochs", type=int, help="override the profile's epoch count")
    p.add_argument("--batch-size", type=int, help="override the training batch size")
    p.add_argument("--lr", type=float, help="override the base learning rate")
    p.add_argument("--workers", type=int, help="data-loading processes (ImageNet)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the whole model (default: on for CUDA, and on the CPU "
                        "for runs of at least 2000 training steps)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture the training step as a CUDA graph (default: on for one CUDA "
                        "device, off under torchrun and on the CPU)")
    p.add_argument("--weights", help="ImageNet row 0: local torchvision weights file, or IMAGENET1K_V1")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, e.g. --set optim.weight_decay=5e-5 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--wait-for-baseline", action="store_true",
                   help="rows 1-4: start while row 0 still trains (warm the compile cache, then "
                        "wait for its summary.json) and train once it is done; make -j does this "
                        "on CUDA")
    p.add_argument("--retrain-baseline", action="store_true",
                   help="rows 1-4 whose float baseline is finished without a checkpoint.pt (a "
                        "committed run): first retrain the baseline into RUNS/.baselines/ and "
                        "check it against the committed results")
    p.add_argument("--diverged-ok", action="store_true",
                   help="a run whose loss becomes non-finite is a result (diverged.json, shown "
                        "by the report): say so and exit 0, now and when asked for again; make "
                        "trains the ablations so")


def _config_from_args(args):
    from lsq.config import make_config

    config = make_config(args.dataset, args.row, args.profile, args.seed, args.ablation)
    overrides = list(args.set)
    for flag, key in (("epochs", "optim.epochs"), ("batch_size", "optim.batch_size"),
                      ("lr", "optim.lr"), ("workers", "data.workers")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    config = config.with_overrides(*overrides)
    # Paths are set as they are: through YAML, "/d #x" would lose its tail and "on" become True.
    data = replace(config.data, download=args.download or config.data.download)
    if args.data_dir is not None:
        data = replace(data, data_dir=args.data_dir)
    return replace(config, device=args.device, amp=args.amp or config.amp,
                   channels_last=args.channels_last or config.channels_last,
                   compile_model=config.compile_model if args.compile is None else args.compile,
                   cuda_graphs=config.cuda_graphs if args.cuda_graphs is None else args.cuda_graphs,
                   data=data,
                   pretrained_weights=args.weights if args.weights is not None else config.pretrained_weights)


def _train(args) -> int:
    from lsq.errors import NonFiniteLossError

    config = _config_from_args(args)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    try:
        _fit(config, args)
    except NonFiniteLossError as error:
        from pathlib import Path

        from lsq import runs

        if not (args.diverged_ok and runs.read_diverged(config.run_dir(Path(args.runs_dir)))):
            raise
        print(f"diverged: {error}")
    return 0


def _fit(config, args) -> None:
    from lsq.engine.launch import fit_after_baseline
    from lsq.engine.run import fit

    try:
        if args.wait_for_baseline:
            if args.retrain_baseline:
                raise ConfigError("--wait-for-baseline and --retrain-baseline do not go together: "
                               "retrain the baseline first, then start the rows")
            fit_after_baseline(config, args.runs_dir, progress=not args.no_progress)
        else:
            fit(config, args.runs_dir, progress=not args.no_progress,
                retrain_baseline=args.retrain_baseline)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            # Tear the process group down in step: a rank that exits while its peer is still
            # closing gloo's connections can abort the peer (SIGABRT).
            dist.destroy_process_group()


def _check_data(args) -> int:
    """Load the dataset's index once so a missing dataset fails before any run starts."""
    import torch

    from lsq.config import DataConfig
    from lsq.data import build_data

    if args.dataset == "synthetic":
        print("synthetic: generated on the fly, nothing to check")
        return 0
    bundle = build_data(args.dataset, DataConfig(data_dir=args.data_dir, download=args.download), batch_size=1,
                        eval_batch_size=1, device=torch.device("cpu"), seed=0)
    print(f"{args.dataset}: {bundle.num_train} train / {bundle.num_test} test images "
          f"({bundle.data_kind}) from {bundle.source}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsq", description="LSQ reproducibility: train table rows, render the report, export integer weights, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)

    sub.add_parser("report", help="render the report (markdown + HTML site) from runs/", add_help=False)
    p = sub.add_parser("export", help="export a run's integer weights (lsq-export), or its ONNX "
                                      "graph evaluated by ONNX Runtime (--format onnx)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output file (default: RUN_DIR/export.pt, or RUN_DIR/model.onnx)")
    p.add_argument("--format", default="lsq", choices=["lsq", "onnx"],
                   help="lsq: integer codes and step sizes (default); onnx: an ONNX graph, run "
                        "with ONNX Runtime on the run's test set into RUN_DIR/deployed.json")
    p.add_argument("--form", default="qdq", choices=["qdq", "qlinear", "integer"],
                   help="with --format onnx: the graph's form (docs/deploy.md)")
    p.add_argument("--weights-from", metavar="RETRAINED_RUN",
                   help="take the weights of a bit-identical retraining of RUN_DIR (make "
                        "reproduce keeps them), for a run committed without weights")

    sub.add_parser("mlflow", help="import run directories into an MLflow store (SQLite)",
                   add_help=False)
    sub.add_parser("tensorboard", help="rebuild every run's TensorBoard log from its metrics",
                   add_help=False)

    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES), add_help=False)
    p.add_argument("name", choices=BENCHES)

    sub.add_parser("compare-runs", help="compare the results of two trees of runs (reproducibility)",
                   add_help=False)

    p = sub.add_parser("list", help="print one of the project's lists, space-separated (the Makefile reads them)")
    p.add_argument("what", choices=LISTS)
    p.add_argument("--profile", default="quick", choices=PROFILES,
                   help="for ablation-rows and controls")
    p.add_argument("--dataset", choices=sorted(TABLES),
                   help="for rows, baseline and table-ablations: the table")

    p = sub.add_parser("check-data", help="check that a dataset is where training expects it")
    p.add_argument("--dataset", required=True, choices=sorted(TABLES))
    p.add_argument("--data-dir")
    p.add_argument("--download", action="store_true", help="download it first (needs internet)")

    args, rest = parser.parse_known_args(argv)
    global _cleanup_armed
    _cleanup_armed = True
    try:
        if args.command == "report":
            from lsq.report import main as report_main
            return report_main(rest)
        if args.command == "compare-runs":
            from lsq.compare import main as compare_main
            return compare_main(rest)
        if args.command in ("mlflow", "tensorboard"):
            from lsq.track import main as track_main
            return track_main(rest, command=args.command)
        if args.command == "bench":
            import importlib
            return importlib.import_module(f"lsq.bench.{args.name}").main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command == "train":
            return _train(args)
        if args.command == "list":
            if args.what in NEEDS_DATASET and not args.dataset:
                parser.error(f"list {args.what} needs --dataset")
            print(" ".join(map(str, LISTS[args.what](args.profile, args.dataset))))
            return 0
        if args.command == "check-data":
            return _check_data(args)
        if args.command == "export" and args.format == "onnx":
            if args.weights_from:
                parser.error("--weights-from writes export.pt (--format lsq); deploy from it "
                             "after: lsq export RUN_DIR --format onnx")
            from lsq.deploy import main as deploy_main
            return deploy_main([args.run_dir, "--form", args.form]
                               + (["--out", args.out] if args.out else []))
        if args.command == "export":
            from lsq.engine.checkpoint import export_run
            summary = export_run(args.run_dir, args.out, weights_from=args.weights_from)
            for key, value in summary.items():
                if not isinstance(value, dict):
                    print(f"{key}: {value}")
            return 0
    except LsqError as error:
        if os.environ.get("LSQ_DEBUG"):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        print(INTERRUPTED.format(signal=signal.Signals(signum).name), file=sys.stderr)
        return 128 + signum
    finally:
        _cleanup_armed = False  # a signal while the interpreter shuts down: no traceback either
    return 0


if __name__ == "__main__":
    sys.exit(main())
