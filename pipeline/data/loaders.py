"""Reading scans from disk: NIfTI volumes (nibabel) and 2D images (Pillow).

Every failure becomes a `ScanError` with a one-line reason that names the file, never a
stack trace and never header text. Nothing here unpickles anything, and nothing is
memory-mapped: a mapped file that is truncated while it is read kills the whole process
with SIGBUS (every scan in flight with it), while a plain read of a truncated file is
just a `ScanError`. Headers are checked before any data is read: size (`max_voxels`),
and geometry that no scan has (`check_geometry`: slices tiny or far more numerous than
their side, voxel sizes outside 0.01-50 mm or a field of view over 2 m), because a
1.2 kB file of 8x8x1000 voxels otherwise becomes 1000 upsampled model slices.
"""

from __future__ import annotations

import errno
import gzip
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MIN_SIDE = 8  # px: smaller slices carry no patch to rank
MAX_SLICES_PER_SIDE = 4  # slices > 4 x the larger in-plane side: no scan is shaped like that (8x8x1000)
MAX_INPLANE_ASPECT = 16  # longer in-plane side / shorter one
VOXEL_MM = (0.01, 50.0)  # plausible voxel size range (mm) where the header records one
MAX_FOV_MM = 2000.0  # field of view along any axis (mm) where the header records voxel sizes


class ScanError(ValueError):
    """A scan that cannot be used, with a reason fit for a result row."""


# errno values of an OSError that describe the input (a result row), not the infrastructure (a retry)
INPUT_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG}


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


def all_finite(a: np.ndarray) -> bool:
    """No NaN or inf in a float32 array, without a temporary as large as the array: a float64
    sum of finite float32 values is always finite (|x| < 3.5e38, fewer than 1e15 values)."""
    return bool(np.isfinite(np.sum(a, dtype=np.float64)))


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
    """Input problems with the path itself are ScanErrors (a result row), not retried faults."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise ScanError(f"file not found: {path}") from None
        if exc.errno == errno.ELOOP:
            raise ScanError(f"{path.name}: symlink loop") from None
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise ScanError(f"{path.name}: permission denied") from None
        if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
            raise ScanError(f"{path.name}: invalid path ({errno.errorcode[exc.errno]})") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "FIFO" if stat.S_ISFIFO(st.st_mode) else "special file"
        raise ScanError(f"not a regular file ({kind}): {path}")
    if st.st_size == 0:
        raise ScanError(f"empty file: {path.name}")


def check_geometry(name: str, shape: tuple[int, ...], zooms: tuple[float, ...] | None = None) -> None:
    """Refuse shapes and voxel sizes no real scan has, before any data is read.

    shape: (X, Y, Z) with axial slices along Z, or (H, W, 1) for a 2D image; zooms: voxel
    sizes in mm from the header (0 = not recorded: not checked)."""
    h, w, n = (int(v) for v in shape[:3])
    if min(h, w) < MIN_SIDE:
        return  # refused as "too small" by preprocessing, before anything is resized
    if max(h, w) > MAX_INPLANE_ASPECT * min(h, w):
        raise ScanError(f"{name}: implausible slice aspect {h}x{w} (longer side > {MAX_INPLANE_ASPECT} x the shorter)")
    if n > MAX_SLICES_PER_SIDE * max(h, w):
        raise ScanError(
            f"{name}: implausible shape {h}x{w}x{n}: {n} slices of {h}x{w} px "
            f"(at most {MAX_SLICES_PER_SIDE} x the larger slice side)"
        )
    if zooms is None:
        return
    lo, hi = VOXEL_MM
    for axis, (size, z) in enumerate(zip((h, w, n), zooms)):
        z = float(z)
        if not np.isfinite(z) or z < 0:
            raise ScanError(f"{name}: implausible voxel size {z} along axis {axis}")
        if z == 0:
            continue  # not recorded
        if not lo <= z <= hi:
            raise ScanError(f"{name}: implausible voxel size {z:.4g} mm along axis {axis} (expected {lo}-{hi} mm)")
        if size * z > MAX_FOV_MM:
            raise ScanError(
                f"{name}: implausible field of view {size * z:.0f} mm along axis {axis} (at most {MAX_FOV_MM:.0f} mm)"
            )


def _nifti_shape(img) -> tuple[int, ...]:
    shape = tuple(int(s) for s in img.shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def scan_values(path: str | Path, channels: int = 1) -> int:
    """Values (channels x voxels or pixels) the scan will hold once loaded, from its header
    alone (cheap); what the ingest replica's in-flight memory budget is charged. 0 when the
    header cannot be read: the loader then refuses the file, with the precise reason, before
    reading any data."""
    path = Path(path)
    _check_file(path)
    try:
        if scan_kind(path) == "image":
            from PIL import Image

            with open(path, "rb") as f, Image.open(f) as im:
                return int(im.width) * int(im.height) * max(channels, len(im.getbands()))
        import nibabel as nib

        return int(np.prod(_nifti_shape(nib.load(str(path), mmap=False)), dtype=np.int64)) * channels
    except ScanError:
        raise
    except Exception:  # noqa: BLE001 - see above
        return 0


def _canonical_axes(img_or_affine) -> list[int]:
    """Which array axis becomes canonical axis 0, 1, 2 (RAS+), as nib.as_closest_canonical does."""
    import nibabel as nib

    affine = getattr(img_or_affine, "affine", img_or_affine)
    try:
        ornt = nib.orientations.io_orientation(affine)
        if np.isnan(ornt).any():
            raise ValueError
        order = [0, 0, 0]
        for src, (dst, _flip) in enumerate(ornt[:3]):
            order[int(dst)] = src
        return order
    except Exception:  # noqa: BLE001 - unusable affine: as_closest_canonical keeps the axes too
        return [0, 1, 2]


def check_volume_geometry(name: str, shape: tuple[int, ...], affine: np.ndarray) -> None:
    """check_geometry for a volume known by its grid shape and affine (e.g. a DICOM series, before
    its pixels are decoded): voxel sizes are the affine's column lengths, axes as canonical."""
    axes = _canonical_axes(affine)
    zooms = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))
    check_geometry(name, tuple(int(shape[a]) for a in axes), tuple(float(zooms[a]) for a in axes))


def _canonical_shape(img, shape: tuple[int, ...]) -> tuple[int, int, int]:
    axes = _canonical_axes(img)
    return tuple(int(shape[a]) for a in axes)  # type: ignore[return-value]


def _canonical_zooms(img) -> tuple[float, float, float] | None:
    try:
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception:  # noqa: BLE001 - header without usable pixdim: geometry from the shape only
        return None
    if len(zooms) < 3:
        return None
    axes = _canonical_axes(img)
    return tuple(zooms[a] for a in axes)  # type: ignore[return-value]


def load_nifti(
    path: str | Path, *, max_voxels: int | None = None, dims: tuple[int, ...] = (3,), geometry: bool = True
) -> np.ndarray:
    """-> float32 array in RAS+ canonical orientation, shape (X, Y, Z); axial slices are [..., z].

    geometry=False skips the plausibility check (masks and label maps follow their image)."""
    import nibabel as nib

    path = Path(path)
    _check_file(path)
    try:
        img = nib.load(str(path), mmap=False)  # never mmap: a file truncated while mapped raises SIGBUS
        shape = _nifti_shape(img)
        if len(shape) == 3 and tuple(int(s) for s in img.shape) != shape:
            img = img.slicer[..., 0]
        if len(shape) not in dims:
            raise ScanError(
                f"{path.name}: expected a {' or '.join(f'{d}D' for d in dims)} volume, got {len(shape)}D shape {shape}"
            )
        if min(shape) < 1:
            raise ScanError(f"{path.name}: empty volume, shape {shape}")
        if max_voxels is not None and int(np.prod(shape, dtype=np.int64)) > max_voxels:
            raise ScanError(
                f"{path.name}: volume of {int(np.prod(shape, dtype=np.int64))} voxels exceeds the limit of {max_voxels}"
            )
        dtype = img.get_data_dtype()
        if dtype.kind == "c":
            raise ScanError(f"{path.name}: complex-valued NIfTI ({dtype}) is not supported; give a magnitude image")
        if dtype.fields is not None:
            raise ScanError(f"{path.name}: NIfTI with structured voxels ({dtype}, e.g. RGB) is not supported")
        if geometry and len(shape) == 3:
            zooms = _canonical_zooms(img)
            check_geometry(path.name, _canonical_shape(img, shape), zooms)
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj, dtype=np.float32)
    except ScanError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, TypeError, MemoryError) as exc:
        raise ScanError(f"{path.name}: unreadable or corrupt NIfTI ({exc.__class__.__name__})") from None
    except Exception as exc:  # nibabel raises assorted errors on malformed headers
        raise ScanError(f"{path.name}: unreadable or corrupt NIfTI ({exc.__class__.__name__})") from None
    if not all_finite(data):
        bad = int((~np.isfinite(data)).sum())
        raise ScanError(f"{path.name}: {bad} non-finite (NaN/inf) voxels")
    return data


def load_image(path: str | Path, *, channels: int | None = None, max_pixels: int = 8192 * 8192) -> np.ndarray:
    """-> float32 array (C, H, W) scaled to [0, 1]; channels=1 converts to gray, 3 to RGB."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        # An open file, not the path: Pillow memory-maps uncompressed images it opens by name
        # (SIGBUS if the file is truncated meanwhile); from a file object it reads them.
        with open(path, "rb") as f, Image.open(f) as opened:
            if opened.width * opened.height > max_pixels:
                raise ScanError(
                    f"{path.name}: image of {opened.width}x{opened.height} exceeds the limit of {max_pixels} pixels"
                )
            check_geometry(path.name, (opened.height, opened.width, 1))
            im = ImageOps.exif_transpose(opened)  # the orientation a viewer shows (EXIF tag 274)
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
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ScanError(f"{path.name}: not a readable image ({exc.__class__.__name__})") from None
    except Exception as exc:  # noqa: BLE001 - Pillow plugins raise assorted errors on malformed files
        raise ScanError(f"{path.name}: not a readable image ({exc.__class__.__name__})") from None
    if not all_finite(arr):
        raise ScanError(f"{path.name}: {int((~np.isfinite(arr)).sum())} non-finite (NaN/inf) pixels")
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    if bits16:
        lo, hi = np.percentile(arr, [0.5, 99.5])
        arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    else:
        arr = arr / 255.0
    if min(arr.shape[1:]) < MIN_SIDE:
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
        m = load_nifti(mask_path, geometry=False)
        if m.shape != shape:
            raise ScanError(f"{Path(mask_path).name}: mask shape {m.shape} differs from image shape {shape}")
        fg = m > 0
    labels = None
    if label_path is not None:
        lab = load_nifti(label_path, geometry=False)
        if lab.shape != shape:
            raise ScanError(f"{Path(label_path).name}: label shape {lab.shape} differs from image shape {shape}")
        labels = np.rint(lab).astype(np.int16)
    arr = vols[0][None] if len(vols) == 1 else np.stack(vols)  # one channel: a view, not a copy
    return Scan(arr, "volume", fg, labels, _file_geometry(path))


def _file_geometry(path: str | Path):
    """The file's own affine and grid (header only), for coordinates in the input's voxels and world mm."""
    import nibabel as nib

    from patchrank.pipeline.data.geometry import Geometry

    img = nib.load(str(path), mmap=False)  # header only; no mapping (see the module docstring)
    return Geometry.of(img.affine, img.shape)
