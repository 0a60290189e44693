"""Benchmarks run as ``python -m lsq bench <name>``; each module has ``main(argv) -> int``."""
