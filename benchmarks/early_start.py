"""What stands between a quantized row and its first step once the float baseline is done.

    python benchmarks/early_start.py [--row 4] [--device cpu] [--profile quick] [--amp --channels-last]

Trains the synthetic float baseline once, then times the row's ``fit`` (from the call to its
summary) three ways, each in a fresh process with its own compile cache:

- ``cold``: an empty cache, as a row started after row 0 on a new machine;
- ``disk cache``: the cache filled first by ``warm_compile_cache`` in another process;
  the run traces again and loads its graphs from disk;
- ``kept``: ``warm_and_keep_compiled`` then ``fit`` in one process, what ``lsq train
  --wait-for-baseline`` does; only the ``fit`` is timed.

Prints each way's fit seconds, first-epoch seconds and the median of the later epochs, and the
fit time over the ``kept`` one. Synthetic data: only the times mean anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DRIVER = """
import json, sys, time
from dataclasses import replace
from lsq.config import make_config
from lsq.engine.launch import warm_and_keep_compiled, warm_compile_cache
from lsq.engine.run import fit

mode, runs, row, profile, device, amp, channels_last = sys.argv[1:8]
config = replace(make_config("synthetic", int(row), profile), device=device, amp=amp == "1",
                 channels_last=channels_last == "1", compile_model=True)
quiet = lambda *args: None
if mode == "baseline":
    fit(replace(make_config("synthetic", 0, profile), device=device, amp=config.amp,
                channels_last=config.channels_last), runs, progress=False, log=quiet)
elif mode == "warm":
    warm_compile_cache(config, runs, log=quiet)
else:
    if mode == "kept":
        warm_and_keep_compiled(config, runs, log=quiet)
    start = time.perf_counter()
    fit(config, runs, progress=False, log=quiet)
    print("FIT", time.perf_counter() - start)
"""


def run(mode: str, runs: Path, cache: Path, args) -> str:
    command = [sys.executable, "-c", DRIVER, mode, str(runs), str(args.row), args.profile, args.device,
               str(int(args.amp)), str(int(args.channels_last))]
    env = {**__import__("os").environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{mode} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        baseline = tmp / "baseline"
        run("baseline", baseline, tmp / "baseline-cache", args)
        results = {}
        for mode in ("cold", "disk cache", "kept"):
            runs, cache = tmp / mode.replace(" ", "-"), tmp / f"{mode.replace(' ', '-')}-cache"
            shutil.copytree(baseline, runs)
            if mode == "disk cache":
                run("warm", runs, cache, args)
            fit_seconds = float(run(mode.split()[0], runs, cache, args).split("FIT ", 1)[1].split()[0])
            metrics = next(runs.glob(f"synthetic/*/row{args.row}/seed0/metrics.jsonl")).read_text()
            epochs = [json.loads(line)["epoch_seconds"] for line in metrics.splitlines()
                      if json.loads(line)["epoch"] > 0]
            results[mode] = (fit_seconds, epochs[0], statistics.median(epochs[1:]) if epochs[1:] else None)
    print(f"# synthetic, profile {args.profile}, row {args.row}, {args.device}"
          f"{', bf16' if args.amp else ''}{', channels_last' if args.channels_last else ''}; "
          "fit = from the call to the summary, with the float baseline already done")
    print(f"{'mode':<11} {'fit s':>7} {'epoch 1 s':>9} {'later epochs s':>14} {'x kept':>7}")
    kept = results["kept"][0]
    for mode, (fit_seconds, first, later) in results.items():
        later_text = f"{later:.2f}" if later is not None else "-"
        print(f"{mode:<11} {fit_seconds:7.1f} {first:9.2f} {later_text:>14} {fit_seconds / kept:6.2f}x")


if __name__ == "__main__":
    main()
