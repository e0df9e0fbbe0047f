"""`patchrank bench <name>`: benchmarks (CLI commands, never tests).

Each benchmark is a module `pipeline/bench/<name>.py` exposing `register(subparsers)`,
which adds its own sub-subcommand and sets `func`. To add one, create the module and
append its name to `BENCHES`.
"""

from __future__ import annotations

import argparse
import importlib

BENCHES = ["quality", "train", "serve", "load", "score", "dicom", "autoscale", "compact"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHES), description=__doc__)
    benches = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name in BENCHES:
        importlib.import_module(f"patchrank.pipeline.bench.{name}").register(benches)
