"""Datasets: discover scans on disk as records, split by subject, build slice sets.

A `Record` is one scan (the general, manifest form); discovery turns a BraTS-style
folder (2015-2023 namings, and the built-in phantoms) into records. Slices are always
split by subject, never within one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patchrank.pipeline.data.loaders import ScanError, load_scan
from patchrank.pipeline.data.preprocess import Prepared, preprocess_scan
from patchrank.pipeline.settings import PreprocessConfig

# Accepted file-name tokens per modality, in order of preference (2015/2019-2021 and 2023 names).
MODALITY_ALIASES: dict[str, tuple[str, ...]] = {
    "flair": ("flair", "t2f", "FLAIR"),
    "t1": ("t1", "t1n", "T1"),
    "t1ce": ("t1ce", "t1c", "t1gd", "T1c"),
    "t2": ("t2", "t2w", "T2"),
}
SEG_TOKENS = ("seg", "label", "labels")
MASK_TOKENS = ("brainmask", "mask")

# Protocol (../shared/data/README.md), thresholds stated at 240 x 240 and scaled by slice area.
ABNORMAL_MIN_VOXELS_240 = 20
SMALL_LESION_MAX_VOXELS_240 = 600


class DatasetError(ValueError):
    """The dataset folder or manifest is not usable, with a reason."""


@dataclass
class Record:
    path: str
    subject: str
    label: int | None = None  # image-level: 0 normal, 1 abnormal, None = from labels map / unknown
    labels_path: str | None = None
    mask_path: str | None = None
    extra_paths: list[str] = field(default_factory=list)
    session: str | None = None  # BIDS ses-<label>, when known


def _find(case: Path, tokens: tuple[str, ...]) -> Path | None:
    files = [p for p in case.iterdir() if p.name.endswith((".nii", ".nii.gz"))]
    for tok in tokens:
        pat = re.compile(rf"[_-]{re.escape(tok)}\.nii(\.gz)?$")
        hits = sorted(p for p in files if pat.search(p.name))
        if hits:
            return hits[0]
    return None


def discover_brats(root: str | Path, modality: str = "flair") -> list[Record]:
    """BraTS-style folder: <root>/<case>/<case>_<modality>.nii.gz (+ _seg, _brainmask).

    Accepts 2015/2019-2021 (`_flair`, `_t1ce`) and 2023 (`-t2f`, `-t1c`) namings, and
    one level of nesting (e.g. a `HGG/` and `LGG/` split).
    """
    root = Path(root)
    if modality not in MODALITY_ALIASES:
        raise DatasetError(f"unknown modality {modality!r}; choose one of {', '.join(MODALITY_ALIASES)}")
    if not root.is_dir():
        raise DatasetError(f"not a folder: {root}")
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    nested = [c for c in cases if not any(f.name.endswith((".nii", ".nii.gz")) for f in c.iterdir())]
    for n in nested:
        cases.remove(n)
        cases += sorted(p for p in n.iterdir() if p.is_dir())
    records = []
    for case in cases:
        img = _find(case, MODALITY_ALIASES[modality])
        if img is None:
            continue
        seg, mask = _find(case, SEG_TOKENS), _find(case, MASK_TOKENS)
        records.append(Record(str(img), case.name, None, str(seg) if seg else None, str(mask) if mask else None))
    if not records:
        raise DatasetError(f"no {modality} scans found under {root} (expected <case>/<case>_{modality}.nii.gz)")
    return records


def split_by_subject(records: list[Record], val_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministic subject-level split -> (train, val); val gets >= 1 subject when possible."""
    subjects = sorted({r.subject for r in records})
    rng = np.random.default_rng(seed)
    rng.shuffle(subjects)
    n_val = min(len(subjects) - 1, max(1, round(val_fraction * len(subjects)))) if len(subjects) > 1 else 0
    val = set(subjects[:n_val])
    return [r for r in records if r.subject not in val], [r for r in records if r.subject in val]


def load_record(rec: Record, cfg: PreprocessConfig) -> Prepared:
    scan = load_scan(
        rec.path,
        channels=cfg.channels,
        mask_path=rec.mask_path,
        label_path=rec.labels_path,
        extra_channel_paths=rec.extra_paths or None,
        max_voxels=cfg.max_voxels,
    )
    return preprocess_scan(scan, cfg)


def slice_labels(prep: Prepared, image_label: int | None) -> np.ndarray:
    """Protocol labels per kept slice: 0 normal, 1 abnormal, -1 left out (in between / unknown)."""
    n = len(prep.slice_index)
    if prep.lesion_voxels is None:
        return np.full(n, -1 if image_label is None else image_label, dtype=np.int64)
    scale = (prep.native_shape[0] * prep.native_shape[1]) / (240.0 * 240.0)
    lab = np.full(n, -1, dtype=np.int64)
    lab[prep.lesion_voxels == 0] = 0
    lab[prep.lesion_voxels >= ABNORMAL_MIN_VOXELS_240 * scale] = 1
    return lab


@dataclass
class SliceSet:
    images: np.ndarray  # (N, C, H, W) float32
    foreground: np.ndarray  # (N, 1, H, W) bool
    labels: np.ndarray  # (N,) 0/1/-1
    subjects: np.ndarray  # (N,) str
    slice_index: np.ndarray  # (N,)
    lesion_voxels: np.ndarray  # (N,) native-resolution abnormal voxels (-1 unknown)
    position: np.ndarray  # (N,) relative axial level in the volume (NaN for 2D images)

    def __len__(self) -> int:
        return len(self.images)

    def select(self, keep: np.ndarray) -> SliceSet:
        return SliceSet(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def slice_digests(images: np.ndarray) -> list[str]:
    """A 64-bit content digest per preprocessed slice: how `evaluate` recognises the slices a
    checkpoint was trained or calibrated on (meta["seen_slices"]), whatever the files are named."""
    import hashlib

    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=8).hexdigest() for im in images]


def build_slices(records: list[Record], cfg: PreprocessConfig, *, normal_only: bool, progress=None) -> SliceSet:
    """Load, preprocess and label every record. normal_only keeps label-0 slices only."""
    parts: list[SliceSet] = []
    for rec in records if progress is None else progress(records):
        try:
            prep = load_record(rec, cfg)
        except ScanError as exc:
            raise DatasetError(f"{rec.subject}: {exc}") from None
        lab = slice_labels(prep, rec.label)
        vox = prep.lesion_voxels if prep.lesion_voxels is not None else np.full(len(lab), -1)
        s = SliceSet(
            prep.images, prep.foreground, lab, np.array([rec.subject] * len(lab)), prep.slice_index, vox, prep.position
        )
        parts.append(s.select(lab == 0) if normal_only else s)
    if not parts:
        raise DatasetError("no scans to build slices from")
    return SliceSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in SliceSet.__dataclass_fields__))
