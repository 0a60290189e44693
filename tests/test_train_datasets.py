"""`python -m lsq train` on the real dataset formats, from tiny fixtures written in those formats."""

from __future__ import annotations

import json

from data_fixtures import write_cifar10, write_fashion_mnist, write_image_folder
from cli_helpers import lsq_cli

from lsq import runs as runfmt


def _summary(runs, dataset, row):
    directory = runs / dataset / "smoke" / f"row{row}" / "seed0"
    return json.loads((directory / "summary.json").read_text()), runfmt.read_metrics(directory / "metrics.jsonl")


def test_cifar10_rows_from_the_torchvision_format(tmp_path):
    write_cifar10(tmp_path / "cifar")
    runs = tmp_path / "runs"
    for row in ("0", "3"):
        lsq_cli("train", "--dataset", "cifar10", "--row", row, "--data-dir", str(tmp_path / "cifar"),
                "--batch-size", "25", runs_dir=runs)
    summary, records = _summary(runs, "cifar10", 3)
    assert summary["data_kind"] == "real" and summary["train_images"] == 100 and summary["test_images"] == 30
    assert [r["epoch"] for r in records] == [0, 1]
    assert "layer1.0.conv1.input_quantizer" in records[-1]["step_sizes"]


def test_fashion_mnist_rows_from_idx_files(tmp_path):
    write_fashion_mnist(tmp_path / "fmnist", train=64, test=20)
    runs = tmp_path / "runs"
    for row in ("0", "1"):
        lsq_cli("train", "--dataset", "fashion-mnist", "--row", row, "--data-dir",
                str(tmp_path / "fmnist"), "--batch-size", "32", runs_dir=runs)
    summary, records = _summary(runs, "fashion-mnist", 1)
    assert summary["train_images"] == 64 and summary["test_images"] == 20
    assert "conv1" not in records[-1]["layer_sparsity"], "row 1 keeps the first layer float"


def test_imagenet_rows_from_an_image_folder(tmp_path):
    write_image_folder(tmp_path / "imagenet")
    runs = tmp_path / "runs"
    common = ["--dataset", "imagenet", "--data-dir", str(tmp_path / "imagenet"), "--batch-size", "4",
              "--workers", "0"]
    result = lsq_cli("train", *common, "--row", "0", runs_dir=runs)
    assert "randomly initialised" in result.stdout  # smoke only: no pretrained file here
    float_summary, float_records = _summary(runs, "imagenet", 0)
    assert float_summary["epochs"] == 0 and [r["epoch"] for r in float_records] == [0]
    lsq_cli("train", *common, "--row", "2", runs_dir=runs)
    summary, records = _summary(runs, "imagenet", 2)
    assert summary["train_images"] == 12 and summary["test_images"] == 6
    assert {"test_top1", "test_top5"} <= records[-1].keys()
    assert "conv1" in records[-1]["layer_sparsity"], "row 2 quantizes the first layer"


def test_imagenet_paper_row0_needs_pretrained_weights(tmp_path):
    write_image_folder(tmp_path / "imagenet")
    result = lsq_cli("train", "--dataset", "imagenet", "--row", "0", "--profile", "paper",
                     "--data-dir", str(tmp_path / "imagenet"), runs_dir=tmp_path / "runs", check=False)
    assert result.returncode != 0 and "--weights" in result.stderr
