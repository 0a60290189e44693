"""``python -m lsq bench imagenet``: how many images/s the ImageNet input pipeline delivers.

ImageNet is not held on the device like CIFAR-10: every image is a JPEG decoded, randomly
resized-cropped to 224, flipped and normalised in a worker process (``lsq.data``'s ImageFolder
path, the one training uses). Decoding is CPU work, so the pipeline's speed is images/s per
worker times the workers the machine can spare; this bench measures it with 0 (in the main
process), 1 and 2 workers, or the counts given.

Without ``--data-dir`` it writes ``--images`` generated JPEGs at ImageNet's typical size
(500x375, quality 90, smooth content plus grain) to a temporary folder, and says so: these are
not ImageNet photos, so treat the figure as the order of magnitude. With ``--data-dir`` it
reads the real ``train/`` folder (only the first images it needs).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lsq.config import DataConfig
from lsq.data import build_data

GENERATED_SIZE = (500, 375)  # ImageNet's most common train image size (width, height)


def write_generated_jpegs(root: Path, count: int, classes: int = 4, seed: int = 0) -> float:
    """``count`` JPEGs in ``root/{train,val}/<class>/``; returns their mean size in KB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = GENERATED_SIZE
    sizes = []
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            # Low-resolution colour fields scaled up, plus grain: compresses like a photo
            # (~100 KB at quality 90, near ImageNet's mean of about 110 KB), unlike pure noise.
            coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
            smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
            grain = rng.integers(-32, 33, (height, width, 3), dtype=np.int16)
            pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
            path = folder / f"img_{i:06d}.JPEG"
            Image.fromarray(pixels).save(path, quality=90)
            if split == "train":
                sizes.append(path.stat().st_size)
    return sum(sizes) / len(sizes) / 1024


def images_per_second(data_dir: Path, workers: int, batch_size: int, batches: int) -> float:
    """Steady-state train-loader throughput: the first batch (worker start-up) is not timed."""
    data = build_data("imagenet", DataConfig(data_dir=str(data_dir), workers=workers,
                                             train_subset=(batches + 1) * batch_size),
                      batch_size=batch_size, eval_batch_size=batch_size, device=torch.device("cpu"),
                      seed=0)
    data.train.set_epoch(0)
    iterator = iter(data.train)
    next(iterator)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        images, _ = next(iterator)
        seen += images.shape[0]
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsq bench imagenet", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="an ImageNet folder (train/, val/); default: generated JPEGs")
    parser.add_argument("--workers", default="0,1,2", help="worker counts to time (default: 0,1,2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per worker count")
    args = parser.parse_args(argv)
    try:
        counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if any(w < 0 for w in counts) or args.batch_size < 1 or args.batches < 1:
        parser.error("--workers must be >= 0, --batch-size and --batches >= 1")

    needed = (args.batches + 1) * args.batch_size
    with tempfile.TemporaryDirectory(prefix="lsq-bench-imagenet-") as tmp:
        if args.data_dir:
            data_dir, source = Path(args.data_dir), f"ImageNet-layout folder {args.data_dir} (real files)"
        else:
            data_dir = Path(tmp)
            mean_kb = write_generated_jpegs(data_dir, needed)
            source = (f"{needed} generated JPEGs, {GENERATED_SIZE[0]}x{GENERATED_SIZE[1]}, "
                      f"quality 90, mean {mean_kb:.0f} KB (not ImageNet photos)")
        print(f"lsq ImageNet input bench: {source}; RandomResizedCrop 224 + flip + normalise; "
              f"batch {args.batch_size}, {args.batches} timed batches per worker count")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs; torch {torch.__version__}")
        print(f"{'workers':>8} {'images/s':>10} {'per worker':>11}")
        per_worker = []
        for workers in counts:
            rate = images_per_second(data_dir, workers, args.batch_size, args.batches)
            per = rate / max(workers, 1)
            if workers > 0:
                per_worker.append(per)
            print(f"{workers:>8} {rate:>10.0f} {per:>11.0f}")
    if per_worker:
        best = max(per_worker)
        print(f"to feed a GPU training at R images/s, give it about R / {best:.0f} workers "
              f"(e.g. {math.ceil(3000 / best)} for 3,000 images/s), one CPU core each, and the "
              "data on a disk that reads R x the mean JPEG size per second")
    return 0
