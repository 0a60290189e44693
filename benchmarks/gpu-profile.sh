#!/usr/bin/env bash
# Second, short GPU check: why LSQ row 4 steps 4x slower than float on the GPU (see README).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
echo "== row 4, CUDA graphs, LSQ kernels eager (LSQ_COMPILE=0) vs compiled (default)"
LSQ_COMPILE=0 timeout 40 python3 -m lsq bench train --device cuda --rows 0,4 --steps 30 --amp --channels-last --no-compile 2>&1 | grep -v "^W"
echo "== profile, row 4, compiled LSQ kernels (default)"
timeout 60 python3 benchmarks/profile_step.py --rows 0,4 --amp --channels-last --top 20 2>&1 | grep -v "^W"
echo "== profile, row 4, eager LSQ kernels"
LSQ_COMPILE=0 timeout 40 python3 benchmarks/profile_step.py --rows 4 --amp --channels-last --top 12 2>&1 | grep -v "^W"
