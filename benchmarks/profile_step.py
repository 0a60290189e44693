"""Where a training step's GPU time goes: torch.profiler over eager steps of one row.

    python benchmarks/profile_step.py --row 4 --amp --channels-last [--steps 5]

Prints the kernels sorted by total device time (CUDA graphs off, so each kernel is attributed).
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from lsq.bench.train import _RepeatLoader
from lsq.config import make_config
from lsq.step import Context, TrainStep
from lsq.train import build_optimizer, build_run_model, calibrate, step_size_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--row", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    config = make_config("cifar10", args.row, "paper")
    model = build_run_model(config).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.randn(128, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (128,), device=device)
    ctx = Context(device, amp=args.amp, channels_last=args.channels_last, progress=False)
    calibrate(model, _RepeatLoader(images, labels), ctx)
    ctx.step_sizes = step_size_params(model)
    step = TrainStep(model, build_optimizer(model, config), ctx)
    images = ctx.prepare(images)
    model.train()
    for _ in range(5):
        step(images, labels)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step(images, labels)
        torch.cuda.synchronize()
    print(f"row {args.row}, amp={args.amp}, channels_last={args.channels_last}, {args.steps} steps")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70))


if __name__ == "__main__":
    main()
