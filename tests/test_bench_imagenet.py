"""``python -m lsq bench imagenet``: the real ImageFolder pipeline timed per worker count."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from data_fixtures import write_image_folder

from lsq.bench.imagenet import main, write_generated_jpegs


def test_generated_jpegs_have_imagenet_size(tmp_path):
    from PIL import Image

    mean_kb = write_generated_jpegs(tmp_path, 3)
    files = sorted((tmp_path / "train").rglob("*.JPEG"))
    assert len(files) == 3 and len(list((tmp_path / "val").rglob("*.JPEG"))) == 4
    assert Image.open(files[0]).size == (500, 375)
    assert 60 < mean_kb < 160  # photo-like compression, not noise (several hundred KB)


def test_bench_prints_rates_per_worker_count(capsys):
    assert main(["--workers", "0,1", "--batch-size", "2", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "generated JPEGs, 500x375" in out and "(not ImageNet photos)" in out
    assert re.search(r"^\s+0\s+\d+\s+\d+$", out, re.M)
    assert re.search(r"^\s+1\s+\d+\s+\d+$", out, re.M)
    assert re.search(r"give it about R / \d+ workers \(e\.g\. \d+ for 3,000 images/s\)", out)


def test_bench_reads_a_real_folder(tmp_path, capsys):
    write_image_folder(tmp_path, per_class=(4, 2))
    assert main(["--data-dir", str(tmp_path), "--workers", "0", "--batch-size", "2", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert f"ImageNet-layout folder {tmp_path} (real files)" in out
    assert "give it about" not in out  # no worker process was timed


@pytest.mark.parametrize("args", [["--workers", "a"], ["--workers", "-1"], ["--batches", "0"]])
def test_bad_arguments_exit_2(args):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


def test_missing_folder_is_one_error_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lsq", "bench", "imagenet", "--data-dir",
                             str(tmp_path / "nowhere")], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "LSQ_DEBUG"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: ImageNet not found") and result.stderr.count("\n") == 1
