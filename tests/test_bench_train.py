"""`python -m lsq bench train`: a row per table row and the estimated wall time of the table."""

import re

import pytest

from lsq.bench.train import main
from lsq.errors import TrainingError


def test_bench_train_prints_rows_and_table_estimate(capsys, monkeypatch):
    monkeypatch.setenv("LSQ_COMPILE", "0")
    assert main(["--rows", "0,4", "--steps", "1", "--warmup", "0", "--batch-size", "4",
                 "--device", "cpu", "--no-compile"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\s+[04]\s", line)]
    assert [r[0] for r in rows] == ["0", "4"]
    assert all(float(r[2]) > 0 for r in rows)  # images/s
    assert rows[0][3] == "1.00" and float(rows[1][3]) > 0  # ratio to float
    assert [r[4] for r in rows] == ["90", "90"]  # paper epochs of CIFAR-10 rows
    assert "estimated wall time of the whole cifar10 table" in out


def test_bench_train_refuses_cuda_graphs_on_the_cpu():
    """The bench resolves compile/graphs exactly as training does, refusals included."""
    with pytest.raises(TrainingError, match="--cuda-graphs needs a CUDA device"):
        main(["--device", "cpu", "--rows", "0", "--steps", "1", "--cuda-graphs"])
