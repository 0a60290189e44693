"""``python -m lsq bench data``: is the data path fast enough to keep the model busy?

Side by side, in one run, on one device and the same images:

* batched: :class:`lsq.data.TensorLoader`, the path training uses (index, pad-4 crop, flip and
  normalise as batched tensor ops on the device);
* per-image: torchvision's ``DataLoader`` over a ``Dataset`` of PIL images with
  ``RandomCrop(size, padding=4) + RandomHorizontalFlip + ToTensor + Normalize``, with 0 and 2
  worker processes, batches then moved to the device;
* step: the ResNet-20 float training step (forward, backward, SGD) on ready batches.

Then data time as a share of step time (goal: at most 10%) and the batched path's speedup.
Every path is timed in steady state: its first batch (warm-up, worker start) is not counted.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Iterator

import numpy as np
import torch
from torch.nn import functional as F

from lsq.config import DataConfig
from lsq.data import build_data
from lsq.models import build_model
from lsq.engine.host import device_description
from lsq.engine.host import resolve_device
from lsq.bench import sync

PER_IMAGE_WORKERS = (0, 2)
DATA_SHARE_GOAL = 10.0  # percent of the step time


class _PerImageDataset(torch.utils.data.Dataset):
    """The torchvision way: one PIL image per ``__getitem__``, transformed on its own."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform  # images (N, H, W, C)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        image = self.images[index]
        image = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
        return self.transform(image), int(self.labels[index])



def _epochs(loader) -> Iterator:
    """Batches of consecutive epochs, for as long as they are asked for."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _images_per_second(batches: Iterator, count: int, device: torch.device) -> float:
    """Images/s over ``count`` batches after a first, untimed one; batches end up on ``device``."""
    images, _ = next(batches)
    images.to(device)
    sync(device)
    seen, start = 0, time.perf_counter()
    for _ in range(count):
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        seen += len(images)
    sync(device)
    return seen / (time.perf_counter() - start)


def _per_image_path(loader, workers: int, batch_size: int, seed: int):
    from torchvision import transforms

    size = loader.images.shape[-1]
    transform = transforms.Compose([
        transforms.RandomCrop(size, padding=loader.padding), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(loader.mean, loader.std),
    ])
    dataset = _PerImageDataset(loader.images.permute(0, 2, 3, 1).cpu().numpy(),
                               loader.labels.cpu().numpy(), transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )


def _step_images_per_second(model, images, labels, count: int, device: torch.device) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, cuDNN algorithm choice
    sync(device)
    start = time.perf_counter()
    for _ in range(count):
        step()
    sync(device)
    return count * len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lsq bench data", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic", choices=("synthetic", "cifar10", "fashion-mnist"))
    parser.add_argument("--data-dir", help="dataset location (default: see lsq.data.default_data_dir)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per path")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.batch_size < 1:
        parser.error("--batches and --batch-size must be positive")

    device = resolve_device(args.device)
    # Only as many training images as one warm-up plus the timed batches need: reading or
    # generating more would time the disk, not the data path.
    needed = (args.batches + 1) * args.batch_size
    data = build_data(args.dataset, DataConfig(data_dir=args.data_dir, train_subset=needed, test_subset=1),
                      batch_size=args.batch_size, eval_batch_size=args.batch_size, device=device, seed=0)
    loader = data.train
    shape = "x".join(str(v) for v in (*loader.images.shape[2:], loader.images.shape[1]))

    print(f"lsq data bench: {args.dataset} ({data.data_kind}, {shape}), batch {args.batch_size}, "
          f"{args.batches} timed batches per path (first batch not counted)")
    print(f"machine: {platform.platform()}, {platform.machine()}; torch {torch.__version__}; "
          f"device {device_description(device)}")

    rates = {"batched": _images_per_second(_epochs(loader), args.batches, device)}
    for workers in PER_IMAGE_WORKERS:
        per_image = _per_image_path(loader, workers, args.batch_size, seed=0)
        rates[f"workers={workers}"] = _images_per_second(_epochs(per_image), args.batches, device)
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    model = build_model("resnet20", num_classes=data.num_classes, in_channels=data.in_channels).to(device)
    rates["step"] = _step_images_per_second(model, images, labels, args.batches, device)

    names = {
        "batched": "batched tensor loader (lsq.data)",
        **{f"workers={w}": f"torchvision per-image DataLoader, workers={w}" for w in PER_IMAGE_WORKERS},
        "step": "ResNet-20 float train step (fwd+bwd+SGD)",
    }
    print(f"{'path':<48}{'images/s':>12}{'ms/batch':>12}")
    for key, name in names.items():
        print(f"{name:<48}{rates[key]:>12.0f}{1000 * args.batch_size / rates[key]:>12.2f}")

    # Time per image is 1 / rate, so data time over step time is step rate over data rate.
    shares = {key: 100 * rates["step"] / rates[key] for key in rates if key != "step"}
    verdict = "ok" if shares["batched"] <= DATA_SHARE_GOAL else "over the goal"
    print(f"data time as % of step time: batched {shares['batched']:.1f}% "
          f"(goal <= {DATA_SHARE_GOAL:.0f}%: {verdict}), "
          + ", ".join(f"per-image {key} {shares[key]:.1f}%" for key in shares if key != "batched"))
    print("batched vs per-image speedup: "
          + ", ".join(f"{rates['batched'] / rates[key]:.1f}x ({key})" for key in shares if key != "batched"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
