"""BIDS input: `sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_..._<suffix>.nii[.gz]`.

Discovery keeps the anatomical images of one modality (pipeline.data.modality: FLAIR, T1w, T2w, ...) as
normal records, with the subject (the split unit) and session kept; `entities` reads them back from any path
so result rows can carry them.
"""

from __future__ import annotations

import re
from pathlib import Path

from patchrank.pipeline.data.datasets import DatasetError, Record

_ENTITY = re.compile(r"(?:^|_)(sub|ses)-([A-Za-z0-9]+)")


def is_bids(folder: Path) -> bool:
    """A BIDS dataset root: sub-* folders holding anat/ images."""
    return any(p.is_dir() and p.name.startswith("sub-") and any(p.glob("**/anat")) for p in folder.iterdir())


def entities(path: str | Path) -> dict[str, str | None]:
    """{'subject': 'sub-01', 'session': 'ses-2' or None} from a BIDS file name (both None elsewhere)."""
    found = dict(_ENTITY.findall(Path(path).name))
    sub, ses = found.get("sub"), found.get("ses")
    return {"subject": f"sub-{sub}" if sub else None, "session": f"ses-{ses}" if ses and sub else None}


def discover_bids(folder: Path, modality: str = "flair") -> list[Record]:
    """Every `anat` image of `modality` below a BIDS root, one record per file (label 0: normal)."""
    from patchrank.pipeline.data.modality import file_modality

    files = sorted(
        p
        for pattern in ("sub-*/anat/*.nii*", "sub-*/ses-*/anat/*.nii*")
        for p in folder.glob(pattern)
        if p.name.endswith((".nii", ".nii.gz")) and file_modality(p) == modality
    )
    if not files:
        raise DatasetError(f"no {modality} images in the BIDS dataset at {folder} (sub-*/[ses-*/]anat/*_<suffix>.nii)")
    records = []
    for p in files:
        ent = entities(p)
        records.append(Record(str(p), ent["subject"] or p.parts[-3], 0, session=ent["session"]))
    return records
