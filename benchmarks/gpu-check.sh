#!/usr/bin/env bash
# The prepared GPU check for a session that is lent a GPU (issue #7): run it once, from the
# repository root, on the device machine, e.g. through the device tool:
#     bash benchmarks/gpu-check.sh            # results land in $OUT (the tool's output folder)
# The device image has torch, torchvision, pandas, tqdm and PyYAML, so no venv is built there.
# It prints the card, then the quantizer and per-row training benchmarks (eager and compiled),
# then times the whole synthetic CIFAR-shaped table at the paper profile (float + 4 rows x 90
# epochs, 50k images, batch 128), rows 1-4 concurrently after row 0, within TABLE_SECONDS.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
TABLE_SECONDS=${TABLE_SECONDS:-300}
mkdir -p "$OUT"
log() { tee -a "$OUT/gpu-check.log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | log
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | log
python3 -m lsq bench quantizer --device cuda 2>&1 | log
python3 -m lsq bench train --device cuda --amp --channels-last 2>&1 | log
python3 -m lsq bench train --device cuda --amp --channels-last --compile 2>&1 | log

runs="$OUT/runs"
train() { python3 -m lsq train --dataset synthetic --profile paper --device cuda --amp \
            --channels-last --no-progress --runs-dir "$runs" "$@"; }
start=$(date +%s)
timeout "$TABLE_SECONDS" bash -c "$(declare -f train); runs='$runs';
  train --row 0 && { for r in 1 2 3 4; do train --row \$r & done; wait; }" 2>&1 | tail -n 20 | log
echo "synthetic paper-profile table: $(( $(date +%s) - start )) s wall (limit ${TABLE_SECONDS} s)" | log
find "$runs" -name summary.json | sort | while read -r f; do echo "$f"; cat "$f"; done > "$OUT/summaries.txt"
