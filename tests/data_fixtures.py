"""Tiny datasets in the real on-disk formats (CIFAR-10 pickles, idx files, ImageFolder trees),
shared by the data tests and the end-to-end training tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_PER_BATCH, CIFAR_TEST = 20, 30


def write_cifar10(root: Path, *, bytes_keys: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny ``cifar-10-batches-py``: the pickled dicts torchvision reads, same file names."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    arrays = {"train_x": [], "train_y": []}
    files = [(f"data_batch_{i}", CIFAR_PER_BATCH) for i in range(1, 6)] + [("test_batch", CIFAR_TEST)]
    for name, count in files:
        images = rng.integers(0, 256, (count, 3072), dtype=np.uint8)  # row = R plane, G, B (1024 each)
        labels = [int(v) for v in rng.integers(0, 10, count)]
        entry = {key("batch_label"): name, key("labels"): labels, key("data"): images,
                 key("filenames"): [f"img_{i}.png" for i in range(count)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
        if name == "test_batch":
            arrays["test_x"], arrays["test_y"] = images, np.array(labels)
        else:
            arrays["train_x"].append(images)
            arrays["train_y"].append(np.array(labels))
    with open(folder / "batches.meta", "wb") as handle:
        names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        pickle.dump({key("label_names"): names, key("num_cases_per_batch"): CIFAR_PER_BATCH,
                     key("num_vis"): 3072}, handle, protocol=2)
    arrays["train_x"] = np.concatenate(arrays["train_x"])
    arrays["train_y"] = np.concatenate(arrays["train_y"])
    return arrays


def write_idx(path: Path, array: np.ndarray) -> None:
    """idx format: magic 0x0000 0x08 <ndim>, big-endian uint32 sizes, raw uint8 data."""
    payload = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as handle:
        handle.write(payload)


def write_fashion_mnist(folder: Path, *, gz: bool = True, train: int = 40, test: int = 12) -> dict:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, count in (("train", train), ("t10k", test)):
        arrays[split] = (rng.integers(0, 256, (count, 28, 28), dtype=np.uint8), rng.integers(0, 10, count))
        suffix = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", arrays[split][0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", arrays[split][1])
    return arrays


def write_image_folder(root: Path, classes=("n01", "n02", "n03"), per_class=(4, 2)) -> None:
    from PIL import Image

    rng = np.random.default_rng(2)
    for split, count in zip(("train", "val"), per_class):
        for wnid in classes:
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)


