"""Command-line options shared by several subcommands (defined once, so their help and defaults agree)."""

from __future__ import annotations

import argparse
import os


def add_modality_args(p: argparse.ArgumentParser, verb: str) -> None:
    """--modality and --modality-pattern: which scans a model may take (pipeline.data.modality)."""
    p.add_argument(
        "--modality",
        help=f"{verb} only scans of this modality (default: the one the checkpoint was trained on, e.g. flair)",
    )
    p.add_argument(
        "--modality-pattern",
        help="regular expression a DICOM series' SeriesDescription/ProtocolName must match (default per modality)",
    )


def add_redis_password_arg(p: argparse.ArgumentParser) -> None:
    """--redis-password-file (default $PATCHRANK_REDIS_PASSWORD_FILE, else $PATCHRANK_REDIS_PASSWORD)."""
    p.add_argument(
        "--redis-password-file",
        default=os.environ.get("PATCHRANK_REDIS_PASSWORD_FILE"),
        help="file holding the Redis password (keeps it out of the URL, which `ps` shows); "
        "default $PATCHRANK_REDIS_PASSWORD_FILE, else $PATCHRANK_REDIS_PASSWORD",
    )


def add_quiet_arg(p: argparse.ArgumentParser) -> None:
    """--quiet: no progress output (pipeline.progress); results and errors still print."""
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress output (default: a bar on a terminal, else one progress line every 30 s)",
    )
