"""Turn whatever the user points at into a list of `Record`s.

Supported: a BraTS-style folder of cases (2015-2023 namings; also the built-in phantoms).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets import DatasetError, Record, discover_brats


def discover(path: str | Path, modality: str = "flair") -> list[Record]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data path not found: {path}")
    if path.is_dir():
        return discover_brats(path, modality)
    raise DatasetError(f"don't know how to read {path}: expected a BraTS-style folder of cases")
