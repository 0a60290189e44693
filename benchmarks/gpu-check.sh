#!/usr/bin/env bash
# The prepared GPU check (issue #7), run once per lent GPU from the repository root:
#     OUT=/tmp/gpu-check bash benchmarks/gpu-check.sh      # the device tool sets OUT itself
# It uses the machine's own python3 (torch, pandas, tqdm, PyYAML, pytest and hypothesis are on
# the device image), no venv. Phases, each with its own time limit, all logged to $OUT:
#   1. the CUDA tests (CUDA-graph replay vs eager, GPU data pipeline);
#   2. bench train, rows 0 and 4, bf16: CUDA graphs (LSQ kernels compiled; eager kernels too
#      with EAGER_KERNELS=1), then torch.compile + graphs (the default);
#   3. the whole synthetic CIFAR-shaped table at the paper profile (float + rows 1-4, 90 epochs
#      each, 50k images, batch 128) through `make -j5 synthetic PROFILE=paper DEVICE=cuda`: row 0,
#      and rows 1-4 as 4 concurrent processes that warm their compiles beside it and then wait
#      for it, with a cold compiler cache, under MPS where the machine has it;
#   4. bench train eager (neither compile nor graphs: what the fast path buys), if time is left;
#   5. bench quantizer on the GPU, if time is left.
# Between 2 and 3 (2b): a torch.profiler table of the float and row-4 steps, the diagnosis.
# nvidia-smi samples GPU utilisation once a second throughout (gpu-util-<PHASES>.csv in the archive).
# A phase that fails does not stop the next; the table runs without CUDA graphs if phase 1's
# CUDA tests fail.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
BUDGET=${BUDGET:-560}          # seconds for the whole script
# all, or two device calls of under 600 s each on the same warm machine: diagnose (phases 1, 2,
# 2b: at most 6.5 min) then table (3, 4, 5; BUDGET bounds 4 and 5), which reads phase 1's
# verdict (fast-flags) from /tmp.
PHASES=${PHASES:-all}
case $PHASES in all|diagnose|table) ;; *) echo "PHASES must be all, diagnose or table" >&2; exit 2;; esac
TABLE_SECONDS=${TABLE_SECONDS:-300}
DEVICE=${DEVICE:-cuda} PROFILE=${PROFILE:-paper} STEPS=${STEPS:-50}  # DEVICE=cpu PROFILE=smoke: a dry run
# WORK's parent is a results folder of one check, the layout lsq.report.speed reads.
WORK=/tmp/gpu-check-results/check; [ "$PHASES" = table ] || rm -rf "$WORK"; mkdir -p "$OUT" "$WORK"
LOG=$OUT/gpu-check.log
# Everything else goes into one archive, packed after every phase (the tool returns <= 8 files).
pack() { tar czf "$OUT/gpu-check.tgz" --exclude=checkpoint.pt -C "$WORK" . 2>/dev/null; }
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "== $* (t=$(elapsed) s)" | tee -a "$LOG"; }
# limited SECONDS LOGFILE CMD...: run with a time limit, keep the whole output in LOGFILE.
limited() { local limit=$1 file=$2; shift 2; timeout "$limit" "$@" >"$file" 2>&1; local rc=$?
            tail -n 25 "$file" | tee -a "$LOG"; return $rc; }
want() { [ "$PHASES" = all ] || [ "$PHASES" = "$1" ]; }

say "card and software (start $(date -u +%FT%TZ))"
# GPU utilisation once a second for the whole call: is a step busy or waiting (the table's rows)?
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,utilization.gpu,utilization.memory,memory.used --format=csv \
    -l 1 >"$WORK/gpu-util-$PHASES.csv" 2>/dev/null &
  SAMPLER=$!; trap 'kill $SAMPLER 2>/dev/null' EXIT
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"
nproc | sed 's/^/cpu cores: /' | tee -a "$LOG"
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" 2>&1 | tee -a "$LOG"

# Extra flags for the table if the fast path proves broken (kept in WORK for a table-only call).
FAST=$(cat "$WORK/fast-flags" 2>/dev/null)
if want diagnose; then
say "phase 1: CUDA tests"
limited 110 "$WORK/tests.log" python3 -m pytest -q -p no:cacheprovider tests/test_step.py tests/test_quantizer.py \
  tests/test_data.py -k "cuda" || { FAST="--no-cuda-graphs"; say "CUDA tests failed: table runs without CUDA graphs"; }
echo "$FAST" >"$WORK/fast-flags"

say "phase 2: bench train rows 0 and 4, bf16, channels_last: CUDA graphs with compiled LSQ kernels, then torch.compile + graphs (the default)"
limited 60 "$WORK/bench-graphs-only.log" python3 -m lsq bench train --device $DEVICE --rows 0,4 --steps $STEPS \
  --amp --channels-last --no-compile --json "$WORK/bench-graphs-only.json" $FAST
if [ "${EAGER_KERNELS:-0}" = 1 ]; then  # off by default since the 15-minute lease: ~25 s for a minor mode
LSQ_COMPILE=0 limited 60 "$WORK/bench-graphs-eager-kernels.log" python3 -m lsq bench train --device $DEVICE \
  --rows 0,4 --steps $STEPS --amp --channels-last --no-compile --json "$WORK/bench-graphs-eager-kernels.json" $FAST
fi
limited 150 "$WORK/bench-default.log" python3 -m lsq bench train --device $DEVICE --rows 0,4 --steps $STEPS \
  --amp --channels-last --json "$WORK/bench-default.json" $FAST
pack
if [ "$DEVICE" = cuda ]; then
  say "phase 2b: profile of the float and row-4 steps (kernels per step, device time vs wall)"
  limited 60 "$WORK/profile-steps.log" python3 benchmarks/profile_step.py --rows 0,4 --amp --channels-last --top 15
  pack
fi
fi

want table || { say "done (diagnose)"; exit 0; }
# The table as a user runs it: make -j5, the default fast path (torch.compile + CUDA graphs, as
# phase 2 measures it fastest for both row kinds), rows 1-4 started beside row 0 (WARM).
# MPS=auto (default) runs it under the CUDA MPS daemon when the machine has one, so the four
# concurrent rows' kernels can overlap instead of time-slicing; MPS=off does not try.
MPS_CONTROL=$(command -v nvidia-cuda-mps-control || ls /usr/local/nvidia/bin/nvidia-cuda-mps-control 2>/dev/null)
mps_state=off
if [ "${MPS:-auto}" != off ] && [ "$DEVICE" = cuda ] && [ -n "$MPS_CONTROL" ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if "$MPS_CONTROL" -d && timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then
    mps_state=on; trap 'echo quit | "$MPS_CONTROL"; kill $SAMPLER 2>/dev/null' EXIT
  else
    echo quit | "$MPS_CONTROL"; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
fi
say "phase 3: synthetic CIFAR-shaped table, paper profile, cold compiler cache, make -j5, --amp --channels-last $FAST; MPS $mps_state (nvidia-cuda-mps-control: ${MPS_CONTROL:-not found})"
RUNS=$WORK/table; rm -rf "$RUNS"; mkdir -p "$RUNS"
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-table; rm -rf "$TORCHINDUCTOR_CACHE_DIR"
touch /tmp/lsq-no-venv  # the device's python3 has the packages: no .venv there
start=$(date +%s)
if command -v make >/dev/null; then
  LSQ_DEBUG=1 timeout "$TABLE_SECONDS" make -j5 synthetic PROFILE=$PROFILE DEVICE=$DEVICE RUNS="$RUNS" \
    PY=python3 STAMP=/tmp/lsq-no-venv TRAIN_ARGS="--amp --channels-last $FAST" >"$RUNS/make.log" 2>&1
else  # no make on this machine: the same schedule in bash
  train() { python3 -m lsq train --device $DEVICE --runs-dir "$RUNS" --no-progress --amp --channels-last \
            $FAST --dataset synthetic --profile $PROFILE --seed 0 "$@"; }
  export -f train; export RUNS DEVICE FAST PROFILE
  LSQ_DEBUG=1 LSQ_PARALLEL_RUNS=5 timeout "$TABLE_SECONDS" bash -c 'train --row 0 & for r in 1 2 3 4; do
    train --row $r --wait-for-baseline & done; wait' >"$RUNS/make.log" 2>&1
fi
table_rc=$?
table_wall=$(( $(date +%s) - start ))
grep -v "^W11[0-9][0-9] \|^  " "$RUNS/make.log" | grep -v "epoch [0-9]*/" | tail -n 20 | tee -a "$LOG"
say "table: exit $table_rc, ${table_wall} s wall (limit ${TABLE_SECONDS} s), MPS $mps_state"
if [ "$mps_state" = on ]; then  # the benches after the table run without it
  echo quit | "$MPS_CONTROL"; unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  trap 'kill $SAMPLER 2>/dev/null' EXIT
fi
unset TORCHINDUCTOR_CACHE_DIR
python3 -c "import sys; from lsq.report.speed import table_timings
print(table_timings(sys.argv[1]).to_string(index=False))" "$(dirname "$WORK")" 2>&1 | tee -a "$LOG"
pack

if (( BUDGET - $(elapsed) > 75 )); then
say "phase 4: bench train without torch.compile or CUDA graphs (eager)"
limited 60 "$WORK/bench-eager.log" python3 -m lsq bench train --device $DEVICE --rows 0,4 --steps $STEPS \
  --amp --channels-last --no-compile --no-cuda-graphs --json "$WORK/bench-eager.json"
pack
fi

remaining=$(( BUDGET - $(elapsed) - 10 ))
if (( remaining > 30 )); then
  say "phase 5: bench quantizer (limit ${remaining} s)"
  limited "$remaining" "$WORK/bench-quantizer.log" python3 -m lsq bench quantizer --device $DEVICE
fi
pack
say "done"
