"""Benchmarks behind `patchrank bench <name>` (one module per benchmark, see pipeline/commands/bench.py)."""
