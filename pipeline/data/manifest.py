"""Record discovery for everything that is not a BraTS-style folder.

* manifest CSV (the general form): header with `path` and optionally `subject`,
  `label` (0/1, normal/abnormal, benign/malignant, empty = unknown), `mask` (abnormality
  mask file) and `foreground` (e.g. brain mask file). Relative paths are relative to the CSV.
* ISIC-style folder: `images/` (or the images next to the CSV) plus `labels.csv` with
  `image_id,label`, or the official ISIC ground-truth CSV (no header, `ISIC_0000000,benign`
  in 2016 training, `ISIC_0000003,0.0` in 2016 test; or the 2017 `image_id,melanoma,...` form).
* plain folder of normal images / volumes: every scan file below it, label 0.
"""

from __future__ import annotations

import csv
from pathlib import Path

from patchrank.pipeline.data.datasets import DatasetError, Record
from patchrank.pipeline.data.loaders import IMAGE_SUFFIXES, NIFTI_SUFFIXES

LABEL_WORDS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "normal": 0, "abnormal": 1, "benign": 0, "malignant": 1, "": None}


def parse_label(value: str, where: str) -> int | None:
    v = (value or "").strip().lower()
    if v not in LABEL_WORDS:
        raise DatasetError(f"{where}: unknown label {value!r} (use 0/1, normal/abnormal or benign/malignant)")
    return LABEL_WORDS[v]


def _rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path.name}: {exc.__class__.__name__}") from None
    if not rows:
        raise DatasetError(f"{path.name} is empty")
    return rows


def read_manifest(path: str | Path) -> list[Record]:
    path = Path(path)
    rows = _rows(path)
    head = [h.strip().lower() for h in rows[0]]
    if "path" not in head:
        raise DatasetError(
            f"{path.name}: a manifest needs a header with a 'path' column (and optionally subject, label, "
            f"mask, foreground)"
        )
    col = {h: i for i, h in enumerate(head)}
    get = lambda row, key: row[col[key]].strip() if key in col and col[key] < len(row) else ""  # noqa: E731
    records, missing = [], []
    for n, row in enumerate(rows[1:], start=2):
        rel = get(row, "path")
        if not rel:
            raise DatasetError(f"{path.name} line {n}: empty path")
        files = {k: (path.parent / get(row, k)) if get(row, k) else None for k in ("path", "mask", "foreground")}
        missing += [str(p) for p in files.values() if p is not None and not p.exists()]
        label = parse_label(get(row, "label"), f"{path.name} line {n}")
        subject = get(row, "subject") or Path(rel).name.split(".")[0]
        records.append(
            Record(
                str(files["path"]),
                subject,
                label,
                str(files["mask"]) if files["mask"] else None,
                str(files["foreground"]) if files["foreground"] else None,
            )
        )
    if missing:
        raise DatasetError(f"{path.name}: {len(missing)} listed file(s) not found, e.g. {missing[0]}")
    if not records:
        raise DatasetError(f"{path.name}: no rows")
    return records


def _image_index(folder: Path) -> dict[str, Path]:
    return {
        p.name.split(".")[0]: p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
    }


def read_isic_csv(csv_path: str | Path, image_dir: str | Path | None = None) -> list[Record]:
    """ISIC labels CSV (with or without header) -> one record per image (subject = image id)."""
    csv_path = Path(csv_path)
    rows = _rows(csv_path)
    first = [c.strip().lower() for c in rows[0]]
    label_col = 1
    if len(first) > 1 and first[1] not in LABEL_WORDS:  # a header row
        label_col = (
            first.index("melanoma") if "melanoma" in first else (first.index("label") if "label" in first else 1)
        )
        rows = rows[1:]
    if image_dir is None:
        image_dir = csv_path.parent / "images" if (csv_path.parent / "images").is_dir() else csv_path.parent
    index = _image_index(Path(image_dir))
    records, missing = [], []
    for n, row in enumerate(rows, start=2):
        if len(row) <= label_col:
            raise DatasetError(f"{csv_path.name} line {n}: expected image id and label, got {row}")
        image_id = row[0].strip()
        label = parse_label(row[label_col], f"{csv_path.name} line {n}")
        if image_id not in index:
            missing.append(image_id)
            continue
        records.append(Record(str(index[image_id]), image_id, label))
    if missing:
        raise DatasetError(
            f"{csv_path.name}: {len(missing)} image(s) listed but not found under {image_dir}, e.g. {missing[0]} "
            "(an ISIC CSV lists image ids; a manifest CSV needs a 'path' column)"
        )
    if not records:
        raise DatasetError(f"{csv_path.name}: no labelled images")
    return records


def find_label_csv(folder: Path) -> Path | None:
    if (folder / "labels.csv").is_file():
        return folder / "labels.csv"
    hits = sorted(p for p in folder.glob("*.csv") if "groundtruth" in p.name.lower().replace("_", ""))
    return hits[0] if hits else None


def discover_plain(folder: Path) -> list[Record]:
    """Every image / NIfTI file below `folder` as a normal (label 0) record."""
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES + NIFTI_SUFFIXES)
    )
    if not files:
        raise DatasetError(f"no scans (.nii, .nii.gz, .png, .jpg) found under {folder}")
    return [Record(str(p), p.name.split(".")[0], 0) for p in files]
