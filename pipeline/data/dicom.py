"""DICOM input (pydicom): series found in a folder tree, loaded as one volume with the NIfTI path's geometry.

A series is every DICOM (Part 10) file below a folder that shares one SeriesInstanceUID, whatever
the file names and order. Slices are ordered by ImagePositionPatient projected on the slice normal
(ImageOrientationPatient row x column cosines); RescaleSlope/Intercept are applied; the voxel grid
(i = column, j = row, k = slice along the normal) gets the RAS+ affine a NIfTI converter writes,
and then goes through the same canonical reorientation as a NIfTI file (`nib.as_closest_canonical`).

Errors and skip reasons never carry header text (patient names, IDs, descriptions): only counts,
millimetres and transfer-syntax names. Warnings pydicom raises while parsing are silenced for the
same reason (they quote header values).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from patchrank.pipeline.data.loaders import ScanError, check_volume_geometry

DICOM_MAGIC_OFFSET = 128
# Relative tolerance on slice spacing, and the gap (in spacings) that counts as missing slices.
SPACING_TOLERANCE = 0.01
MISSING_GAP = 1.5


@dataclass(frozen=True)
class SeriesRef:
    """One DICOM series: its folder (the deepest folder holding all its files), SeriesInstanceUID and files.
    On S3 (pipeline.data.dicom_s3) the folder is an s3:// prefix and the files are object URIs.
    `label` (SeriesDescription + ProtocolName, lower case) is for modality matching only, never printed."""

    folder: Path | str
    uid: str
    files: tuple[Path | str, ...]
    label: str = field(default="", compare=False)

    def __str__(self) -> str:  # what logs and skip lists show: the folder, never header text
        return f"{self.folder} (DICOM series, {len(self.files)} files)"


def is_dicom_file(path: str | Path) -> bool:
    """A DICOM Part 10 file: 'DICM' after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


@contextmanager
def _quiet():
    """pydicom with value validation off and its warnings silenced (both may quote header values)."""
    import pydicom.config as cfg

    old = cfg.settings.reading_validation_mode
    cfg.settings.reading_validation_mode = cfg.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        cfg.settings.reading_validation_mode = old


def _header(path: Path, pixels: bool = False):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=not pixels)
    except Exception:  # noqa: BLE001 - any parse failure is just "unreadable"; its message may quote header text
        return None


def _skip_reason(ds) -> str | None:
    """Why a file cannot be a slice of a supported series (None = it can)."""
    if "Rows" not in ds or "Columns" not in ds:
        return "DICOM object without an image (e.g. report, presentation state)"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame DICOM object (not supported; export single-frame slices)"
    image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "LOCALISER" in image_type:
        return "localiser (scout) series"
    return None


def _folder(paths: list) -> Path | str:
    """The deepest folder (or s3:// prefix) holding all these files."""
    if isinstance(paths[0], str) and paths[0].startswith("s3://"):
        return "s3://" + os.path.commonpath([p[len("s3://") :].rsplit("/", 1)[0] for p in paths])
    return Path(os.path.commonpath([str(p.parent) for p in paths]))


def group_series(files: list, read=None) -> tuple[list[SeriesRef], list[tuple[Path | str, str]]]:
    """DICOM files -> (series sorted by folder then UID, [(folder or file, reason skipped)]).
    Files without a SeriesInstanceUID, and series made of localisers / multi-frame / non-image objects,
    are skipped with a reason (one entry per series). `read(file)` gives a file's header (pixels not
    needed) or None; default: pydicom on a local path."""
    read = read or _header
    members: dict[str, list[Path]] = defaultdict(list)
    reasons: dict[str, str] = {}
    labels: dict[str, str] = {}
    skipped: list[tuple[Path, str]] = []
    with _quiet():
        for f in files:
            ds = read(f)
            uid = str(ds.get("SeriesInstanceUID", "")) if ds is not None else ""
            if not uid:
                skipped.append((f, "unreadable DICOM file or no SeriesInstanceUID"))
                continue
            try:
                why = _skip_reason(ds)
                label = f"{ds.get('SeriesDescription', '')} {ds.get('ProtocolName', '')}".lower()
            except Exception:  # noqa: BLE001 - a malformed value; pydicom's message may quote header text
                skipped.append((f, "DICOM file with a malformed header value"))
                continue
            members[uid].append(f)
            if why is not None:
                reasons.setdefault(uid, why)
            labels.setdefault(uid, label)
    series = []
    for uid, paths in members.items():
        folder = _folder(paths)
        if uid in reasons:
            skipped.append((folder, f"{reasons[uid]} ({len(paths)} files)"))
        else:
            series.append(SeriesRef(folder, uid, tuple(sorted(paths)), labels[uid]))
    return sorted(series, key=lambda s: (str(s.folder), s.uid)), skipped


def find_series(folder: str | Path, uid: str | None = None) -> SeriesRef:
    """The series `uid` below `folder` (or its only series when uid is None)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScanError(f"not a folder: {folder}")
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and is_dicom_file(p)]
    found, skipped = group_series(files)
    if uid is not None:
        found = [s for s in found if s.uid == uid]
        if not found:
            why = "it is not a supported image series" if skipped else "no file carries it"
            raise ScanError(f"{folder.name}: DICOM series not found ({why})")
        return found[0]
    if not found:
        raise ScanError(f"{folder.name}: a folder without a usable DICOM image series")
    if len(found) != 1:
        raise ScanError(f"{folder.name}: {len(found)} usable DICOM series found; name one by SeriesInstanceUID")
    return found[0]


def read_series(folder: Path, uid: str) -> SeriesRef:
    """find_series on a local folder, where a folder that cannot be read (gone, no permission) is the input's
    fault: a ScanError (a failed row), not an OSError that a service would retry."""
    try:
        return find_series(folder, uid)
    except OSError as exc:
        why = exc.strerror or exc.__class__.__name__
        raise ScanError(f"{Path(folder).name}: cannot read the series ({why})") from None


def series_scan_id(ref: SeriesRef, endpoint: str | None = None) -> str:
    """Stable id of a series: sha256(resolved folder, UID, each file's name, size and mtime_ns), 32 hex chars;
    on S3 the same over the prefix URI and each object's name, size and last-modified time."""
    if isinstance(ref.folder, str):
        from patchrank.pipeline.data.dicom_s3 import object_stamps

        h = hashlib.sha256(f"{ref.folder}\0{ref.uid}".encode())
        for name, size, mtime_ns in object_stamps(ref, endpoint):
            h.update(f"\0{name}\0{size}\0{mtime_ns}".encode())
        return h.hexdigest()[:32]
    h = hashlib.sha256(f"{ref.folder.resolve()}\0{ref.uid}".encode())
    for p in ref.files:
        st = os.stat(p)
        h.update(f"\0{p.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:32]


def _floats(ds, name: str, n: int) -> np.ndarray:
    v = ds.get(name)
    if v is None or len(v) != n:
        raise ScanError(f"DICOM series lacks geometry ({name}); cannot place it in space")
    return np.asarray([float(x) for x in v], dtype=np.float64)


def _pixels(ds) -> np.ndarray:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - decoder errors vary by plugin; the message may hold header text
        if ts is not None and ts.is_compressed:
            raise ScanError(f"DICOM compressed transfer syntax '{ts.name}' and no installed decoder") from None
        raise ScanError(f"DICOM pixel data unreadable ({exc.__class__.__name__})") from None
    if arr.ndim != 2:
        raise ScanError(f"DICOM slice has pixel shape {tuple(arr.shape)}; expected one gray 2D frame")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def series_image(ref: SeriesRef, *, max_voxels: int | None = None):
    """-> nibabel Nifti1Image (float32, voxel i = column, j = row, k = slice along the normal; RAS+ affine)."""
    import nibabel as nib

    with _quiet():
        heads = [_header(p, pixels=True) for p in ref.files]
        if any(h is None for h in heads):
            raise ScanError(f"{ref.folder.name}: unreadable DICOM file in the series")
        rows, cols = {int(h.Rows) for h in heads}, {int(h.Columns) for h in heads}
        if len(rows) > 1 or len(cols) > 1:
            raise ScanError("DICOM series mixes slice sizes")
        if len(heads) < 2:
            raise ScanError("DICOM series has a single slice; a volume needs at least 2")
        if max_voxels is not None and len(heads) * rows.pop() * cols.pop() > max_voxels:
            raise ScanError(f"DICOM series exceeds the limit of {max_voxels} voxels")
        iop = _floats(heads[0], "ImageOrientationPatient", 6)
        spacing = _floats(heads[0], "PixelSpacing", 2)
        for h in heads[1:]:
            if not np.allclose(_floats(h, "ImageOrientationPatient", 6), iop, atol=1e-4):
                raise ScanError("DICOM series mixes slice orientations")
            if not np.allclose(_floats(h, "PixelSpacing", 2), spacing, rtol=1e-4):
                raise ScanError("DICOM series mixes pixel spacings")
        row_dir, col_dir = iop[:3], iop[3:]  # along a row (column index grows), along a column (row index grows)
        normal = np.cross(row_dir, col_dir)
        pos = np.stack([_floats(h, "ImagePositionPatient", 3) for h in heads])
        proj = pos @ normal
        order = np.argsort(proj, kind="stable")
        steps = np.diff(proj[order])
        if (steps < 1e-3).any():
            raise ScanError(f"DICOM series has {int((steps < 1e-3).sum())} duplicate slice positions")
        dz = float(np.median(steps))
        if steps.max() > MISSING_GAP * dz:
            raise ScanError(f"DICOM series has missing slices: a gap of {steps.max():.2f} mm, spacing {dz:.2f} mm")
        if np.abs(steps - dz).max() > SPACING_TOLERANCE * dz:
            raise ScanError(f"DICOM series has uneven slice spacing ({steps.min():.2f} to {steps.max():.2f} mm)")
        lps = np.eye(4)
        lps[:3, 0] = row_dir * spacing[1]  # PixelSpacing = (between rows, between columns)
        lps[:3, 1] = col_dir * spacing[0]
        lps[:3, 2] = normal * dz
        lps[:3, 3] = pos[order[0]]
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS
        shape = (int(heads[0].Columns), int(heads[0].Rows), len(heads))
        check_volume_geometry(f"{ref.folder.name} (DICOM series)", shape, affine)  # before decoding pixels
        vol = np.stack([_pixels(heads[i]).T for i in order], axis=-1)  # (columns, rows, slices)
    return nib.Nifti1Image(vol, affine)


def load_series(ref: SeriesRef, *, max_voxels: int | None = None, with_geometry: bool = False):
    """-> float32 (X, Y, Z) in RAS+ canonical orientation, exactly as `loaders.load_nifti` returns a file
    (and with_geometry: its geometry.Geometry, the series' own grid being column, row, slice along the normal)."""
    import nibabel as nib

    from patchrank.pipeline.data.geometry import Geometry

    own = series_image(ref, max_voxels=max_voxels)
    data = np.asarray(nib.as_closest_canonical(own).dataobj, dtype=np.float32)
    if not np.isfinite(data).all():
        raise ScanError(f"DICOM series has {int((~np.isfinite(data)).sum())} non-finite voxels")
    return (data, Geometry.of(own.affine, own.shape)) if with_geometry else data


def load_series_scan(source, series_uid: str | None = None, *, channels: int = 1, max_voxels: int | None = None):
    """A `SeriesRef`, or a folder (+ SeriesInstanceUID) -> loaders.Scan (one channel: a series is one modality)."""
    from patchrank.pipeline.data.loaders import Scan

    ref = source if isinstance(source, SeriesRef) else find_series(source, series_uid)
    if channels != 1:
        raise ScanError(f"a DICOM series is one modality; the model expects {channels} channels")
    data, geometry = load_series(ref, max_voxels=max_voxels, with_geometry=True)
    return Scan(data[None], "volume", geometry=geometry)
