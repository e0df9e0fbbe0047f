"""`patchrank` command line. Each subcommand lives in pipeline/commands/<name>.py."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = [
    "demo",
    "phantom",
    "train",
    "score",
    "evaluate",
    "export",
    "bench",
    "enqueue",
    "screen",
    "query",
    "serve",
    "report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patchrank",
        description="Unsupervised patch-level anomaly detection for medical scans "
        "(Patch-GAN with targeted patch ranking).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"patchrank.pipeline.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from patchrank.model.checkpoint import CheckpointError
    from patchrank.pipeline.data.datasets import DatasetError
    from patchrank.pipeline.data.loaders import ScanError

    try:
        return int(args.func(args) or 0)
    except (DatasetError, ScanError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"patchrank {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"patchrank {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
