"""Which modality a scan is, and which scans a model may score.

A checkpoint records the modality it was trained on (TrainConfig.modality: e.g. "flair", or "rgb" for
colour images). `score`, `screen` and `enqueue` keep only the scans of that modality and count the rest as
skipped with a reason; the service's consumers refuse, as a `failed` row, scans queued without a modality
that are known to be another (`other_modality`; `enqueue --modality` tags a scan to be scored anyway).
A scan's modality comes from
  * a BraTS file name suffix (`_flair`, `_t2f`, `_t1`, `_t1ce`, ...; datasets.MODALITY_ALIASES),
  * a BIDS suffix (`_FLAIR`, `_T1w`, `_T2w`; `ce-` entity = contrast-enhanced T1),
  * a DICOM series' SeriesDescription + ProtocolName matched by a regular expression
    (DICOM_PATTERNS, or a user's `--modality-pattern`),
  * 2D images: "rgb".
A NIfTI file whose name says nothing is kept (its modality is unknown, not different).
"""

from __future__ import annotations

import re
from pathlib import Path

from patchrank.pipeline.data.datasets import MODALITY_ALIASES

# Series description patterns (case-insensitive, searched) per modality.
DICOM_PATTERNS: dict[str, str] = {
    "flair": r"flair|t2f|dark.?fluid",
    "t1ce": r"t1.*(\bce\b|gd|gad|\+c|post|contrast)|t1c\b",
    "t1": r"t1|mprage|spgr",
    "t2": r"t2(?!.*flair)|t2w",
}
BIDS_SUFFIXES = {"FLAIR": "flair", "T1w": "t1", "T2w": "t2", "T1c": "t1ce", "T1Gd": "t1ce"}
_STEM = re.compile(r"^(?P<stem>.+?)(\.nii(\.gz)?)$", re.IGNORECASE)


def model_modality(meta: dict) -> str | None:
    """The modality a checkpoint was trained on (None for checkpoints that predate the field)."""
    return meta.get("modality") or (meta.get("train_config") or {}).get("modality")


def file_modality(path: str | Path) -> str | None:
    """A scan file's modality from its name (None = the name does not say)."""
    from patchrank.pipeline.data.loaders import IMAGE_SUFFIXES

    name = Path(path).name
    if name.lower().endswith(IMAGE_SUFFIXES):
        return "rgb"
    m = _STEM.match(name)
    if m is None:
        return None
    stem = m.group("stem")
    suffix = re.split(r"[_\-]", stem)[-1] if re.search(r"[_\-]", stem) else ""  # BraTS 2023 uses "-t2f"
    if suffix in BIDS_SUFFIXES:
        mod = BIDS_SUFFIXES[suffix]
        return "t1ce" if mod == "t1" and re.search(r"(^|_)ce-", stem) else mod
    for mod in ("t1ce", "flair", "t2", "t1"):  # most specific first: "t1ce" before "t1"
        if suffix in MODALITY_ALIASES[mod] or suffix.lower() in MODALITY_ALIASES[mod]:
            return mod
    return None


def series_matches(label: str, modality: str, pattern: str | None = None) -> bool:
    """Does a DICOM series' lower-cased description match the modality (or the user's pattern)?"""
    pat = pattern or DICOM_PATTERNS.get(modality, re.escape(modality))
    if not re.search(pat, label, re.IGNORECASE):
        return False
    if pattern is None and modality == "t1":  # plain T1 must not also be a contrast-enhanced T1
        return not re.search(DICOM_PATTERNS["t1ce"], label, re.IGNORECASE)
    return True


def select(scans: list, modality: str | None, pattern: str | None = None) -> tuple[list, list[tuple[str, str]]]:
    """-> (scans of `modality`, [(scan, reason skipped)]). modality None keeps everything."""
    from patchrank.pipeline.data.dicom import SeriesRef

    if modality is None:
        return list(scans), []
    kept, skipped = [], []
    for s in scans:
        if isinstance(s, SeriesRef):
            if series_matches(s.label, modality, pattern):
                kept.append(s)
            else:
                skipped.append((str(s), f"DICOM series description does not match modality {modality}"))
            continue
        mod = file_modality(s)
        if mod is None or mod == modality:
            kept.append(s)
        else:
            skipped.append((str(s), f"modality {mod}, the model expects {modality}"))
    return kept, skipped


def other_modality(path: str | Path, series, modality: str | None) -> str | None:
    """Why a local scan queued without a modality is not one a `modality` model scores: its file name
    names another MRI modality, or its DICOM series' description (series: the `dicom.SeriesRef` already
    found, its headers read once; None for a file) does not match (never quoted). None when it matches,
    cannot tell, or for 2D models (the service's volume / image check covers those)."""
    if modality in (None, "rgb"):
        return None
    if series is None:
        got = file_modality(path)
        if got is None or got == "rgb" or got == modality:
            return None
        return f"{Path(path).name}: a {got} scan by its file name; this model scores {modality}"
    if series.label.strip() and not series_matches(series.label, modality):  # no description (anonymised): cannot tell
        return f"{Path(path).name}: DICOM series description does not match modality {modality}"
    return None


def wrong_kind(path: str | Path, series_uid: str | None, trained_on: str | None) -> str | None:
    """Why a model trained on volumes ("volume") cannot score a 2D image, or a 2D model ("image") a volume;
    None when the kinds agree or either is unknown."""
    from patchrank.pipeline.data.loaders import scan_kind_or_none

    got = "volume" if series_uid is not None else scan_kind_or_none(str(path))
    if trained_on is None or got is None or got == trained_on:
        return None
    trained = "volumes" if trained_on == "volume" else "2D images"
    given = "a 2D image" if got == "image" else "a volume"
    return f"{Path(str(path)).name}: this model was trained on {trained}; cannot score {given}"
