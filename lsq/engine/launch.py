"""How ``make -j`` starts runs: a quantized row started beside its float baseline compiles its
graphs while the baseline trains, then waits for it (``lsq train --wait-for-baseline``)."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from lsq import runlock, runs
from lsq.config import RunConfig
from lsq.engine.fastpath import eval_model, wrap_model
from lsq.engine.host import lower_cpu_priority, mps_daemon_running, resolve_device, share_cpu_threads
from lsq.engine.recipe import calibrate, evaluate, seed_everything
from lsq.engine.run import build_run, fit
from lsq.engine.step import WARMUP_STEPS, TrainStep
from lsq.errors import BaselineFailedError, TrainingError
from lsq.quant.convert import quantizers
from lsq.quant.inspect import model_metrics

def warm_compile_cache(config: RunConfig, runs_dir: str | Path = "runs", *, log=print) -> bool:
    """Compile a run's graphs into torch.compile's on-disk caches, so the run itself starts warm.

    Nothing of the run is needed or written: the model starts from a random float network
    instead of the row-0 baseline (the graphs depend on shapes, not values), and no run directory
    is touched. A row started beside its baseline (``fit_after_baseline``, what ``make -j`` does
    on CUDA) runs this while row 0 trains, and keeps the compiled code in memory
    (``warm_and_keep_compiled``); it also leaves the graphs in the on-disk cache. Runs the same
    calibration, evaluation and training steps as ``fit`` (CUDA-graph capture
    included, which is not cached but checks the path). Returns whether anything was compiled:
    False for a finished run or one that does not compile.
    """
    if (config.run_dir(Path(runs_dir)) / runs.SUMMARY).exists():
        log(f"{config.run_dir(Path(runs_dir))}: already done, nothing to warm")
        return False
    share_cpu_threads()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    run = build_run(config, device, 0, 1, None, progress=False)
    if not run.compile_model:
        log(f"{config.run_name}: this run does not compile (--no-compile, or a short CPU run), "
            "nothing to warm")
        return False
    started = time.time()
    model, ctx = run.model, run.ctx
    if quantizers(model):
        calibrate(model, run.data.train, ctx)
        # As fit's epoch-0 record: the evaluation's graphs (and the eager LSQ kernels of a last
        # batch of another size), and the integer codes behind the sparsity metrics.
        evaluate(eval_model(model, True, device), run.data.test, ctx, model)
        model_metrics(model)
    step = TrainStep(wrap_model(model, True, device, 1), run.optimizer, ctx, eager_model=model)
    model.train()
    run.data.train.set_epoch(0)
    batches = iter(run.data.train)
    for _ in range(WARMUP_STEPS + 1 if run.cuda_graphs else 2):
        images, labels = next(batches)
        step(ctx.prepare(images), labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    log(f"{config.dataset}/{config.profile}/{config.run_name}: compile cache warmed in "
        f"{time.time() - started:.0f} s")
    return True

def warm_and_keep_compiled(config: RunConfig, runs_dir: str | Path, *, log=print) -> None:
    """``warm_compile_cache`` in the process that will then train the run: the warm-up's model,
    data and CUDA graph are freed, but dynamo's compiled code stays in memory, so the run that
    follows does not trace or compile again. Its guards (shapes, dtypes, layouts, the modules'
    types and flags) hold for the run's own model, which is what makes that reuse safe; a guard
    that failed would mean a recompile, never a wrong graph. ``tests/test_parallel_runs.py`` checks
    that the run compiles no graph and gives the numbers of a run in a fresh process.
    """
    warm_compile_cache(config, runs_dir, log=log)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

# Without MPS, processes sharing a GPU time-slice it (docs/performance.md has the measurement).
MPS_HINT = ("the CUDA MPS daemon is not running, so rows training together time-slice the GPU "
            "(about 1.4-1.6x slower per epoch measured on an H200); start it with "
            "`nvidia-cuda-mps-control -d` before make -jN (docs/parallel-runs.md)")

# How long a row started beside its baseline waits for the baseline to start training: make -j
# starts both at once, and the baseline's own start-up (imports, data) takes seconds to a minute.
BASELINE_START_GRACE_SECONDS = 300.0

def fit_after_baseline(config: RunConfig, runs_dir: str | Path = "runs", *, progress: bool = True,
                       log=print, grace_seconds: float = BASELINE_START_GRACE_SECONDS) -> dict:
    """Start a quantized row while its float baseline is still training, then ``fit`` it.

    The row compiles its graphs (``warm_and_keep_compiled``) and waits for the baseline's
    ``summary.json``, so that once the baseline is done only loading it, the data, calibration and
    the epoch-0 evaluation stand between it and the row's first step. Process start, imports
    and the compile happen while the baseline trains, at a lower CPU priority than the
    baseline. The row's start-up is counted from the baseline's finish (its summary's mtime):
    where the warm-up outlasts the baseline, as with four compiles on two CPU cores, its tail is
    start-up the table waits for. ``make -j`` does this on CUDA. A baseline that stops without
    finishing, or does not start within ``grace_seconds``, ends the wait with an error
    (``lsq.runlock``). The run itself is exactly ``fit``'s, so its result is what the row would
    give started after the baseline.
    """
    if not config.starts_from_baseline:
        raise TrainingError("--wait-for-baseline is for the quantized rows 1-4; row 0 is the baseline")
    runs_dir = Path(runs_dir)
    baseline_dir = config.baseline().run_dir(runs_dir)
    baseline_done = baseline_dir / runs.SUMMARY
    start_waited = None
    if not baseline_done.exists() and not (config.run_dir(runs_dir) / runs.SUMMARY).exists():
        if resolve_device(config.device).type == "cuda" and not mps_daemon_running():
            log(f"{config.run_dir(runs_dir)}: note: {MPS_HINT}")
        with lower_cpu_priority():  # the baseline is what everything waits for
            warm_and_keep_compiled(config, runs_dir, log=log)
            log(f"{config.run_dir(runs_dir)}: waiting for the float baseline {baseline_dir}")
            try:
                waited = runlock.wait_until_finished(baseline_dir, baseline_done,
                                                     grace_seconds=grace_seconds)
            except BaselineFailedError as error:
                raise TrainingError(f"the float baseline of this row: {error}") from None
        log(f"{config.run_dir(runs_dir)}: baseline finished after {waited:.0f} s of waiting")
        start_waited = (baseline_done.stat().st_mtime, waited)
    return fit(config, runs_dir, progress=progress, log=log, start_waited=start_waited)
