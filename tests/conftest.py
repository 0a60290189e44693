"""Test-wide settings: one intra-op thread per test process.

The suite runs under ``pytest -n 2`` on 2-core machines; OpenMP's spinning threads would otherwise
oversubscribe the cores and slow every step tenfold. Subprocesses inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
