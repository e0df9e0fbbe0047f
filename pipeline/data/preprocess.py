"""The one preprocessing function, shared by training, evaluation and serving.

Its parameters (a `PreprocessConfig`) are stored in every checkpoint, and the scorer
rebuilds them from there, so serving reproduces training exactly.

Volumes (C, H, W, S):
  1. foreground = the provided brain mask, else voxels that differ from the background value (0, or the
     constant of a provider's z-scoring) in any channel; a volume that is not a skull-stripped brain is
     refused (`contract.check_volume`);
  2. per channel, z-score inside the foreground (works on raw intensities and on data
     already z-scored by the provider alike), clip to [-clip, clip], divide by clip;
     background is set to -1;
  3. keep axial slices whose foreground area >= min_area_fraction x the largest one; each
     kept slice's relative axial position (0 = lowest such slice, 1 = highest) lets the
     scorer compare it with normal slices at the same level;
  4. pad each slice to a square (background value) and resize to image_size
     (bilinear, antialiased); the foreground is resized the same way and thresholded at 0.5.
2D images (C, H, W, 1) in [0, 1]: with `image_hair`, hairs painted out first (`without_hair`); scaled to
[-1, 1]; the foreground is every pixel, or with
`image_foreground="dark"` the lesion (`dark_foreground`: dermoscopy lesions are darker than
the surrounding skin); then padded and resized the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from patchrank.model.evidence.lesion import dark_lesion
from patchrank.pipeline.data.contract import check_volume
from patchrank.pipeline.data.loaders import INPUT_ERRNOS, Scan, ScanError, load_scan
from patchrank.pipeline.data.pose import zooms_of
from patchrank.pipeline.settings import PreprocessConfig

BACKGROUND = -1.0
MAX_SLICES = 1024  # slices kept for scoring, per scan
MAX_PREPARED_BYTES = 512 * 2**20  # model-ready slices (+ foreground masks) per scan
# Peak memory of load + preprocess, per value of the loaded scan: the raw read (<= 8 bytes,
# float64 NIfTI) next to the float32 copy (4), then the foreground (1) and its values (<= 4);
# plus per-chunk temporaries (~12 bytes per value of a chunk of CHUNK_VALUES). Measured: 804 MiB
# above the process for a 512x512x400 int16 volume (8 bytes/voxel; docs/guarantees.md). What
# the ingest replica's in-flight budget (ServiceConfig.max_inflight_mb) charges a scan.
PEAK_BYTES_PER_VALUE = 12
CHUNK_VALUES = 2**24  # slices are normalised and resized in chunks of about this many values (64 MiB)


# Pose canonicalisation (pipeline.data.pose) adds smoothed float32 maps for its estimate, then a float32 copy
# and the resampled output. Measured (peak RSS above the process, 240x240x155 BraTS volume, resampled): 235 MiB
# with pose vs 162 MiB without, against 204 MiB charged without this term and 272 MiB with it.
POSE_BYTES_PER_VALUE = 8


# Hair removal (2D images, `image_hair`) holds a float32 copy of the image next to the loaded one; its working
# copies are at most HAIR_WORK_SIDE px a side.
HAIR_BYTES_PER_VALUE = 4


def peak_bytes(values: int, pose: bool = False, hair: bool = False) -> int:
    """Estimated peak memory (bytes) of loading and preprocessing a scan of `values` values (`pose`: with
    pose canonicalisation on; `hair`: with hair removal on)."""
    extra = POSE_BYTES_PER_VALUE * int(values) if pose else 0
    extra += HAIR_BYTES_PER_VALUE * int(values) if hair else 0
    return PEAK_BYTES_PER_VALUE * (int(values) + min(int(values), CHUNK_VALUES)) + extra


def prepared_bytes(n_slices: int, cfg: PreprocessConfig) -> int:
    """Bytes of the model-ready output: float32 images plus a bool foreground per slice."""
    return int(n_slices) * cfg.image_size * cfg.image_size * (4 * cfg.channels + 1)


@dataclass
class Prepared:
    images: np.ndarray  # (S, C, H, W) float32 in [-1, 1], model input
    foreground: np.ndarray  # (S, 1, H, W) bool
    slice_index: np.ndarray  # (S,) int, index into the scan's axial slices
    native_shape: tuple[int, int]  # (H0, W0) before padding and resizing
    labels: np.ndarray | None = None  # (S, H0, W0) bool abnormal mask at native resolution
    lesion_voxels: np.ndarray | None = None  # (S,) abnormal voxels per slice (native)
    area_fraction: np.ndarray | None = None  # (S,) foreground area / largest slice's
    position: np.ndarray | None = None  # (S,) relative axial level in [0, 1] (NaN for 2D images)
    geometry: object | None = None  # volumes: the input's geometry.Geometry (file voxels, world mm)


def as_config(cfg: PreprocessConfig | dict) -> PreprocessConfig:
    return cfg if isinstance(cfg, PreprocessConfig) else PreprocessConfig(**cfg)


def dark_foreground(img: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """img: (C, H, W) in [0, 1] -> (H, W) bool lesion mask: pixels darker than Otsu's threshold
    of the luminance inside the central disc (dermoscopy vignetting makes the corners dark too),
    dilated by ~2 % of the side so the lesion border is included. Falls back to every pixel when
    less than `min_fraction` of the image qualifies (no distinct lesion)."""
    h, w = img.shape[-2:]
    dark = dark_lesion(torch.from_numpy(np.ascontiguousarray(img)))
    if dark is None:
        return np.ones((h, w), dtype=bool)
    r = max(1, round(0.02 * max(h, w)))
    grown = dark.numpy().astype(np.uint8)  # dilated by a (2r+1)^2 square: two running-max passes, O(1) per pixel
    for axis in (0, 1):
        grown = ndimage.maximum_filter1d(grown, 2 * r + 1, axis=axis, mode="constant", cval=0)
    grown = grown > 0
    return grown if grown.mean() >= min_fraction else np.ones((h, w), dtype=bool)


HAIR_WORK_SIDE = 256  # hair detection runs at most at this side (larger images: on a resized copy)


def without_hair(arr: np.ndarray, threshold: float = 0.12) -> np.ndarray:
    """(C, H, W, S) images in [0, 1] -> the same with hair-like pixels replaced by each channel's grey closing.

    Hair = the luminance's black-hat (grey closing over a disc ~5 % of the image side, at least 3 px, minus the
    image) above `threshold`, dilated by 1 px: dark structures thinner than the disc and more than `threshold`
    darker than their surroundings (hairs; also any such streak at a lesion's border). Images larger than
    HAIR_WORK_SIDE are analysed on an antialiased copy at that side (the disc and the 1-px dilation are then in
    its pixels); the mask and the closing are read back at the nearest working pixel of each full-size pixel."""
    out = arr.copy()
    h, w = arr.shape[1:3]
    scale = min(1.0, HAIR_WORK_SIDE / max(h, w))
    side = max(3, int(round(0.05 * max(h, w) * scale)) | 1)
    yy, xx = np.mgrid[:side, :side] - side // 2
    disc = (yy**2 + xx**2) <= (side // 2) ** 2
    for s in range(arr.shape[-1]):
        work = arr[..., s]
        if scale < 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            work = F.interpolate(torch.from_numpy(np.ascontiguousarray(work))[None].float(), size=size,
                                 mode="bilinear", align_corners=False, antialias=True)[0].numpy()  # fmt: skip
        closed = np.stack([ndimage.grey_closing(ch, footprint=disc) for ch in work])
        hair = ndimage.binary_dilation(closed.mean(0) - work.mean(0) > threshold)
        if scale < 1.0:  # nearest working pixel of every full-size row / column
            rows = np.minimum((np.arange(h) + 0.5) * work.shape[1] / h, work.shape[1] - 1).astype(np.intp)
            cols = np.minimum((np.arange(w) + 0.5) * work.shape[2] / w, work.shape[2] - 1).astype(np.intp)
            ys, xs = np.nonzero(hair[np.ix_(rows, cols)])
            out[:, ys, xs, s] = closed[:, rows[ys], cols[xs]]
        else:
            out[:, hair, s] = closed[:, hair]
    return out


def _channel_stats(arr: np.ndarray, fg: np.ndarray) -> list[tuple[float, float]]:
    """(mean, std) of each channel inside the foreground of the whole volume."""
    stats = []
    for c in range(arr.shape[0]):
        vals = arr[c][fg]
        mean, std = float(vals.mean()), float(vals.std())
        del vals
        if not np.isfinite(std) or std < 1e-6:
            raise ScanError(f"channel {c} is constant inside the foreground; nothing to normalise")
        stats.append((mean, std))
    return stats


def _normalise_slices(
    arr: np.ndarray, fg: np.ndarray, idx: np.ndarray, stats: list[tuple[float, float]], clip: float
) -> np.ndarray:
    """Slices `idx` of arr (C, H, W, S) -> (C, H, W, k): z-scored with the volume's `stats`,
    clipped to [-clip, clip], divided by clip; background (outside fg) = -1. In place on one
    copy of the slices: the same values as whole-volume arithmetic, without its temporaries."""
    out = arr[..., idx]  # a copy (fancy index)
    background = ~fg[..., idx]
    for c, (mean, std) in enumerate(stats):
        z = out[c]
        z -= mean
        z /= std
        np.clip(z, -clip, clip, out=z)
        z /= clip
        z[background] = BACKGROUND
    return out.astype(np.float32, copy=False)  # computed in the scan's dtype, stored as float32


def _square_resize(x: torch.Tensor, size: int, pad_value: float) -> torch.Tensor:
    """x: (S, C, H, W) -> (S, C, size, size): pad to square (centred), then resize."""
    h, w = x.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    x = F.pad(x, (left, side - w - left, top, side - h - top), value=pad_value)
    if side == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)


def preprocess_scan(
    scan: Scan,
    cfg: PreprocessConfig | dict,
    *,
    all_slices: bool = False,
    max_slices: int | None = MAX_SLICES,
    max_bytes: int | None = MAX_PREPARED_BYTES,
) -> Prepared:
    """Scan -> model-ready slices. all_slices=True skips the area-based slice selection.

    Refused (ScanError) before any slice is normalised or resized: more than `max_slices`
    slices to score, or model-ready output over `max_bytes`."""
    cfg = as_config(cfg)
    arr = scan.array
    if arr.ndim != 4 or arr.shape[0] != cfg.channels:
        raise ScanError(f"expected (C={cfg.channels}, H, W, S) data, got shape {arr.shape}")
    if min(arr.shape[1:3]) < 8:
        raise ScanError(f"slices too small: {arr.shape[1]}x{arr.shape[2]}")
    scan_labels, geometry = scan.labels, scan.geometry
    if scan.kind == "volume":
        zooms = None if geometry is None else zooms_of(geometry)
        fg = check_volume(arr, scan.foreground, zooms)  # the input contract: a skull-stripped brain
        if not fg.any():
            raise ScanError("empty volume: no foreground voxels (the whole volume holds one constant value)")
        if cfg.pose:  # into the training volumes' head pose; geometry maps the result back to the input
            arr, fg, scan_labels, geometry = _in_pose(arr, fg, scan_labels, geometry, cfg)
    else:
        if cfg.image_hair:
            arr = without_hair(arr)
        fg = np.ones(arr.shape[1:], dtype=bool)
        if cfg.image_foreground == "dark":
            fg = np.stack([dark_foreground(arr[..., s]) for s in range(arr.shape[-1])], axis=-1)
    area = fg.reshape(-1, fg.shape[-1]).sum(0).astype(np.float64)  # (S,)
    frac = area / max(area.max(), 1.0)
    rule = np.flatnonzero((frac >= cfg.min_area_fraction) & (area > 0))
    keep = np.arange(arr.shape[-1]) if all_slices else rule
    if keep.size == 0:
        raise ScanError("no slice passes the foreground-area rule")
    if max_slices is not None and keep.size > max_slices:
        raise ScanError(f"{keep.size} slices to score exceed the limit of {max_slices} per scan")
    if max_bytes is not None and prepared_bytes(keep.size, cfg) > max_bytes:
        raise ScanError(
            f"{keep.size} slices at {cfg.image_size} px need {prepared_bytes(keep.size, cfg) / 2**20:.0f} MiB, "
            f"over the limit of {max_bytes / 2**20:.0f} MiB per scan"
        )
    if scan.kind == "volume" and rule.size:
        position = ((keep - rule.min()) / max(1, rule.max() - rule.min())).astype(np.float32)
    else:
        position = np.full(keep.size, np.nan, dtype=np.float32)
    stats = _channel_stats(arr, fg) if scan.kind == "volume" else None
    images = np.empty((keep.size, cfg.channels, cfg.image_size, cfg.image_size), np.float32)
    foreground = np.empty((keep.size, 1, cfg.image_size, cfg.image_size), bool)
    step = max(1, CHUNK_VALUES // max(1, arr[..., 0].size))  # slices per chunk: memory of a chunk, not the scan
    for start in range(0, keep.size, step):
        idx = keep[start : start + step]
        if stats is not None:
            norm = _normalise_slices(arr, fg, idx, stats, cfg.clip)  # (C, H, W, k)
        else:
            norm = (arr[..., idx] * 2.0 - 1.0).astype(np.float32)
        x = torch.from_numpy(np.ascontiguousarray(norm.transpose(3, 0, 1, 2)))  # (k, C, H, W)
        del norm
        m = torch.from_numpy(np.ascontiguousarray(fg[..., idx].transpose(2, 0, 1)[:, None])).float()
        images[start : start + len(idx)] = _square_resize(x, cfg.image_size, BACKGROUND).clamp_(-1, 1).numpy()
        foreground[start : start + len(idx)] = (_square_resize(m, cfg.image_size, 0.0) > 0.5).numpy()
        del x, m
    labels = lesions = None
    if scan_labels is not None:
        lab = scan_labels[..., keep].transpose(2, 0, 1) > 0  # (S, H0, W0)
        labels, lesions = lab, lab.reshape(len(keep), -1).sum(1)
    return Prepared(images, foreground, keep, tuple(arr.shape[1:3]), labels, lesions, frac[keep], position, geometry)


def _in_pose(arr: np.ndarray, fg: np.ndarray, labels: np.ndarray | None, geometry, cfg: PreprocessConfig) -> tuple:
    """A volume -> (arr, fg, labels, geometry) in the target head pose (pipeline.data.pose.canonicalise)."""
    from dataclasses import replace

    from patchrank.pipeline.data.pose import canonicalise

    if cfg.pose_target is None:
        raise ValueError("preprocess.pose is on without a pose_target (training fits it: pose.with_target)")
    arr, fg, labels, pull = canonicalise(arr, fg, labels, zooms_of(geometry), cfg.pose_target)
    if pull is not None and geometry is not None:
        geometry = replace(geometry, pose=pull)
    return arr, fg, labels, geometry


def to_native(maps: np.ndarray, native_shape: tuple[int, int]) -> np.ndarray:
    """Inverse of the square-pad-resize for per-pixel maps: (S, h, w) -> (S, H0, W0)."""
    h0, w0 = native_shape
    side = max(h0, w0)
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[:, None]
    t = F.interpolate(t, size=(side, side), mode="bilinear", align_corners=False)[:, 0]
    top, left = (side - h0) // 2, (side - w0) // 2
    return t[:, top : top + h0, left : left + w0].numpy()


def load_prepared(
    path,
    preprocess: PreprocessConfig | dict,
    series_uid: str | None = None,
    *,
    max_slices: int | None = MAX_SLICES,
    max_bytes: int | None = MAX_PREPARED_BYTES,
) -> Prepared:
    """A scan file or DICOM series (a `dicom.SeriesRef`, or a folder + SeriesInstanceUID) -> model-ready
    slices, with a checkpoint's preprocessing recipe (the one loading path of `patchrank score`, the Python
    API and the service). A file that vanishes or changes type while it is read is the input's fault: a
    ScanError, not an OSError that a service would retry."""
    pre = as_config(preprocess)
    where = getattr(path, "folder", path)  # a dicom.SeriesRef: its folder
    name = Path(str(where)).name if isinstance(where, str | Path) else "scan"
    try:
        scan = load_scan(path, channels=pre.channels, max_voxels=pre.max_voxels, series_uid=series_uid)
        try:
            return preprocess_scan(scan, pre, max_slices=max_slices, max_bytes=max_bytes)
        except ScanError as exc:  # what preprocessing finds wrong names the file, as the loaders' reasons do
            raise ScanError(str(exc) if str(exc).startswith(f"{name}:") else f"{name}: {exc}") from None
    except OSError as exc:
        if exc.errno in INPUT_ERRNOS:
            raise ScanError(f"{name}: {exc.strerror or exc.__class__.__name__}") from None
        raise
