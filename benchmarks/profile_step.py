"""Where a training step's GPU time goes: torch.profiler over eager steps of each row.

    python benchmarks/profile_step.py --rows 0,4 --amp --channels-last [--steps 5]

Per row: kernels launched per step, the device time they add up to (with CUDA graphs a step
cannot take less), the wall time of an eager step, and the kernels sorted by total device time
(CUDA graphs off, so each kernel is attributed). A row whose device time per step is far below
the graph-replay step time of ``bench train`` leaves the GPU idle: latency, not work.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from lsq.bench.train import build_row_step


def profile_row(row: int, args) -> None:
    step, images, labels = build_row_step(
        "cifar10", row, device=torch.device("cuda"), batch_size=128, amp=args.amp,
        channels_last=args.channels_last, compile_model=False, cuda_graphs=False)
    for _ in range(5):
        step(images, labels)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(args.steps):
            step(images, labels)
        end.record()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_ms = sum(e.device_time for e in kernels) / 1000 / args.steps
    print(f"row {row}, amp={args.amp}, channels_last={args.channels_last}, {args.steps} eager steps: "
          f"{len(kernels) / args.steps:.0f} kernels and {busy_ms:.2f} ms of device time per step, "
          f"{start.elapsed_time(end) / args.steps:.2f} ms wall per step")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.top, max_name_column_width=70))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="0,4")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    for row in (int(r) for r in args.rows.split(",")):
        profile_row(row, args)


if __name__ == "__main__":
    main()
