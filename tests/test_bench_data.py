"""``python -m lsq bench data`` on tiny settings: every path timed, ratios printed."""

from __future__ import annotations

import re

from lsq.bench.data import main


def test_bench_data_prints_all_paths_and_ratios(capsys):
    assert main(["--dataset", "synthetic", "--batch-size", "8", "--batches", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lsq data bench: synthetic (synthetic, 32x32x3), batch 8, 2 timed batches")
    assert re.search(r"^machine: .*; torch \S+; device cpu", out, re.M)
    for name in ("batched tensor loader (lsq.data)", "torchvision per-image DataLoader, workers=0",
                 "torchvision per-image DataLoader, workers=2", "ResNet-20 float train step (fwd+bwd+SGD)"):
        assert re.search(rf"^{re.escape(name)}\s+\d+\s+\d+\.\d\d$", out, re.M), name
    assert re.search(r"^data time as % of step time: batched \d+\.\d% \(goal <= 10%: (ok|over the goal)\), "
                     r"per-image workers=0 \d+\.\d%, per-image workers=2 \d+\.\d%$", out, re.M)
    speedup = r"^batched vs per-image speedup: \d+\.\dx \(workers=0\), \d+\.\dx \(workers=2\)$"
    assert re.search(speedup, out, re.M)


def test_bench_data_reads_fashion_mnist_files(tmp_path, capsys):
    from test_data import write_fashion_mnist  # pytest puts tests/ on sys.path

    write_fashion_mnist(tmp_path, train=40)
    assert main(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--batch-size", "4",
                 "--batches", "1", "--device", "cpu"]) == 0
    assert "fashion-mnist (real, 28x28x1)" in capsys.readouterr().out
