"""Evaluation time per row, eager against compiled (what ``lsq.engine.fastpath.eval_model`` chooses between).

    python benchmarks/eval_time.py [--rows 0,4] [--device cpu] [--test-images 2048] [--threads N]

Synthetic CIFAR-shaped test images at the paper profile's eval batch (512), step sizes calibrated
on a training batch. Prints the first evaluation (which compiles) and the best of three after it.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from lsq.config import make_config
from lsq.engine.fastpath import eval_model
from lsq.engine.recipe import calibrate, evaluate, seed_everything
from lsq.engine.run import build_run
from lsq.quant.convert import quantizers


def seconds(model, run, eager_model) -> tuple[float, float]:
    start = time.perf_counter()
    evaluate(model, run.data.test, run.ctx, eager_model)
    first = time.perf_counter() - start
    timed = []
    for _ in range(3):
        start = time.perf_counter()
        evaluate(model, run.data.test, run.ctx, eager_model)
        if run.ctx.device.type == "cuda":
            torch.cuda.synchronize()
        timed.append(time.perf_counter() - start)
    return first, min(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="0,4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--test-images", type=int, default=2048)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# evaluation of {args.test_images} synthetic images, batch 512, {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'row':>3}  {'eager s':>8}  {'compiled s':>10}  {'speed-up':>8}  {'compile s':>9}")
    for row in (int(r) for r in args.rows.split(",")):
        config = replace(make_config("synthetic", row, "paper").with_overrides(
            f"data.test_subset={args.test_images}"), device=args.device)
        seed_everything(0)
        run = build_run(config, device, 0, 1, None, progress=False)
        if quantizers(run.model):
            calibrate(run.model, run.data.train, run.ctx)
        _, eager = seconds(run.model, run, None)
        first, compiled = seconds(eval_model(run.model, True, torch.device("cpu")), run, run.model)
        print(f"{row:>3}  {eager:8.2f}  {compiled:10.2f}  {eager / compiled:7.2f}x  {first - compiled:9.1f}")


if __name__ == "__main__":
    main()
