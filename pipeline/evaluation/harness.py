"""Evaluation against labels, the same way for PatchRank and every baseline.

A `Scorer` turns preprocessed slices into slice scores and per-pixel anomaly maps.
PatchRank's scorer goes through `pipeline.scan_scoring.score_slices` (hence
`model.scoring.score_members`, the one scoring function); baselines implement the same
interface in `pipeline.evaluation.baselines`.

Protocol (../shared/data/README.md, implemented by `datasets.slice_labels` and
`PreprocessConfig.min_area_fraction`): a slice counts when its foreground area is >= 15%
of the volume's largest; it is normal with 0 tumour voxels, abnormal with >= 20 (at
240 x 240, scaled by native slice area), left out in between. Small-lesion AUROC:
normal slices vs abnormal slices with <= 600 tumour voxels (same scaling).

Pixel metrics: each anomaly map is upsampled from the model resolution back to the
native slice grid with `preprocess.to_native` (bilinear, undoing the square padding) and
compared with the native tumour mask over the pixels of the (upsampled) foreground,
plus any tumour pixel outside it. Best Dice uses one threshold for the whole test set.
If the test set has more than `max_pixels` such pixels, a seeded uniform subsample is
used (reported as `n_pixels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from patchrank.pipeline.data.datasets import (
    SMALL_LESION_MAX_VOXELS_240,
    DatasetError,
    Record,
    load_record,
    slice_labels,
)
from patchrank.pipeline.data.loaders import ScanError
from patchrank.pipeline.data.preprocess import Prepared, to_native
from patchrank.pipeline.evaluation import metrics
from patchrank.pipeline.settings import PreprocessConfig


@dataclass
class EvalResult:
    scores: np.ndarray  # (N,) higher = more abnormal
    maps: np.ndarray | None  # (N, H, W) per-pixel anomaly maps at model resolution
    patches: np.ndarray | None = None  # (N, h, w) patch scores, -inf where not valid
    scan_score: float | None = None  # scan-level scorers: the scan's score (model.scoring.score_scan)


class Scorer(Protocol):
    name: str
    scan_level: bool  # True: every slice of a scan is scored, then `finish_scan` applies scan-level steps

    def score(self, images: np.ndarray, foreground: np.ndarray, position: np.ndarray | None = None) -> EvalResult:
        """images: (N, C, H, W) preprocessed; foreground: (N, 1, H, W) bool; position: (N,)
        relative axial level of each slice in its volume (NaN / None = unknown)."""
        ...

    def finish_scan(self, full: EvalResult, prep: Prepared) -> EvalResult:
        """Every slice's result of one scan -> after the scan-level steps."""
        ...


class SliceLevel:
    """Base of scorers whose slices are scored independently (the baselines)."""

    scan_level = False

    def finish_scan(self, full: EvalResult, prep: Prepared) -> EvalResult:
        return full


class PatchRankScorer:
    """A trained checkpoint, scored through the one scoring path (slices, then the scan), on networks prepared
    for inference (pipeline.inference) unless fast=False."""

    scan_level = True

    def __init__(self, model, name: str = "PatchRank", device: str = "cpu", fast: bool = True) -> None:
        from patchrank.pipeline.inference import prepare_for_inference

        self.model = prepare_for_inference(model) if fast else model
        self.name, self.device = name, device  # device: where model's networks live

    def score(self, images: np.ndarray, foreground: np.ndarray, position: np.ndarray | None = None) -> EvalResult:
        from patchrank.pipeline.scan_scoring import score_slices

        out = score_slices(self.model, images, foreground, position, device=self.device)
        patches = out.patch_scores.masked_fill(~out.valid, float("-inf")).numpy()
        return EvalResult(out.image_scores.numpy(), out.pixel_map.numpy(), patches)

    def finish_scan(self, full: EvalResult, prep: Prepared) -> EvalResult:
        """Through-plane context on the slice scores and the slice gate on the maps (model.scoring.score_scan)."""
        from patchrank.pipeline.scan_scoring import finish_scan

        maps = None if full.maps is None else torch.from_numpy(full.maps)
        scan = finish_scan(torch.from_numpy(np.asarray(full.scores, dtype=np.float32)), prep, self.model.scoring, maps)
        maps = None if maps is None else scan.maps.numpy()
        return EvalResult(scan.slice_scores.numpy(), maps, full.patches, float(scan.scan_score))


@dataclass
class EvalScan:
    record: Record
    prep: Prepared
    labels: np.ndarray  # (S,) 0/1/-1 per kept slice

    @property
    def scale(self) -> float:
        return self.prep.native_shape[0] * self.prep.native_shape[1] / (240.0 * 240.0)


def load_test_scans(records: list[Record], cfg: PreprocessConfig, progress: Callable | None = None) -> list[EvalScan]:
    out = []
    for rec in records if progress is None else progress(records):
        try:
            prep = load_record(rec, cfg)
        except ScanError as exc:
            raise DatasetError(f"{rec.subject}: {exc}") from None
        out.append(EvalScan(rec, prep, slice_labels(prep, rec.label)))
    if not any((t.labels >= 0).any() for t in out):
        raise DatasetError("no labelled slices to evaluate (need tumour masks or image labels)")
    return out


@dataclass
class EvalData:
    """Everything evaluated, kept for the report and the figures."""

    scores: np.ndarray  # (N,)
    labels: np.ndarray  # (N,) 0/1
    small: np.ndarray  # (N,) bool: abnormal with a small lesion
    images: np.ndarray  # (N, C, H, W)
    maps: np.ndarray | None  # (N, H, W)
    patches: np.ndarray | None  # (N, h, w)
    gt: list  # per slice: native (H0, W0) bool mask or None
    native_shapes: list
    names: list  # "subject:slice"
    pix_scores: np.ndarray | None = None
    pix_labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)


def _pixels(maps: np.ndarray, fg: np.ndarray, gt: np.ndarray, native_shape) -> tuple[np.ndarray, np.ndarray]:
    """maps, fg: (S, H, W) model res; gt: (S, H0, W0) -> scores, labels over the region."""
    up = to_native(maps, native_shape)
    region = (to_native(fg.astype(np.float32), native_shape) > 0.5) | gt
    return up[region].astype(np.float32), gt[region]


def evaluate_scorer(scorer: Scorer, scans: list[EvalScan], *, max_pixels: int = 6_000_000, seed: int = 0) -> EvalData:
    parts: dict[str, list] = {
        k: [] for k in ("scores", "labels", "small", "images", "maps", "patches", "pix_s", "pix_y")
    }
    gt, shapes, names = [], [], []
    data_scans: list[tuple[float, int, str]] = []
    for t in scans:
        keep = np.flatnonzero(t.labels >= 0)
        if keep.size == 0:
            continue
        p = t.prep
        if not scorer.scan_level:  # slices scored independently: only the labelled ones
            res = scorer.score(p.images[keep], p.foreground[keep], None if p.position is None else p.position[keep])
        else:  # scan-level steps need every slice of the scan (unlabelled ones are neighbours too)
            full = scorer.finish_scan(scorer.score(p.images, p.foreground, p.position), p)
            if full.scan_score is not None:  # a scan is abnormal when any of its labelled slices is
                data_scans.append((full.scan_score, int((t.labels[keep] == 1).any()), t.record.subject))
            res = EvalResult(
                full.scores[keep],
                None if full.maps is None else full.maps[keep],
                None if full.patches is None else full.patches[keep],
            )
        lab = t.labels[keep]
        vox = p.lesion_voxels[keep] if p.lesion_voxels is not None else np.zeros(keep.size)
        parts["scores"].append(np.asarray(res.scores, dtype=np.float64))
        parts["labels"].append(lab)
        parts["small"].append((lab == 1) & (vox <= SMALL_LESION_MAX_VOXELS_240 * t.scale))
        parts["images"].append(p.images[keep])
        parts["maps"].append(res.maps)
        parts["patches"].append(res.patches)
        names += [f"{t.record.subject}:{int(i)}" for i in p.slice_index[keep]]
        shapes += [p.native_shape] * keep.size
        gt += list(p.labels[keep]) if p.labels is not None else [None] * keep.size
        if p.labels is not None and res.maps is not None:
            s, y = _pixels(res.maps, p.foreground[keep, 0], p.labels[keep], p.native_shape)
            parts["pix_s"].append(s)
            parts["pix_y"].append(y)
    if not parts["scores"]:
        raise DatasetError("no labelled slices to evaluate")
    cat = lambda k: np.concatenate(parts[k]) if parts[k] and all(v is not None for v in parts[k]) else None  # noqa: E731
    data = EvalData(
        cat("scores"), cat("labels"), cat("small"), cat("images"), cat("maps"), cat("patches"), gt, shapes, names
    )
    if parts["pix_s"]:
        s, y = np.concatenate(parts["pix_s"]), np.concatenate(parts["pix_y"])
        if s.size > max_pixels:
            idx = np.random.default_rng(seed).choice(s.size, max_pixels, replace=False)
            s, y = s[idx], y[idx]
        data.pix_scores, data.pix_labels = s, y.astype(np.int64)
    if data_scans:
        data.extra["scan_scores"] = np.array([s for s, _, _ in data_scans], dtype=np.float64)
        data.extra["scan_labels"] = np.array([y for _, y, _ in data_scans], dtype=np.int64)
    return data


def report(data: EvalData) -> dict:
    """The numbers of report.json (None where a metric is undefined for this data)."""
    y, s = data.labels, data.scores
    out: dict = {
        "n_normal": int((y == 0).sum()),
        "n_abnormal": int((y == 1).sum()),
        "image_auroc": metrics.safe(metrics.auroc, y, s),
        "image_auprc": metrics.safe(metrics.auprc, y, s),
    }
    if "scan_scores" in data.extra:
        ys, ss = data.extra["scan_labels"], data.extra["scan_scores"]
        out.update(n_normal_scans=int((ys == 0).sum()), n_abnormal_scans=int((ys == 1).sum()))
        out["scan_auroc"] = metrics.safe(metrics.auroc, ys, ss)
    has_masks = any(g is not None for g in data.gt)
    if has_masks:
        sel = (y == 0) | data.small
        out["n_small_lesion"] = int(data.small.sum())
        out["small_lesion_auroc"] = metrics.safe(metrics.auroc, y[sel], s[sel])
        if data.pix_scores is not None:
            out["pixel_auroc"] = metrics.safe(metrics.auroc, data.pix_labels, data.pix_scores)
            out["best_dice"] = metrics.safe(metrics.best_dice, data.pix_labels, data.pix_scores)
            out["n_pixels"] = int(data.pix_scores.size)
            out["pixel_resolution"] = "native (maps upsampled with preprocess.to_native), inside the foreground"
        else:
            out["pixel_auroc"] = out["best_dice"] = None
    return out
