"""`patchrank bench <name>`: benchmarks (CLI commands, never tests); one module each in
pipeline/bench/ with a `register(subparsers)`, listed in BENCHES."""

from __future__ import annotations

import argparse
import importlib

BENCHES = ["quality", "train", "serve", "load", "score", "dicom", "autoscale", "compact"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks: " + ", ".join(BENCHES),
        description="Measure quality (bench quality) and speed (the others) on your machine and data; "
        "`patchrank bench BENCH --help` for each. Results print as tables, and as JSON with --json where offered.",
    )
    benches = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCHES:
        importlib.import_module(f"patchrank.pipeline.bench.{name}").register(benches)
