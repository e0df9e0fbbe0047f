"""The one scoring function: the paper's method (model.method) composed with the evidence terms.

Slice level, `score_images`: raw maps of the method -> pixel-level terms join the calibrated residual ->
patch scores (+ patch-level terms) -> ranked image score, z-scored (+ image-level terms) -> pixel map.
An ensemble (`score_members`) averages its members' `score_images` outputs.
Scan level, `score_scan`: through-plane context on the slice scores, the slice gate on the pixel
maps, and the volume score. Evaluation, `patchrank score`, the Python API and the service call these two.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from .config import ScoringConfig
from .evidence.anatomy import AnatomyTerm
from .evidence.appearance import AppearanceTerm
from .evidence.base import Batch, NormalSet
from .evidence.context import slice_context
from .evidence.features import FeatureTerm
from .evidence.lesion import LesionShapeTerm
from .method import MethodStats, calibrate, fit_pixel_stats, fit_score_scales, patch_scores, patch_valid, raw_maps
from .pixelmap import pixel_map
from .ranking import ranked_sum

# The evidence terms fitted and applied on slices, in the order their evidence is summed.
TERMS = (AnatomyTerm(), AppearanceTerm(), FeatureTerm(), LesionShapeTerm())


@dataclass
class ScoreStats(MethodStats):
    """The method's normal-data statistics plus each evidence term's fitted state, by term name."""

    terms: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> ScoreStats:
        return cls(**d)

    @classmethod
    def identity(cls, height: int, width: int) -> ScoreStats:
        return cls(torch.zeros(1, 1, height, width), torch.ones(1, 1, height, width))


@dataclass
class ScoreOutput:
    patch_scores: torch.Tensor  # (B, h, w) combined, normalised
    rec: torch.Tensor  # (B, h, w) reconstruction component (z)
    disc: torch.Tensor  # (B, h, w) discriminator component (z)
    valid: torch.Tensor  # (B, h, w) bool, foreground patches
    image_scores: torch.Tensor  # (B,) normalised against normal images
    pixel_map: torch.Tensor | None  # (B, H, W) per-pixel anomaly map before the slice gate; None unless maps
    composite: torch.Tensor  # (B, C, H, W) masked reconstruction


@dataclass
class ScanScores:
    slice_scores: torch.Tensor  # (S,) after through-plane context
    scan_score: float  # rank-weighted top slice scores
    maps: torch.Tensor | None  # (S, H, W) gated pixel maps, when maps were given


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a if b is None else (b if a is None else a + b)


def _terms_at(level: str, batch: Batch, stats: ScoreStats | None, cfg: ScoringConfig) -> torch.Tensor | None:
    total = None
    for term in TERMS:
        state = stats.terms.get(term.name) if stats is not None else None
        if term.level == level and term.weight(cfg) > 0 and state is not None:
            total = _sum(total, term.apply(batch, state, cfg))
    return total


@torch.no_grad()
def score_images(
    recon: nn.Module,
    disc: nn.Module,
    x: torch.Tensor,
    *,
    cfg: ScoringConfig,
    stats: ScoreStats | None,
    foreground: torch.Tensor | None = None,
    position: torch.Tensor | None = None,
    maps: bool = True,
) -> ScoreOutput:
    """x: (B, C, H, W) preprocessed slices; foreground: (B, 1, H, W); position: (B,) relative
    axial position in the volume (NaN = unknown, e.g. a 2D image) -> ScoreOutput. maps=False skips the
    per-pixel map (pixel_map None) for callers that use only the patch, slice and scan scores."""
    residual, evidence, composite = raw_maps(recon, disc, x, cfg)
    batch = Batch(x, foreground, position, recon, tuple(evidence.shape[-2:]))
    pixel_terms = _terms_at("pixel", batch, stats, cfg)
    patch_terms = _terms_at("patch", batch, stats, cfg)
    res_cal = calibrate(residual, stats)
    scores, rec_z, disc_z, valid, image_raw = patch_scores(res_cal, evidence, foreground, stats, cfg, pixel_terms,
                                                           patch_terms)  # fmt: skip
    image = image_raw if stats is None else (image_raw - stats.image_mean) / stats.image_std
    image_terms = _terms_at("image", batch, stats, cfg)
    if image_terms is not None:  # image level: e.g. the lesion's outline, not any one patch
        image = image + image_terms.to(image.device, image.dtype)
    pixel = None
    if maps:
        pcal = res_cal
        if pixel_terms is not None and cfg.pixel_prior_scale:
            pcal = pcal + cfg.pixel_prior_scale * pixel_terms
        pixel = pixel_map(pcal, x, foreground, stats.rec_mean if stats else 0.0, stats.rec_std if stats else 1.0, cfg)
    return ScoreOutput(scores, rec_z, disc_z, valid, image, pixel, composite)


@dataclass
class Member:
    """One training of an ensemble: its networks and its own normal-data statistics."""

    recon: nn.Module
    disc: nn.Module
    stats: ScoreStats | None


@torch.no_grad()
def score_members(
    members,
    x: torch.Tensor,
    *,
    cfg: ScoringConfig,
    foreground: torch.Tensor | None = None,
    position: torch.Tensor | None = None,
    maps: bool = True,
) -> ScoreOutput:
    """`score_images` of each member (anything with .recon, .disc, .stats), averaged: patch scores, their
    components, image scores, pixel maps and composites are the members' means. One member: its own output."""
    outs = [
        score_images(m.recon, m.disc, x, cfg=cfg, stats=m.stats, foreground=foreground, position=position, maps=maps)
        for m in members
    ]
    if len(outs) == 1:
        return outs[0]

    def mean(name: str) -> torch.Tensor | None:
        values = [getattr(o, name) for o in outs]
        return None if values[0] is None else torch.stack(values).mean(0)

    valid = outs[0].valid  # the foreground's patches: the same for every member
    return ScoreOutput(mean("patch_scores"), mean("rec"), mean("disc"), valid, mean("image_scores"), mean("pixel_map"),
                       mean("composite"))  # fmt: skip


def volume_score(slice_scores: torch.Tensor, cfg: ScoringConfig) -> float:
    """slice_scores: (S,) -> rank-weighted top slices of one volume."""
    r = cfg.volume_rank
    return float(ranked_sum(slice_scores.reshape(1, -1).float(), r.k, r.decay, r.floor)[0])


def slice_gate(pixel: torch.Tensor, slice_scores: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """Pixel maps (S, H, W): a slice scoring below `pixel_slice_margin` has its whole map lowered by
    `pixel_slice_weight` x the shortfall, so the ranked slice evidence decides which slices' maps count."""
    if not cfg.pixel_slice_weight:
        return pixel
    s = torch.as_tensor(slice_scores).to(pixel.device, pixel.dtype).reshape(-1)
    return pixel + cfg.pixel_slice_weight * (s - cfg.pixel_slice_margin).clamp(max=0)[:, None, None]


def score_scan(
    image_scores: torch.Tensor, cfg: ScoringConfig, *, slice_index=None, maps: torch.Tensor | None = None
) -> ScanScores:
    """One scan's slice scores (S,) from `score_images` -> through-plane context (volumes: give their
    slice numbers as slice_index; None for a 2D image), the slice gate on its maps (S, H, W), the scan score."""
    scores = torch.as_tensor(image_scores).float().reshape(-1)
    if slice_index is not None:
        scores = slice_context(scores, slice_index, cfg)
    gated = slice_gate(maps, scores, cfg) if maps is not None else None
    return ScanScores(scores, volume_score(scores, cfg), gated)


@torch.no_grad()
def fit_score_stats(recon: nn.Module, disc: nn.Module, batches, cfg: ScoringConfig) -> ScoreStats:
    """Fit the statistics on normal data in one pass: the method's calibration, then each active
    term's state, then the patch and image z-score pairs (which include the terms' evidence).

    batches: iterable of (x: (B, C, H, W), foreground: (B, 1, H, W) or None[, position: (B,)]).
    """
    active = [t for t in TERMS if t.weight(cfg) > 0]
    res, ev, fgs, poss = [], [], [], []
    collected: dict[str, list] = {t.name: [] for t in active}
    for x, fg, *rest in batches:
        r, e, _ = raw_maps(recon, disc, x, cfg)
        res.append(r.cpu())
        ev.append(e.cpu())
        fgs.append(fg.cpu() if fg is not None else torch.ones_like(r, dtype=torch.bool).cpu())
        pos = rest[0] if rest and rest[0] is not None else None
        poss.append(
            torch.full((len(x),), float("nan")) if pos is None else torch.as_tensor(pos).float().reshape(-1).cpu()
        )
        batch = Batch(x, fg, poss[-1], recon, tuple(e.shape[-2:]))
        for term in active:
            collected[term.name].append(term.collect(batch, cfg))
    if not res:
        raise ValueError("fit_score_stats needs at least one batch of normal validation data")
    residual, evidence, fg = torch.cat(res), torch.cat(ev), torch.cat(fgs)
    stats = ScoreStats(*fit_pixel_stats(residual, fg, cfg))
    patch = residual.shape[-1] // evidence.shape[-1]
    normal = NormalSet(fg, torch.cat(poss), patch_valid(fg, tuple(evidence.shape), patch, cfg))
    found: dict[str, torch.Tensor | None] = {"pixel": None, "patch": None}
    for term in active:
        state, on_normal = term.fit(collected[term.name], normal, cfg)
        if state is not None:
            stats.terms[term.name] = state
            if term.level in found:
                found[term.level] = _sum(found[term.level], on_normal)
    fit_score_scales(stats, residual, evidence, fg, cfg, found["pixel"], found["patch"])
    return stats
