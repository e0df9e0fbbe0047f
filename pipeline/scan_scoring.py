"""Scan-level scoring on top of model.scoring.score_members (the one scoring function; an ensemble's mean).

Shared by `patchrank score`, evaluation and the Serve ingest deployment: slices are
scored in batches, slice scores are ranked into a scan score, and the top patches of
the scan are listed with their boxes in the scan's native pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from patchrank.model.checkpoint import LoadedModel
from patchrank.model.config import ScoringConfig
from patchrank.model.scoring import ScanScores, ScoreOutput, score_members, score_scan
from patchrank.pipeline.data.preprocess import Prepared


@dataclass(frozen=True)
class PatchHit:
    rank: int  # 1 = most suspicious patch of the scan
    slice_index: int
    row: int  # patch grid row / col
    col: int
    y0: int  # pixel box in the native slice (rows y0:y1, cols x0:x1); with pose on, of the pose-resampled grid
    x0: int
    y1: int
    x1: int
    score: float
    rec: float
    disc: float
    # Box centre in the input file's own voxel indices (2D images: i = column, j = row, k = 0) and, for
    # volumes, in world millimetres (RAS+, as NIfTI); see pipeline.data.geometry.
    i: float = 0.0
    j: float = 0.0
    k: float = 0.0
    ras_x_mm: float | None = None
    ras_y_mm: float | None = None
    ras_z_mm: float | None = None


def locate(y0: int, x0: int, y1: int, x1: int, slice_index: int, geometry=None) -> dict:
    """A native-slice box -> its centre as PatchHit's i, j, k and ras_*_mm fields."""
    from patchrank.pipeline.data.geometry import box_centre

    c = box_centre(y0, x0, y1, x1, slice_index)
    if geometry is None:  # a 2D image: rows are y, columns x
        return {"i": c[1], "j": c[0], "k": c[2]}
    ijk, ras = geometry.native_index(c), geometry.world(c)
    return dict(zip(("i", "j", "k", "ras_x_mm", "ras_y_mm", "ras_z_mm"), map(float, [*ijk, *ras])))


@dataclass
class ScanScore:
    scan_score: float
    slice_scores: np.ndarray  # (S,)
    slice_index: np.ndarray  # (S,)
    patches: list[PatchHit]
    pixel_maps: np.ndarray | None = None  # (S, H, W) model-resolution anomaly maps
    extras: dict = field(default_factory=dict)


def score_slices(
    model: LoadedModel,
    images: np.ndarray,
    foreground: np.ndarray,
    position: np.ndarray | None = None,
    batch_size: int = 32,
    device: str = "cpu",
    *,
    maps: bool = True,
) -> ScoreOutput:
    """images: (S, C, H, W), foreground: (S, 1, H, W), position: (S,) relative axial level
    (None / NaN = unknown) -> ScoreOutput over all S slices (pixel_map None when maps=False)."""
    outs = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(images[s : s + batch_size]).to(device)
        fg = torch.from_numpy(foreground[s : s + batch_size]).to(device)
        pos = None if position is None else torch.from_numpy(np.asarray(position[s : s + batch_size], dtype=np.float32))
        outs.append(score_members(model.members, x, cfg=model.scoring, foreground=fg, position=pos, maps=maps))
    return ScoreOutput(*(_cat([getattr(o, f) for o in outs]) for f in ScoreOutput.__dataclass_fields__))


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat([p.cpu() for p in parts])


def patch_box(
    row: int, col: int, patch: int, image_size: int, native_shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Grid cell -> (y0, x0, y1, x1) in the native slice (undoing square padding and resize)."""
    h0, w0 = native_shape
    side = max(h0, w0)
    scale = side / image_size
    top, left = (side - h0) // 2, (side - w0) // 2
    y0 = int(np.clip(np.floor(row * patch * scale) - top, 0, h0))
    y1 = int(np.clip(np.ceil((row + 1) * patch * scale) - top, 0, h0))
    x0 = int(np.clip(np.floor(col * patch * scale) - left, 0, w0))
    x1 = int(np.clip(np.ceil((col + 1) * patch * scale) - left, 0, w0))
    return y0, x0, y1, x1


def rank_patches(
    out: ScoreOutput,
    slice_index: np.ndarray,
    native_shape: tuple[int, int],
    top_n: int,
    geometry=None,
    image_size: int | None = None,
) -> list[PatchHit]:
    """Top-n valid patches over all slices of one scan, most suspicious first. geometry: the volume's
    pipeline.data.geometry.Geometry, for file-voxel and world coordinates; image_size: the model's input side
    (default: the pixel maps'; required when they were not computed)."""
    s, h, w = out.patch_scores.shape
    image_size = image_size or out.pixel_map.shape[-1]
    patch = image_size // w
    scores = out.patch_scores.masked_fill(~out.valid, float("-inf")).flatten()
    n = int(min(top_n, int(out.valid.sum())))
    if n == 0:
        return []
    top = torch.topk(scores, n).indices.tolist()
    hits = []
    for rank, flat in enumerate(top, start=1):
        si, rem = divmod(flat, h * w)
        r, c = divmod(rem, w)
        y0, x0, y1, x1 = patch_box(r, c, patch, image_size, native_shape)
        hits.append(
            PatchHit(
                rank,
                int(slice_index[si]),
                r,
                c,
                y0,
                x0,
                y1,
                x1,
                float(out.patch_scores[si, r, c]),
                float(out.rec[si, r, c]),
                float(out.disc[si, r, c]),
                **locate(y0, x0, y1, x1, int(slice_index[si]), geometry),
            )
        )
    return hits


def finish_scan(
    image_scores: torch.Tensor, prep: Prepared, cfg: ScoringConfig, maps: torch.Tensor | None = None
) -> ScanScores:
    """One scan's slice scores (and maps) -> model.scoring.score_scan, with through-plane context when
    the scan is a volume (its slice numbers); 2D images have none."""
    volume = prep.position is not None and np.isfinite(prep.position).all()
    index = torch.from_numpy(np.asarray(prep.slice_index)) if volume else None
    return score_scan(image_scores, cfg, slice_index=index, maps=maps)


def map_volume(prep: Prepared, maps: np.ndarray) -> np.ndarray:
    """Model-grid maps of the scored slices (S, h, w) -> a canonical volume (X, Y, Z) at the scan's native
    in-plane size; slices that were not scored get the map's minimum (nothing to see there)."""
    from patchrank.pipeline.data.preprocess import to_native

    vol = np.full(prep.geometry.canonical_shape, float(np.min(maps)), dtype=np.float32)
    vol[..., np.asarray(prep.slice_index)] = to_native(maps, prep.native_shape).transpose(1, 2, 0)
    return vol


def write_scan_map(path, prep: Prepared, maps) -> None:
    """A volume's gated per-slice maps (S, h, w; tensor or array) -> NIfTI on the input's own grid and affine."""
    from patchrank.pipeline.data.geometry import canonical_to_native, write_map

    canon = map_volume(prep, np.asarray(maps, dtype=np.float32))
    write_map(path, canonical_to_native(canon, prep.geometry), prep.geometry)


def score_prepared(
    model: LoadedModel, prep: Prepared, *, batch_size: int = 32, top_n: int = 10, keep_maps: bool = False
) -> ScanScore:
    """One preprocessed scan -> its scan score, slice scores and top patches (pixel maps only when keep_maps)."""
    out = score_slices(model, prep.images, prep.foreground, prep.position, batch_size, maps=keep_maps)
    scan = finish_scan(out.image_scores, prep, model.scoring, out.pixel_map)
    hits = rank_patches(out, prep.slice_index, prep.native_shape, top_n, prep.geometry, prep.images.shape[-1])
    maps = scan.maps.numpy() if keep_maps else None
    extras = {"map_volume": map_volume(prep, maps)} if keep_maps and prep.geometry is not None else {}
    return ScanScore(scan.scan_score, scan.slice_scores.numpy(), prep.slice_index, hits, maps, extras)
