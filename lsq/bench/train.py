"""``python -m lsq bench train``: training throughput per table row, and what a full table costs.

For each row of a table (float baseline and LSQ rows 1-4) it times the real training step
(forward, backward, SGD step with the row's optimizer groups) on synthetic input of the table's
shape on the chosen device, then estimates the wall time of the whole table at the ``paper``
profile (every row's epochs x training images / images per second; evaluation not included).
``setup s`` is what a run pays once before its first timed step: model build, calibration,
``torch.compile`` and CUDA-graph capture.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from lsq.config import make_config
from lsq.experiments import get_table
from lsq.engine.host import device_description
from lsq.runs import write_json
from lsq.engine.step import WARMUP_STEPS, Context, TrainStep
from lsq.engine.fastpath import resolve_fast_path
from lsq.engine.host import resolve_device
from lsq.engine.recipe import build_optimizer, build_run_model, calibrate
from lsq.quant.inspect import step_size_params
from lsq.bench import sync

TRAIN_IMAGES = {"cifar10": 50_000, "imagenet": 1_281_167, "fashion-mnist": 60_000, "synthetic": 50_000}


class _RepeatLoader:
    """One fixed batch, behaving like a :mod:`lsq.data` loader for ``calibrate``."""

    def __init__(self, images, labels):
        self.batch = (images, labels)

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        yield self.batch

    def __len__(self):
        return 1



def build_row_step(dataset: str, row: int, *, device, batch_size: int, amp: bool,
                   channels_last: bool, compile_model: bool, cuda_graphs: bool):
    """``(step, images, labels)``: one row's model, built and calibrated as training does it,
    behind the loop's own :class:`TrainStep`, with one fixed random batch in training mode."""
    table = get_table(dataset)
    config = make_config(dataset, row, "paper")
    model = build_run_model(config).to(device)
    shape = (batch_size, table.in_channels, table.image_size, table.image_size)
    images = torch.randn(shape, device=device)
    labels = torch.randint(0, table.num_classes, (batch_size,), device=device)
    ctx = Context(device, amp=amp, channels_last=channels_last, progress=False,
                  cuda_graphs=cuda_graphs)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    calibrate(model, _RepeatLoader(images, labels), ctx)
    ctx.step_sizes = step_size_params(model)
    optimizer = build_optimizer(model, config)
    step_model = torch.compile(model) if compile_model else model
    model.train()
    return TrainStep(step_model, optimizer, ctx, eager_model=model), ctx.prepare(images), labels


def time_row(dataset: str, row: int, *, device, batch_size: int, steps: int, warmup: int,
             amp: bool, channels_last: bool, compile_model: bool, cuda_graphs: bool) -> tuple[float, float]:
    """(median seconds per training step, seconds of setup: build, calibrate, compile, capture
    and warm-up) of one row, through the loop's own :class:`TrainStep` (so CUDA graphs and the
    fused update are what training uses)."""
    setup_start = time.perf_counter()
    step, images, labels = build_row_step(
        dataset, row, device=device, batch_size=batch_size, amp=amp, channels_last=channels_last,
        compile_model=compile_model, cuda_graphs=cuda_graphs)
    for _ in range(max(warmup, WARMUP_STEPS + 2 if cuda_graphs else 0)):
        step(images, labels)
    sync(device)
    setup_seconds = time.perf_counter() - setup_start
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        step(images, labels)
        sync(device)
        times.append(time.perf_counter() - start)
    if cuda_graphs and step.replays == 0:
        raise RuntimeError("bench: the CUDA graph was never replayed")
    return statistics.median(times), setup_seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsq bench train", description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10", choices=["cifar10", "imagenet", "fashion-mnist"])
    parser.add_argument("--rows", default="0,1,2,3,4")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the whole model (default: as the paper profile's "
                        "training, i.e. on wherever the compiler can run)")
    parser.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                        help="replay the step as a CUDA graph (default: as training, on for CUDA)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    # The same defaults and refusals as training (compile and graphs on for one CUDA device).
    # The paper profile's step count decides auto-compilation on the CPU, as in its training.
    paper = make_config(args.dataset, 1, "paper")
    paper_steps = paper.optim.epochs * (TRAIN_IMAGES[args.dataset] // paper.optim.batch_size)
    args.compile, args.cuda_graphs = resolve_fast_path(
        replace(paper, compile_model=args.compile, cuda_graphs=args.cuda_graphs), device,
        world_size=1, train_steps=paper_steps)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = [int(r) for r in args.rows.split(",")]
    table = get_table(args.dataset)
    batch_size = args.batch_size or make_config(args.dataset, 1, "paper").optim.batch_size
    print(f"# bench train: {args.dataset} ({table.model}), batch {batch_size}, device "
          f"{device_description(device)}, torch {torch.__version__}, amp={args.amp}, "
          f"channels_last={args.channels_last}, compile={args.compile}, "
          f"cuda_graphs={args.cuda_graphs}")
    print(f"{'row':>4} {'ms/step':>9} {'img/s':>9} {'x float':>8} {'paper epochs':>13} {'est. hours':>11} "
          f"{'setup s':>8}")
    total_hours, float_time, results = 0.0, None, []
    for row in rows:
        seconds, setup_seconds = time_row(args.dataset, row, device=device, batch_size=batch_size, steps=args.steps,
                           warmup=args.warmup, amp=args.amp, channels_last=args.channels_last,
                           compile_model=args.compile, cuda_graphs=args.cuda_graphs)
        if row == 0:
            float_time = seconds
        epochs = make_config(args.dataset, row, "paper").optim.epochs
        hours = epochs * TRAIN_IMAGES[args.dataset] / (batch_size / seconds) / 3600
        total_hours += hours
        ratio = f"{seconds / float_time:8.2f}" if float_time else f"{'-':>8}"
        print(f"{row:>4} {seconds * 1e3:9.1f} {batch_size / seconds:9.0f} {ratio} {epochs:>13} {hours:11.2f} {setup_seconds:8.1f}")
        results.append({"row": row, "seconds_per_step": seconds, "images_per_second": batch_size / seconds,
                        "ratio_to_float": seconds / float_time if float_time else None,
                        "paper_epochs": epochs, "estimated_hours": hours, "setup_seconds": setup_seconds})
    print(f"estimated wall time of the whole {args.dataset} table at the paper profile "
          f"(training steps only, rows {args.rows}): {total_hours:.2f} h = {total_hours * 60:.1f} min")
    if args.json:
        write_json(Path(args.json), {
            "dataset": args.dataset, "batch_size": batch_size, "device": device_description(device),
            "torch": torch.__version__, "amp": args.amp, "channels_last": args.channels_last,
            "compile": args.compile, "cuda_graphs": args.cuda_graphs, "rows": results,
            "estimated_table_hours": total_hours})
    return 0
