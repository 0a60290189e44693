"""lsq.data: real on-disk formats (tiny fixtures), determinism, sharding, subsets, augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lsq import data as lsq_data
from lsq.config import DataConfig
from lsq.errors import DatasetNotFoundError
from lsq.data import (
    CIFAR10_MEAN, CIFAR10_STD, DataBundle, TensorLoader, build_data,
    default_data_dir, read_idx, shard_epoch, shard_test, synthetic_split, synthetic_templates,
)

from data_fixtures import (
    CIFAR_PER_BATCH, CIFAR_TEST, write_cifar10, write_fashion_mnist, write_idx, write_image_folder,
)

CPU = torch.device("cpu")


def build(dataset, data_dir=None, *, seed=0, batch_size=8, eval_batch_size=16, rank=0, world_size=1,
          device=CPU, **data_config) -> DataBundle:
    config = DataConfig(data_dir=None if data_dir is None else str(data_dir), **data_config)
    return build_data(dataset, config, batch_size=batch_size, eval_batch_size=eval_batch_size,
                      device=device, seed=seed, rank=rank, world_size=world_size)


def epoch_batches(loader, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.set_epoch(epoch)
    return list(loader)


def to_uint8(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the normalisation; exact after rounding because the inputs were integers."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return ((images * std + mean) * 255).round().to(torch.uint8)


@pytest.fixture
def cifar_dir(tmp_path):
    arrays = write_cifar10(tmp_path)
    return tmp_path, arrays


# --- CIFAR-10 --------------------------------------------------------------------------------


def test_cifar10_shapes_dtypes_and_normalisation(cifar_dir):
    root, arrays = cifar_dir
    bundle = build("cifar10", root)
    assert (bundle.num_train, bundle.num_test) == (5 * CIFAR_PER_BATCH, CIFAR_TEST)
    assert (bundle.data_kind, bundle.num_classes, bundle.in_channels) == ("real", 10, 3)
    assert len(bundle.train) == 100 // 8 and len(bundle.test) == 2
    images, labels = epoch_batches(bundle.train, 0)[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    test = list(bundle.test)
    assert [len(y) for _, y in test] == [16, 14]  # last test batch kept, short
    images = torch.cat([x for x, _ in test])
    labels = torch.cat([y for _, y in test])
    # Test images are the files' images, in file order, only normalised.
    expected = torch.from_numpy(arrays["test_x"].reshape(-1, 3, 32, 32))
    assert torch.equal(to_uint8(images, CIFAR10_MEAN, CIFAR10_STD), expected)
    assert torch.equal(labels, torch.from_numpy(arrays["test_y"]).long())
    mean, std = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(images, (expected.float() / 255 - mean) / std)


def test_cifar10_reader_agrees_with_torchvision(cifar_dir, monkeypatch):
    """The fixture is what torchvision reads (md5 checks off), and we read the same images."""
    import torchvision
    from torchvision.datasets import cifar

    root, _ = cifar_dir
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    reference = torchvision.datasets.CIFAR10(str(root), train=True)
    bundle = build("cifar10", root)
    assert torch.equal(bundle.train.images.permute(0, 2, 3, 1), torch.from_numpy(reference.data))
    assert bundle.train.labels.tolist() == reference.targets


def test_cifar10_pickles_with_bytes_keys_load_too(tmp_path):
    arrays = write_cifar10(tmp_path, bytes_keys=True)
    bundle = build("cifar10", tmp_path)
    assert torch.equal(bundle.train.images.reshape(100, -1), torch.from_numpy(arrays["train_x"]))


def test_data_dir_may_point_at_the_batches_folder_itself(cifar_dir):
    root, _ = cifar_dir
    assert build("cifar10", root / "cifar-10-batches-py").num_train == 100


# --- determinism, sharding, subsets ----------------------------------------------------------


def test_same_seed_and_epoch_give_identical_batches(cifar_dir):
    root, _ = cifar_dir
    first = epoch_batches(build("cifar10", root, seed=3).train, 5)
    again = epoch_batches(build("cifar10", root, seed=3).train, 5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    other_epoch = epoch_batches(build("cifar10", root, seed=3).train, 6)
    other_seed = epoch_batches(build("cifar10", root, seed=4).train, 5)
    for other in (other_epoch, other_seed):
        assert not torch.equal(torch.cat([y for _, y in first]), torch.cat([y for _, y in other]))


def test_train_loader_requires_set_epoch(cifar_dir):
    root, _ = cifar_dir
    with pytest.raises(RuntimeError, match="set_epoch"):
        next(iter(build("cifar10", root).train))


def identity_loader(n: int, *, rank=0, world_size=1, batch_size=4, train=True, seed=0) -> TensorLoader:
    """Labels carry the image index, so batches can be traced back to images."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=generator, dtype=torch.uint8)
    return TensorLoader(images, torch.arange(n), mean=(0.5,) * 3, std=(0.25,) * 3, batch_size=batch_size,
                        train=train, seed=seed, rank=rank, world_size=world_size, padding=2)


def test_two_ranks_partition_the_epoch_and_see_the_same_augmented_images():
    n, batch = 43, 4
    batches = epoch_batches(identity_loader(n, batch_size=1), 2)
    single = {int(y): x for xs, ys in batches for x, y in zip(xs, ys)}
    seen = []
    for rank in (0, 1):
        loader = identity_loader(n, rank=rank, world_size=2, batch_size=batch)
        assert len(loader) == (n // 2) // batch == 5
        for images, labels in epoch_batches(loader, 2):
            for image, label in zip(images, labels):
                # Augmentation follows (seed, epoch, image), not the rank.
                assert torch.equal(image, single[int(label)])
            seen.extend(labels.tolist())
    assert len(seen) == len(set(seen)) == 2 * 5 * batch
    # The two ranks' shards interleave the same shared permutation.
    order = shard_epoch(n, 0, 2).tolist()
    assert set(seen) <= set(order[: (n // 2) * 2])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 200), world_size=st.integers(1, 5), seed=st.integers(0, 2**40),
       epoch=st.integers(0, 300))
def test_shards_are_disjoint_and_cover_a_prefix_of_one_permutation(n, world_size, seed, epoch):
    shards = [shard_epoch(n, seed, epoch, rank, world_size).tolist() for rank in range(world_size)]
    assert all(len(shard) == n // world_size for shard in shards)
    flat = [i for shard in shards for i in shard]
    assert len(set(flat)) == len(flat)
    assert sorted(flat) == sorted(shard_epoch(n, seed, epoch)[: (n // world_size) * world_size].tolist())
    tests = [shard_test(n, rank, world_size).tolist() for rank in range(world_size)]
    assert sorted(i for shard in tests for i in shard) == list(range(n))


def test_test_loader_covers_every_image_once_over_ranks(cifar_dir):
    root, _ = cifar_dir
    labels = []
    images = []
    for rank in (0, 1, 2):
        bundle = build("cifar10", root, rank=rank, world_size=3)
        assert bundle.num_test == CIFAR_TEST  # the total; each rank holds a third
        batches = list(bundle.test)
        images.append(torch.cat([x for x, _ in batches]))
        labels.append(torch.cat([y for _, y in batches]))
    full = torch.cat([x for x, _ in build("cifar10", root).test])
    merged = torch.empty_like(full)
    for rank in range(3):
        merged[rank::3] = images[rank]
    assert torch.equal(merged, full)


def test_subsets_are_fixed_across_run_seeds(cifar_dir):
    root, arrays = cifar_dir
    bundles = [build("cifar10", root, seed=seed, train_subset=30, test_subset=10) for seed in (0, 1, 7)]
    for bundle in bundles:
        assert (bundle.num_train, bundle.num_test) == (30, 10)
        assert torch.equal(bundle.train.images, bundles[0].train.images)
        assert torch.equal(bundle.test.images, bundles[0].test.images)
    # A subset is made of the split's own images, in their original order.
    full = torch.from_numpy(arrays["train_x"].reshape(-1, 3, 32, 32))
    positions = [int(torch.nonzero((full == image).flatten(1).all(1))[0])
                 for image in bundles[0].train.images]
    assert positions == sorted(positions) and len(set(positions)) == 30
    # 0 is refused where the config is built (lsq.config), not read as "all".
    with pytest.raises(ValueError, match=r"data.train_subset must be an integer >= 1"):
        build("cifar10", root, train_subset=0)


def test_no_full_batch_is_an_error(cifar_dir):
    root, _ = cifar_dir
    with pytest.raises(ValueError, match="no full batch"):
        build("cifar10", root, train_subset=5, batch_size=8)


# --- augmentation ----------------------------------------------------------------------------


def windows(image: np.ndarray, padding: int) -> list[np.ndarray]:
    """Every crop (and its mirror) of the zero-padded image, by plain numpy slicing."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * padding, w + 2 * padding), dtype=image.dtype)
    padded[:, padding:padding + h, padding:padding + w] = image
    crops = [padded[:, y:y + h, x:x + w] for y in range(2 * padding + 1) for x in range(2 * padding + 1)]
    return crops + [crop[:, :, ::-1] for crop in crops]


def test_augmentation_is_a_padded_crop_and_flip_of_the_image():
    n, padding = 64, 4
    image = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    loader = TensorLoader(image.expand(n, -1, -1, -1).contiguous(), torch.arange(n), mean=CIFAR10_MEAN,
                          std=CIFAR10_STD, batch_size=16, train=True, padding=padding)
    candidates = windows(image.numpy(), padding)
    matched = []
    for images, _ in epoch_batches(loader, 0):
        for out in to_uint8(images, CIFAR10_MEAN, CIFAR10_STD).numpy():
            hits = [i for i, crop in enumerate(candidates) if np.array_equal(out, crop)]
            assert hits, "an augmented image is no crop/flip of the original"
            matched.append(hits[0])
    # Both mirror states and many offsets occur: the randomness is real.
    assert any(i < 81 for i in matched) and any(i >= 81 for i in matched)
    assert len(set(matched)) > 20


def test_crop_flip_matches_a_per_image_reference():
    generator = torch.Generator().manual_seed(9)
    images = torch.randint(0, 256, (6, 2, 5, 7), generator=generator, dtype=torch.uint8)
    dy, dx = torch.randint(0, 5, (6,), generator=generator), torch.randint(0, 5, (6,), generator=generator)
    flip = torch.tensor([True, False, True, True, False, False])
    out = lsq_data.crop_flip(images, dy, dx, flip, 2)
    for b in range(6):
        crop = windows(images[b].numpy(), 2)[int(dy[b]) * 5 + int(dx[b]) + (25 if flip[b] else 0)]
        assert np.array_equal(out[b].numpy(), crop)


# --- Fashion-MNIST ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["debian-gz", "torchvision-raw"])
def test_fashion_mnist_layouts(tmp_path, layout):
    folder = tmp_path if layout == "debian-gz" else tmp_path / "FashionMNIST" / "raw"
    arrays = write_fashion_mnist(folder, gz=layout == "debian-gz")
    bundle = build("fashion-mnist", tmp_path, batch_size=8)
    assert (bundle.num_train, bundle.num_test, bundle.in_channels, bundle.num_classes) == (40, 12, 1, 10)
    images, labels = epoch_batches(bundle.train, 0)[0]
    assert images.shape == (8, 1, 28, 28) and labels.dtype == torch.int64
    test_images = torch.cat([x for x, _ in bundle.test])
    expected = torch.from_numpy(arrays["t10k"][0]).unsqueeze(1)
    restored = to_uint8(test_images, lsq_data.FASHION_MNIST_MEAN, lsq_data.FASHION_MNIST_STD)
    assert torch.equal(restored, expected)


def test_read_idx_agrees_with_torchvision(tmp_path):
    from torchvision.datasets.mnist import read_image_file, read_label_file

    arrays = write_fashion_mnist(tmp_path, gz=False)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte"),
                          read_image_file(str(tmp_path / "train-images-idx3-ubyte")).numpy())
    assert np.array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"),
                          read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")).numpy())
    assert np.array_equal(read_idx(tmp_path / "t10k-labels-idx1-ubyte"), arrays["t10k"][1])


@pytest.mark.skipif(not (lsq_data.DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_loads_in_full(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty ./data, so the default falls back to the package
    monkeypatch.delenv("LSQ_DATA_DIR", raising=False)
    assert default_data_dir("fashion-mnist") == lsq_data.DEBIAN_FASHION_MNIST
    bundle = build("fashion-mnist", batch_size=128, eval_batch_size=1000)
    assert (bundle.num_train, bundle.num_test) == (60000, 10000)
    assert bundle.train.labels.bincount().tolist() == [6000] * 10
    assert bundle.test.labels.bincount().tolist() == [1000] * 10


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LSQ_DATA_DIR", raising=False)
    assert default_data_dir("cifar10") == Path("data/cifar10")
    monkeypatch.setenv("LSQ_DATA_DIR", str(tmp_path / "store"))
    assert default_data_dir("imagenet") == tmp_path / "store" / "imagenet"
    # Fashion-MNIST prefers the default when it holds the files, else the Debian package.
    monkeypatch.setattr(lsq_data.readers, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    write_fashion_mnist(tmp_path / "debian")
    assert default_data_dir("fashion-mnist") == tmp_path / "debian"
    write_fashion_mnist(tmp_path / "store" / "fashion-mnist" / "FashionMNIST" / "raw")
    assert default_data_dir("fashion-mnist") == tmp_path / "store" / "fashion-mnist"


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset, hint", [
    ("cifar10", "--download"),
    ("fashion-mnist", "apt-get install dataset-fashion-mnist"),
    ("imagenet", "valprep.sh"),
])
def test_missing_dataset_names_the_path_and_the_fix(tmp_path, dataset, hint):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        build(dataset, missing)
    message = str(info.value)
    assert str(missing.resolve()) in message and hint in message
    assert isinstance(info.value, FileNotFoundError)


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ValueError, match="cifar10.*fashion-mnist.*imagenet.*synthetic"):
        build("mnist")


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_marked_learnable_and_generated_only_as_needed():
    bundle = build("synthetic", train_subset=64, test_subset=200, batch_size=16)
    assert (bundle.data_kind, bundle.num_train, bundle.num_test) == ("synthetic", 64, 200)
    assert (bundle.num_classes, bundle.in_channels, bundle.source) == (10, 3, "generated")
    images, labels = epoch_batches(bundle.train, 0)[0]
    assert images.shape == (16, 3, 32, 32) and labels.dtype == torch.int64
    templates = synthetic_templates()
    distances = torch.cdist(templates.flatten(1), templates.flatten(1))
    assert distances[~torch.eye(10, dtype=torch.bool)].min() > 10  # every pair of classes differs
    # Learnable: the nearest class template already classifies most test images.
    test_images = torch.cat([x for x, _ in bundle.test])
    test_labels = torch.cat([y for _, y in bundle.test])
    raw = to_uint8(test_images, CIFAR10_MEAN, CIFAR10_STD).float()
    guesses = torch.cdist(raw.flatten(1), (128 + 40 * templates).flatten(1)).argmin(1)
    assert (guesses == test_labels).float().mean() > 0.9
    # Image i is the same whatever count is asked for; the full split is CIFAR-sized.
    small, _ = synthetic_split("train", 10)
    larger, _ = synthetic_split("train", 1500)
    assert torch.equal(small, larger[:10])
    assert lsq_data.SYNTHETIC_SIZES == {"train": 50_000, "test": 10_000}


# --- ImageNet (ImageFolder) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    write_image_folder(root)
    return root


def test_imagenet_folder_shapes_and_determinism(imagenet_dir):
    bundle = build("imagenet", imagenet_dir, batch_size=4, eval_batch_size=4, workers=0)
    assert (bundle.num_train, bundle.num_test, bundle.num_classes, bundle.in_channels) == (12, 6, 3, 3)
    assert (len(bundle.train), len(bundle.test), bundle.data_kind) == (3, 2, "real")
    rng_before = torch.get_rng_state()
    first = epoch_batches(bundle.train, 1)
    # The per-image seeding leaves the caller's global RNG alone (workers=0 runs in-process).
    assert torch.equal(torch.get_rng_state(), rng_before)
    images, labels = first[0]
    assert images.shape == (4, 3, 224, 224) and images.dtype == torch.float32 and labels.dtype == torch.int64
    again = epoch_batches(build("imagenet", imagenet_dir, batch_size=4, workers=0).train, 1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    other = epoch_batches(bundle.train, 2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    test = list(bundle.test)
    assert sorted(torch.cat([y for _, y in test]).tolist()) == [0, 0, 1, 1, 2, 2]
    assert torch.equal(torch.cat([x for x, _ in test]), torch.cat([x for x, _ in bundle.test]))


def test_imagenet_batches_do_not_depend_on_the_worker_count(imagenet_dir):
    in_process = epoch_batches(build("imagenet", imagenet_dir, batch_size=4, workers=0).train, 3)
    with_workers = epoch_batches(build("imagenet", imagenet_dir, batch_size=4, workers=2).train, 3)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(in_process, with_workers))


def test_imagenet_flat_val_folder_is_explained(tmp_path):
    write_image_folder(tmp_path, per_class=(1, 0))
    for wnid in ("n01", "n02", "n03"):  # the official tarball's layout: val/*.JPEG, no classes
        (tmp_path / "val" / wnid).rmdir()
    (tmp_path / "train" / "n01" / "n01_0.JPEG").rename(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DatasetNotFoundError, match="valprep.sh"):
        build("imagenet", tmp_path)


# --- CUDA: the same batches as on the CPU ----------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batches_equal_cpu_batches(cifar_dir):
    root, _ = cifar_dir
    cpu = epoch_batches(build("cifar10", root, seed=2).train, 4)
    cuda = epoch_batches(build("cifar10", root, seed=2, device=torch.device("cuda")).train, 4)
    assert cuda[0][0].device.type == "cuda"
    assert all(torch.equal(a[0], b[0].cpu()) and torch.equal(a[1], b[1].cpu()) for a, b in zip(cpu, cuda))
