"""Pick the fastest CUDA mode for the float row and for the quantized rows from bench JSONs.

    python benchmarks/pick_modes.py WORK_DIR  ->  shell assignments for gpu-check.sh

Each ``WORK_DIR/bench-<mode>.json`` (``python -m lsq bench train --json``, rows 0 and 4) is one
mode; MODES says which train flags and environment reproduce it. A row's estimated wall time is
its setup (compile, capture) plus 90 epochs of 390 steps at the measured step time; the float
row and the quantized rows (row 4, the slowest, standing for 1-4) each take their fastest mode.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

MODES = {  # name: (extra train flags, environment)
    "graphs-only": ("--no-compile", ""),
    "graphs-eager-kernels": ("--no-compile", "LSQ_COMPILE=0"),
    "default": ("", ""),
}
STEPS = 90 * (50_000 // 128)


def estimates(work: Path) -> dict[str, dict[int, float]]:
    found = {}
    for name in MODES:
        try:
            rows = json.loads((work / f"bench-{name}.json").read_text())["rows"]
        except (OSError, ValueError, KeyError):
            continue
        found[name] = {r["row"]: r["setup_seconds"] + STEPS * r["seconds_per_step"] for r in rows}
    return found


def main(argv: list[str]) -> int:
    found = estimates(Path(argv[0]))
    extra = argv[1] if len(argv) > 1 else ""  # flags forced by failed checks, e.g. --no-cuda-graphs
    for label, row in (("ROW0", 0), ("QROW", 4)):
        candidates = {name: rows[row] for name, rows in found.items() if row in rows}
        name = min(candidates, key=candidates.get) if candidates else "graphs-only"
        flags, env = MODES[name]
        print(f"# {label}: {name} " + ", ".join(f"{n} {s:.0f} s" for n, s in candidates.items()),
              file=sys.stderr)
        print(f"{label}_MODE={shlex.quote(name)} {label}_ARGS={shlex.quote((flags + ' ' + extra).strip())} "
              f"{label}_ENV={shlex.quote(env)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
