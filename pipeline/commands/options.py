"""Command-line options shared by several subcommands (defined once, so their help and defaults agree)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def number(kind: type = int, low: float = 1, high: float | None = None, *, open_low=False, open_high=False):
    """An argparse type: a finite int/float within [low, high] (an open end with open_low / open_high), else a
    usage error that names the range (argparse adds the flag's name)."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        ok = math.isfinite(v) and (v > low if open_low else v >= low)
        ok = ok and (high is None or (v < high if open_high else v <= high))
        if not ok:
            rng = f"{'>' if open_low else '>='} {low:g}"
            rng += "" if high is None else f" and {'<' if open_high else '<='} {high:g}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v

    return parse


def regex(text: str) -> str:
    """An argparse type: a valid regular expression (kept as text)."""
    import re

    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a valid regular expression ({exc})") from None
    return text


def add_modality_args(p: argparse.ArgumentParser, verb: str) -> None:
    """--modality and --modality-pattern: which scans a model may take (pipeline.data.modality)."""
    p.add_argument(
        "--modality",
        help=f"{verb} only scans of this modality (default: the one the checkpoint was trained on, e.g. flair)",
    )
    p.add_argument(
        "--modality-pattern",
        type=regex,
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


def output_folder(path: str, flag: str) -> None:
    """A local output folder (s3:// URIs pass) that can be written, or created: a file in its place, or no
    permission to write where it goes, is a one-line error now, before any work."""
    if "://" in path:
        return
    p = Path(path).resolve()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {path} is a file: give a folder")
    above = next(a for a in (p, *p.parents) if a.exists())
    if not above.is_dir():
        raise ValueError(f"{flag} {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {above}")


def output_file(path: str, flag: str, *, new_folder: bool = False) -> None:
    """A local output file (s3:// URIs pass), not a folder, whose folder exists and can be written (new_folder:
    or can be created, for writers that create it); a one-line error now, before any work."""
    if "://" in path:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path} is a folder: give a file name")
    parent = p.resolve().parent
    if not new_folder and not parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {parent} does not exist")
    output_folder(str(parent), flag)
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{flag} {path}: no permission to write it")
