"""Reading scans from disk: NIfTI volumes (nibabel) and 2D images (Pillow).

Every failure becomes a `ScanError` with a one-line reason that names the file, never a
stack trace and never header text. Nothing here unpickles anything.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ScanError(ValueError):
    """A scan that cannot be used, with a reason fit for a result row."""


@dataclass
class Scan:
    """A loaded scan. array: (C, H, W, S) float32; foreground: (H, W, S) bool or None.

    2D images have S == 1. `kind` is "volume" or "image".
    """

    array: np.ndarray
    kind: str
    foreground: np.ndarray | None = None
    labels: np.ndarray | None = None  # (H, W, S) int, > 0 = abnormal, when known
    geometry: object | None = None  # volumes: geometry.Geometry (canonical voxel -> file voxel / RAS mm)


def scan_kind(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "volume"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    raise ScanError(f"unsupported file type: {Path(path).name} (expected .nii, .nii.gz, .png, .jpg)")


def scan_kind_or_none(path: str | Path) -> str | None:
    try:
        return scan_kind(path)
    except ScanError:
        return None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ScanError(f"file not found: {path}")
    if not path.is_file():
        raise ScanError(f"not a regular file: {path}")
    if path.stat().st_size == 0:
        raise ScanError(f"empty file: {path.name}")


def load_nifti(path: str | Path, *, max_voxels: int | None = None, dims: tuple[int, ...] = (3,)) -> np.ndarray:
    """-> float32 array in RAS+ canonical orientation, shape (X, Y, Z); axial slices are [..., z]."""
    import nibabel as nib

    path = Path(path)
    _check_file(path)
    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) == 4 and shape[3] == 1:
            img = img.slicer[..., 0]
            shape = shape[:3]
        if len(shape) not in dims:
            raise ScanError(
                f"{path.name}: expected a {' or '.join(f'{d}D' for d in dims)} volume, got {len(shape)}D shape {shape}"
            )
        if min(shape) < 1:
            raise ScanError(f"{path.name}: empty volume, shape {shape}")
        if max_voxels is not None and int(np.prod(shape)) > max_voxels:
            raise ScanError(f"{path.name}: volume of {int(np.prod(shape))} voxels exceeds the limit of {max_voxels}")
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except ScanError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, TypeError, MemoryError) as exc:
        raise ScanError(f"{path.name}: unreadable or corrupt NIfTI ({exc.__class__.__name__})") from None
    except Exception as exc:  # nibabel raises assorted errors on malformed headers
        raise ScanError(f"{path.name}: unreadable or corrupt NIfTI ({exc.__class__.__name__})") from None
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise ScanError(f"{path.name}: {bad} non-finite (NaN/inf) voxels")
    return data


def load_image(path: str | Path, *, channels: int | None = None, max_pixels: int = 8192 * 8192) -> np.ndarray:
    """-> float32 array (C, H, W) scaled to [0, 1]; channels=1 converts to gray, 3 to RGB."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ScanError(
                    f"{path.name}: image of {im.width}x{im.height} exceeds the limit of {max_pixels} pixels"
                )
            bits16 = im.mode in ("I", "I;16", "I;16B", "F")
            if channels == 1 or (channels is None and im.mode in ("L", "I", "I;16", "I;16B", "F")):
                im = im.convert("F") if bits16 else im.convert("L")
            else:
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.float32)
    except ScanError:
        raise
    except Image.DecompressionBombError:
        raise ScanError(
            f"{path.name}: image header claims more pixels than the limit of {max_pixels} (decompression bomb)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ScanError(f"{path.name}: not a readable image ({exc.__class__.__name__})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if bits16:
        lo, hi = np.percentile(arr, [0.5, 99.5])
        arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    else:
        arr = arr / 255.0
    if min(arr.shape[1:]) < 8:
        raise ScanError(f"{path.name}: image too small ({arr.shape[2]}x{arr.shape[1]})")
    return arr


def load_scan(
    path: str | Path,
    *,
    channels: int = 1,
    mask_path: str | Path | None = None,
    label_path: str | Path | None = None,
    extra_channel_paths: list[str | Path] | None = None,
    max_voxels: int | None = None,
    series_uid: str | None = None,
) -> Scan:
    """Load one scan (plus optional brain mask, label map, extra modalities) as a `Scan`. A DICOM series is
    a `dicom.SeriesRef`, or a folder (+ its SeriesInstanceUID when the folder holds several)."""
    folder = isinstance(path, str | Path) and Path(path).is_dir()
    if series_uid is not None or not isinstance(path, str | Path) or (folder and scan_kind_or_none(path) is None):
        from patchrank.pipeline.data.dicom import load_series_scan

        return load_series_scan(path, series_uid, channels=channels, max_voxels=max_voxels)
    kind = scan_kind(path)
    if kind == "image":
        arr = load_image(path, channels=channels)
        if arr.shape[0] != channels:
            raise ScanError(f"{Path(path).name}: has {arr.shape[0]} channels, the model expects {channels}")
        labels = None
        if label_path is not None:
            labels = (load_image(label_path, channels=1)[0] > 0.5).astype(np.int16)[..., None]
        return Scan(arr[..., None], "image", None, labels)
    vols = [load_nifti(p, max_voxels=max_voxels) for p in [path, *(extra_channel_paths or [])]]
    if len(vols) != channels:
        raise ScanError(f"{Path(path).name}: {len(vols)} modalities given, the model expects {channels}")
    shape = vols[0].shape
    for p, v in zip([path, *(extra_channel_paths or [])], vols):
        if v.shape != shape:
            raise ScanError(f"{Path(p).name}: shape {v.shape} differs from {shape}")
    fg = None
    if mask_path is not None:
        m = load_nifti(mask_path)
        if m.shape != shape:
            raise ScanError(f"{Path(mask_path).name}: mask shape {m.shape} differs from image shape {shape}")
        fg = m > 0
    labels = None
    if label_path is not None:
        lab = load_nifti(label_path)
        if lab.shape != shape:
            raise ScanError(f"{Path(label_path).name}: label shape {lab.shape} differs from image shape {shape}")
        labels = np.rint(lab).astype(np.int16)
    return Scan(np.stack(vols), "volume", fg, labels, _file_geometry(path))


def _file_geometry(path: str | Path):
    """The file's own affine and grid (header only), for coordinates in the input's voxels and world mm."""
    import nibabel as nib

    from patchrank.pipeline.data.geometry import Geometry

    img = nib.load(str(path))
    return Geometry.of(img.affine, img.shape)
