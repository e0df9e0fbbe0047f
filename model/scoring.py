"""The one scoring function: per-patch anomaly scores, ranked image and volume scores.

Used unchanged by evaluation and by the Ray Serve scorer.

Pipeline for a batch x: (B, C, H, W) of preprocessed slices:
 1. Reconstruct x under each of the M complementary grid masks (one batched forward of
    B*M images) and keep, for every pixel, the reconstruction made while it was hidden:
    composite = sum_m mask_m * recon_m.
 2. Residual per pixel r = |x - composite| ("abs") or relu(x - composite) ("positive",
    for lesions brighter than normal tissue), averaged over channels.
 3. Calibrate r against normal validation data: (r - mu) / sigma with mu, sigma per
    pixel position ("position"), one global pair ("global"), or none.
 3b. Optionally add anatomical evidence from the input itself, calibrated the same way
    (model.priors): intensity unusual for this position, and left-right asymmetry on
    slices of volumes (`intensity_weight`, `symmetry_weight`; 0 = off, the model default,
    so older checkpoints score as before).
 4. Patch reconstruction evidence = mean calibrated residual in each P x P patch;
    discriminator evidence = -logit of D(x) for that patch ("does not look real";
    `disc_evidence="logit"`), or D(composite) - D(x) ("contrast": looks less real than
    its own normal reconstruction, which cancels how hard that kind of patch is for D).
    Both are z-scored with normal-patch statistics and summed with weights.
 4b. Optionally add feature evidence (`feature_weight`, model.features): the calibrated
    distance of each patch's encoder features to the nearest normal patch's.
 5. Image score = rank-weighted top patches (model.ranking) over foreground patches,
    then z-scored against normal validation images. When a slice's relative axial
    position in its volume is known (0 = lowest kept slice, 1 = highest) and
    `position_bandwidth` > 0, the z-score uses the mean/std of normal slices at that
    level (local-linear kernel regression over position, shrunk to the global pair).
    Off by default: with 4 normal subjects it lost on the BraTS folds (docs/quality.md).
    Through-plane context (`context_radius` > 0, slices of one volume only): a slice's
    score is raised to at least a neighbouring slice's score minus `context_decay` per
    slice of distance (`slice_context`), so the thin top and bottom edges of a lesion
    inherit the evidence of its body next door; a score is never lowered, so an isolated
    lesion keeps its own score. Volume score = the same ranking over slice scores.
 6. Pixel map (heatmaps, pixel AUROC, Dice; model.pixelmap) = the calibrated residual
    (`pixel_calibration`, plus 3b) box-smoothed, plus optionally the upsampled
    discriminator evidence, a grey-scale closing and an edge-preserving guided filter;
    then the slice gate (`slice_gate`): maps of slices whose ranked score is low are
    lowered whole, using the scores with through-plane context when `pixel_slice_context`
    (applied per scan by `gate_maps`, after `slice_context`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from .appearance import appearance_evidence, calibrated, fit_appearance
from .features import encoder_features, feature_evidence, fit_features
from .lesion import fit_lesion_shape, shape_evidence
from .losses import RankConfig
from .masks import complementary_masks, hideable
from .pixelmap import box_mean, pixel_map
from .priors import fit_prior_stats, on_volume, position_stats, prior_evidence, raw_priors
from .ranking import ranked_sum

_EPS = 1e-6


@dataclass(frozen=True)
class ScoringConfig:
    grid_cell: int = 16  # complementary-mask square side (pixels)
    grid_period: int = 2  # M = period**2 complementary masks; 0 = no masking (ablation)
    residual: str = "abs"  # "abs" | "positive"
    calibration: str = "position"  # "none" | "global" | "position" (patch / image scores)
    pixel_calibration: str = "global"  # same choices, for the per-pixel map only
    pixel_smooth: int = 3  # odd box size smoothing the calibrated per-pixel map (1 = none)
    pixel_close: int = (
        0  # odd size of a grey-scale closing of the pixel map (fills low holes inside high regions; 0 = off)
    )
    pixel_disc_weight: float | None = (
        None  # weight of the (coarse, upsampled) discriminator evidence in the pixel map; None = disc_weight
    )
    pixel_guide: int = (
        0  # radius of the guided filter (input image as guide) on the pixel map; 0 = off (model.pixelmap)
    )
    pixel_guide_eps: float = 0.1  # its edge threshold, in squared preprocessed-intensity units
    pixel_slice_weight: float = 0.0  # slice gate: the pixel map + this x min(slice z - pixel_slice_margin, 0) (0 = off)
    pixel_slice_margin: float = 2.0  # slice z-score below which a slice's whole map is lowered
    pixel_slice_context: bool = (
        False  # gate with the through-plane-context slice scores, per scan (`gate_maps`), not in score_images
    )
    rec_weight: float = 1.0
    disc_weight: float = 0.5
    disc_evidence: str = "logit"  # "logit": -D(x); "contrast": D(composite) - D(x), see step 4
    min_foreground: float = 0.25  # patch counts when >= this fraction is foreground
    patch_pool: str = "mean"  # patch evidence: "mean" of the calibrated residual, or "max" of its 3x3 mean
    stat_smooth: int = 0  # odd box size to smooth the per-position statistics (0 = off)
    stat_prior: float = 0.0  # > 0: per-position stats only where foreground, shrunk to global with this pseudo-count
    position_bandwidth: float = 0.0  # > 0: image score calibrated by axial position (kernel width, 0-1 units)
    position_prior: float = 5.0  # pseudo-slices shrinking the per-level image stats to the global pair
    intensity_weight: float = 0.0  # calibrated intensity-for-this-position evidence (model.priors)
    symmetry_weight: float = 0.0  # calibrated left-right asymmetry evidence, volumes only (model.priors)
    prior_smooth: int = 5  # odd box size smoothing the input before those two maps
    pixel_prior_scale: float = 1.0  # share of that evidence in the per-pixel map (1 = as in the patch scores)
    appearance_weight: float = (
        0.0  # calibrated distance from the normal-appearance subspace, 2D images only (model.appearance)
    )
    appearance_components: int = 50  # principal components of that subspace
    feature_weight: float = (
        0.0  # calibrated nearest-normal-patch distance of encoder features, added to patch scores (model.features)
    )
    shape_weight: float = 0.0  # calibrated lesion-shape (ABCD) evidence added to 2D images' scores (model.lesion)
    context_radius: int = 0  # through-plane context: slices of distance up to this (0 = off, older checkpoints)
    context_decay: float = 0.25  # z-score units subtracted per slice of distance
    rank: RankConfig = field(default_factory=lambda: RankConfig(k=4, decay=0.8, floor=0.0))
    volume_rank: RankConfig = field(default_factory=lambda: RankConfig(k=3, decay=0.8, floor=0.0))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScoringConfig:
        d = dict(d)
        for key in ("rank", "volume_rank"):
            if isinstance(d.get(key), dict):
                d[key] = RankConfig(**d[key])
        return cls(**d)


@dataclass
class ScoreStats:
    """Normal-data statistics stored in the checkpoint. Pixel stats: (1, 1, H, W)."""

    pix_mean: torch.Tensor
    pix_std: torch.Tensor
    rec_mean: float = 0.0
    rec_std: float = 1.0
    disc_mean: float = 0.0
    disc_std: float = 1.0
    image_mean: float = 0.0
    image_std: float = 1.0
    level_mean: torch.Tensor | None = None  # (LEVELS,) image-score mean at positions linspace(0, 1, LEVELS)
    level_std: torch.Tensor | None = None
    int_mean: torch.Tensor | None = None  # (1, 1, H, W) normal smoothed intensity per position (model.priors)
    int_std: torch.Tensor | None = None
    sym_mean: torch.Tensor | None = None  # (1, 1, H, W) normal left-right difference per position
    sym_std: torch.Tensor | None = None
    app_mean: torch.Tensor | None = None  # (1, C, H, W) mean normal 2D image (model.appearance)
    app_basis: torch.Tensor | None = None  # (k, C*H*W) its leading principal components
    app_cal_mean: torch.Tensor | None = None  # (1, 1, H, W) held-out subspace error of normal images
    app_cal_std: torch.Tensor | None = None
    shape_mean: torch.Tensor | None = None  # (D,) normal lesion descriptors' mean (model.lesion)
    shape_std: torch.Tensor | None = None
    shape_bank: torch.Tensor | None = None  # (N, D) z-scored normal lesion descriptors
    shape_cal: torch.Tensor | None = None  # (2,) mean, std of their leave-one-out kNN distance
    feat_mean: torch.Tensor | None = None  # (F,) normal patches' encoder features: mean (model.features)
    feat_std: torch.Tensor | None = None
    feat_bank: torch.Tensor | None = None  # (N, F) z-scored features of sampled normal patches
    feat_cal: torch.Tensor | None = None  # (2,) mean, std of held-out normal patches' nearest distance

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> ScoreStats:
        return cls(**d)

    @classmethod
    def identity(cls, height: int, width: int) -> ScoreStats:
        return cls(torch.zeros(1, 1, height, width), torch.ones(1, 1, height, width))


LEVELS = 21  # axial positions 0, 0.05, ..., 1 at which per-level image statistics are stored


def level_table(
    raw: torch.Tensor, pos: torch.Tensor, bandwidth: float, prior: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal image scores raw (N,) at positions pos (N,) -> mean, std (LEVELS,).

    Local-linear Gaussian-kernel regression (unbiased at the lowest and highest slices,
    where a plain kernel average is pulled towards the middle), then shrunk to the
    global mean/variance with `prior` pseudo-slices where few normal slices are near.
    """
    raw, pos = raw.double(), pos.double()
    grid = torch.linspace(0, 1, LEVELS, dtype=torch.float64)
    d = pos[None] - grid[:, None]  # (LEVELS, N)
    w = torch.exp(-0.5 * (d / bandwidth) ** 2)
    s0, s1, s2 = w.sum(1), (w * d).sum(1), (w * d * d).sum(1)
    t0, t1 = (w * raw).sum(1), (w * d * raw).sum(1)
    det = s0 * s2 - s1 * s1
    ok = det > 1e-9 * s0.clamp_min(1e-12) ** 2
    level = torch.where(ok, (s2 * t0 - s1 * t1) / det.where(ok, torch.ones_like(det)), t0 / s0.clamp_min(1e-12))
    slope = torch.where(ok, (s0 * t1 - s1 * t0) / det.where(ok, torch.ones_like(det)), torch.zeros_like(det))
    g_mean = raw.mean()
    g_var = raw.var() if raw.numel() > 1 else torch.tensor(1.0, dtype=torch.float64)
    mean = (s0 * level + prior * g_mean) / (s0 + prior)
    fit = level[:, None] + slope[:, None] * d  # the local line at every normal slice
    var = ((w * (raw[None] - fit) ** 2).sum(1) + prior * g_var) / (s0 + prior)
    return mean.float(), var.sqrt().clamp_min(_EPS).float()


def normalise_image(raw: torch.Tensor, stats: ScoreStats | None, position: torch.Tensor | None) -> torch.Tensor:
    """Raw ranked image scores (B,) -> z-scores against normal images (at the same axial level
    where `position` is finite and the stats have a level table)."""
    if stats is None:
        return raw
    mean = torch.full_like(raw, stats.image_mean)
    std = torch.full_like(raw, stats.image_std)
    if position is not None and stats.level_mean is not None:
        pos = position.to(raw).reshape(-1)
        known = torch.isfinite(pos)
        if known.any():
            t = pos[known].clamp(0, 1) * (LEVELS - 1)
            lo = t.floor().long().clamp(max=LEVELS - 2)
            frac = t - lo
            lm, ls = stats.level_mean.to(raw), stats.level_std.to(raw)
            mean[known] = lm[lo] * (1 - frac) + lm[lo + 1] * frac
            std[known] = ls[lo] * (1 - frac) + ls[lo + 1] * frac
    return (raw - mean) / std


@dataclass
class ScoreOutput:
    patch_scores: torch.Tensor  # (B, h, w) combined, normalised
    rec: torch.Tensor  # (B, h, w) reconstruction component (z)
    disc: torch.Tensor  # (B, h, w) discriminator component (z)
    valid: torch.Tensor  # (B, h, w) bool, foreground patches
    image_scores: torch.Tensor  # (B,) normalised against normal images
    pixel_map: torch.Tensor  # (B, H, W) per-pixel anomaly map for heatmaps / pixel AUROC
    composite: torch.Tensor  # (B, C, H, W) masked reconstruction


@torch.no_grad()
def masked_composite(recon: nn.Module, x: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """x: (B, C, H, W) -> the test-time reconstruction (B, C, H, W) float32: every foreground
    pixel taken from the reconstruction made while the complementary grid masks hid it."""
    b, c, h, w = x.shape
    if cfg.grid_period == 0:  # "no masking" ablation: plain autoencoding, nothing hidden
        return recon(x, torch.zeros(b, 1, h, w, dtype=x.dtype, device=x.device)).float()
    masks = complementary_masks(h, w, cfg.grid_cell, cfg.grid_period).to(x)  # (M, 1, H, W)
    m = masks.shape[0]
    hidden = masks[None] * hideable(x)[:, None]  # (B, M, 1, H, W): background never hidden
    xr = x.repeat_interleave(m, 0)  # (B*M, C, H, W)
    rec = recon(xr, hidden.reshape(b * m, 1, h, w)).float().view(b, m, c, h, w)
    # Each pixel from the reconstruction made while it was hidden; background stays as is.
    return (rec * hidden).sum(1) + (1.0 - hidden.sum(1)) * x.float()


@torch.no_grad()
def raw_maps(
    recon: nn.Module, disc: nn.Module, x: torch.Tensor, cfg: ScoringConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: (B, C, H, W) -> residual (B, 1, H, W), disc evidence (B, h, w), composite (B, C, H, W)."""
    composite = masked_composite(recon, x, cfg)
    diff = x.float() - composite
    if cfg.residual == "abs":
        residual = diff.abs().mean(1, keepdim=True)
    elif cfg.residual == "positive":
        residual = diff.clamp_min(0).mean(1, keepdim=True)
    else:
        raise ValueError(f"unknown residual {cfg.residual!r} (use 'abs' or 'positive')")
    logits = disc(x).float()[:, 0]  # (B, h, w)
    if cfg.disc_evidence not in ("logit", "contrast"):
        raise ValueError(f"unknown disc_evidence {cfg.disc_evidence!r} (use 'logit' or 'contrast')")
    if cfg.disc_evidence == "contrast" and cfg.disc_weight != 0:  # less real than its own normal reconstruction
        # (with disc_weight 0 `combine` zeroes this evidence, so the second pass is skipped)
        evidence = disc(composite.to(x.dtype)).float()[:, 0] - logits
    else:
        evidence = -logits
    return residual, evidence, composite


def _calibrate(residual: torch.Tensor, stats: ScoreStats | None, how: str) -> torch.Tensor:
    if how not in ("none", "global", "position"):
        raise ValueError(f"unknown calibration {how!r}")
    if stats is None or how == "none":
        return residual
    mu, sd = stats.pix_mean.to(residual), stats.pix_std.to(residual)
    if how == "global":
        mu, sd = mu.mean(), sd.mean()
    return (residual - mu) / sd


def _patch_valid(foreground: torch.Tensor | None, shape: tuple[int, ...], patch: int, cfg: ScoringConfig):
    if foreground is None:
        return torch.ones(shape, dtype=torch.bool)
    frac = F.avg_pool2d(foreground.float(), patch)[:, 0]  # (B, h, w)
    return frac >= cfg.min_foreground


def combine(
    residual: torch.Tensor,
    evidence: torch.Tensor,
    foreground: torch.Tensor | None,
    stats: ScoreStats | None,
    cfg: ScoringConfig,
    prior: torch.Tensor | None = None,
    features: torch.Tensor | None = None,
    guide: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw maps -> (patch, rec_z, disc_z, valid, raw image score, pixel map).

    residual: (B, 1, H, W); evidence: (B, h, w); foreground: (B, 1, H, W) or None;
    prior: (B, 1, H, W) calibrated anatomical evidence (model.priors) added to the
    calibrated residual, or None; features: (B, h, w) weighted feature evidence
    (model.features) added to the patch scores, or None; guide: (B, C, H, W) the input, for
    the pixel map's guided filter (model.pixelmap), or None.
    """
    patch = residual.shape[-1] // evidence.shape[-1]
    res_cal = _calibrate(residual, stats, cfg.calibration)
    cal = res_cal if prior is None else res_cal + prior
    if cfg.patch_pool == "mean":
        rec = F.avg_pool2d(cal, patch)[:, 0]  # (B, h, w)
    elif cfg.patch_pool == "max":
        local = F.avg_pool2d(cal, 3, stride=1, padding=1, count_include_pad=False)  # (B, 1, H, W)
        rec = F.max_pool2d(local, patch)[:, 0]  # (B, h, w)
    else:
        raise ValueError(f"unknown patch_pool {cfg.patch_pool!r} (use 'mean' or 'max')")
    s = stats
    rec_z = (rec - (s.rec_mean if s else 0.0)) / (s.rec_std if s else 1.0)
    disc_z = (evidence - (s.disc_mean if s else 0.0)) / (s.disc_std if s else 1.0)
    if cfg.disc_weight == 0:
        disc_z = torch.zeros_like(disc_z)
    scores = cfg.rec_weight * rec_z + cfg.disc_weight * disc_z
    if features is not None:
        scores = scores + features.to(scores)
    valid = _patch_valid(foreground, tuple(scores.shape), patch, cfg).to(scores.device)
    image_raw = ranked_sum(scores.flatten(1), cfg.rank.k, cfg.rank.decay, cfg.rank.floor, valid.flatten(1))
    pcal = res_cal if cfg.pixel_calibration == cfg.calibration else _calibrate(residual, stats, cfg.pixel_calibration)
    if prior is not None and cfg.pixel_prior_scale:
        pcal = pcal + cfg.pixel_prior_scale * prior
    pixel = pixel_map(pcal, disc_z, guide, foreground, s.rec_mean if s else 0.0, s.rec_std if s else 1.0, cfg)
    return scores, rec_z, disc_z, valid, image_raw, pixel


def _uses_priors(cfg: ScoringConfig) -> bool:
    return cfg.intensity_weight > 0 or cfg.symmetry_weight > 0


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a if b is None else (b if a is None else a + b)


def _prior(x, foreground, position, stats: ScoreStats | None, cfg: ScoringConfig) -> torch.Tensor | None:
    """Evidence from the input itself: anatomy (volumes) plus appearance (2D images); None when
    off or the statistics lack it (older checkpoints, or no such data in training)."""
    app = appearance_evidence(x, position, stats, cfg.appearance_weight)
    if not _uses_priors(cfg) or stats is None or (stats.int_mean is None and stats.sym_mean is None):
        return app
    raw = raw_priors(x, foreground, position, cfg.prior_smooth)
    return _add(prior_evidence(raw, stats, cfg.intensity_weight, cfg.symmetry_weight, cfg.residual), app)


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
) -> ScoreOutput:
    """x: (B, C, H, W) preprocessed slices; foreground: (B, 1, H, W); position: (B,) relative
    axial position in the volume (NaN = unknown, e.g. a 2D image) -> ScoreOutput."""
    residual, evidence, composite = raw_maps(recon, disc, x, cfg)
    prior = _prior(x, foreground, position, stats, cfg)
    feats = feature_evidence(recon, x, tuple(evidence.shape[-2:]), stats, cfg.feature_weight)
    scores, rec_z, disc_z, valid, image_raw, pixel = combine(
        residual, evidence, foreground, stats, cfg, prior, feats, x
    )
    image = normalise_image(image_raw, stats, position)
    shape = shape_evidence(x, foreground, position, stats, cfg.shape_weight)
    if shape is not None:  # image-level: the lesion's outline, not any one patch
        image = image + shape.to(image.device, image.dtype)
    if not cfg.pixel_slice_context:  # else the caller gates with the scan's context scores (gate_maps)
        pixel = slice_gate(pixel, image, cfg)
    return ScoreOutput(scores, rec_z, disc_z, valid, image, pixel, composite)


def slice_gate(pixel: torch.Tensor, slice_scores: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """Slice gate on pixel maps (B, H, W): the ranked slice score decides which slices' maps
    count; a slice scoring below `pixel_slice_margin` has its whole map lowered by
    `pixel_slice_weight` x the shortfall (scores untouched; weight 0 = off)."""
    if not cfg.pixel_slice_weight:
        return pixel
    s = torch.as_tensor(slice_scores).to(pixel.device, pixel.dtype).reshape(-1)
    return pixel + cfg.pixel_slice_weight * (s - cfg.pixel_slice_margin).clamp(max=0)[:, None, None]


def gate_maps(pixel: torch.Tensor, context_scores: torch.Tensor, cfg: ScoringConfig) -> torch.Tensor:
    """Pixel maps (S, H, W) of one scan and its slice scores after `slice_context` -> gated
    maps when `pixel_slice_context` (score_images left them ungated); unchanged otherwise."""
    return slice_gate(pixel, context_scores, cfg) if cfg.pixel_slice_context else pixel


def slice_context(slice_scores: torch.Tensor, slice_index, cfg: ScoringConfig) -> torch.Tensor:
    """Slice scores (S,) of one volume and their slice numbers (S,) -> scores with
    through-plane context: max over slices j within `context_radius` of
    (score_j - context_decay * |index_j - index_i|), a grey-scale dilation along the scan
    axis with a cone. Never lowers a score. Off (returned unchanged) when the radius is 0
    or the scan has one slice; non-finite scores are left out as neighbours."""
    s = torch.as_tensor(slice_scores).float().reshape(-1)
    if cfg.context_radius <= 0 or s.numel() < 2:
        return s
    idx = torch.as_tensor(slice_index).reshape(-1).to(torch.float32)
    if idx.numel() != s.numel():
        raise ValueError(f"{s.numel()} slice scores but {idx.numel()} slice indices")
    dist = (idx[:, None] - idx[None, :]).abs()  # (S, S)
    near = (dist <= cfg.context_radius) & torch.isfinite(s)[None, :]
    cand = torch.where(near, s[None, :] - cfg.context_decay * dist, torch.full_like(dist, float("-inf")))
    return torch.maximum(s, cand.max(1).values)


def volume_score(slice_scores: torch.Tensor, cfg: ScoringConfig) -> float:
    """slice_scores: (S,) -> rank-weighted top slices of one volume."""
    r = cfg.volume_rank
    return float(ranked_sum(slice_scores.reshape(1, -1).float(), r.k, r.decay, r.floor)[0])


def _robust_std(t: torch.Tensor) -> float:
    return max(float(t.std()), _EPS) if t.numel() > 1 else 1.0


@torch.no_grad()
def fit_score_stats(recon: nn.Module, disc: nn.Module, batches, cfg: ScoringConfig) -> ScoreStats:
    """Fit normalisation statistics on normal validation data.

    batches: iterable of (x: (B, C, H, W), foreground: (B, 1, H, W) or None[, position: (B,)]).
    """
    res, ev, fgs, poss, priors, flat, flat_fg, feats = [], [], [], [], [], [], [], []
    use_priors = _uses_priors(cfg)
    for x, fg, *rest in batches:
        r, e, _ = raw_maps(recon, disc, x, cfg)
        res.append(r.cpu())
        ev.append(e.cpu())
        if cfg.feature_weight > 0:
            feats.append(encoder_features(recon, x, tuple(e.shape[-2:])).cpu())
        fgs.append(fg.cpu() if fg is not None else torch.ones_like(r, dtype=torch.bool).cpu())
        pos = rest[0] if rest and rest[0] is not None else None
        poss.append(
            torch.full((len(x),), float("nan")) if pos is None else torch.as_tensor(pos).float().reshape(-1).cpu()
        )
        if use_priors:
            priors.append([t.cpu() for t in raw_priors(x, fg, poss[-1], cfg.prior_smooth)])
        if cfg.appearance_weight > 0 or cfg.shape_weight > 0:  # 2D images (unknown axial position)
            is_2d = ~on_volume(poss[-1], len(x), "cpu")
            flat.append(x[is_2d.to(x.device)].float().cpu())
            flat_fg.append(fgs[-1][is_2d])
    if not res:
        raise ValueError("fit_score_stats needs at least one batch of normal validation data")
    residual, evidence, fg = torch.cat(res), torch.cat(ev), torch.cat(fgs)
    raw = tuple(torch.cat(parts) for parts in zip(*priors)) if use_priors else None
    if cfg.stat_prior > 0:
        pix_mean, pix_std = position_stats(residual, fg.float(), cfg.stat_prior)
    else:
        pix_mean = residual.mean(0, keepdim=True)  # (1, 1, H, W)
        pix_std = residual.std(0, keepdim=True) if len(residual) > 1 else torch.ones_like(pix_mean)
        # Floor sigma at half its median over all positions (background included; see docs/quality.md).
        pix_std = pix_std.clamp_min(float(pix_std.median()) * 0.5 + _EPS)
    if cfg.stat_smooth > 1:  # few normal slices per position: average neighbouring positions
        pix_mean, pix_std = box_mean(pix_mean, cfg.stat_smooth), box_mean(pix_std, cfg.stat_smooth)
    stats = ScoreStats(pix_mean, pix_std, **(fit_prior_stats(*raw) if raw is not None else {}))
    prior = (
        prior_evidence(raw, stats, cfg.intensity_weight, cfg.symmetry_weight, cfg.residual) if raw is not None else None
    )
    position = torch.cat(poss)
    images_2d = torch.cat(flat) if flat else torch.empty(0)
    if cfg.shape_weight > 0 and len(images_2d):
        lesion_fg = torch.cat(flat_fg)
        if not bool(lesion_fg.all()):  # a lesion was segmented (image_foreground="dark"), not the whole image
            for key, value in fit_lesion_shape(images_2d, lesion_fg).items():
                setattr(stats, key, value)
    if cfg.appearance_weight > 0 and len(images_2d):
        app_stats, held_out = fit_appearance(images_2d, cfg.appearance_components)
        for key, value in app_stats.items():
            setattr(stats, key, value)
        if held_out is not None:  # these images' evidence as new normal images will show it
            full = torch.zeros_like(residual)
            full[~on_volume(position, len(position), "cpu")] = calibrated(held_out, stats, cfg.appearance_weight)
            prior = _add(prior, full)
    feat_ev = None
    if feats:
        patch = residual.shape[-1] // evidence.shape[-1]
        feat_stats, held_out = fit_features(torch.cat(feats), _patch_valid(fg, tuple(evidence.shape), patch, cfg))
        for key, value in feat_stats.items():
            setattr(stats, key, value)
        if held_out is not None:  # held-out evidence: what new normal images will show
            feat_ev = cfg.feature_weight * held_out
    _, rec_z, disc_z, valid, _, _ = combine(residual, evidence, fg, stats, cfg, prior, feat_ev)
    stats.rec_mean, stats.rec_std = float(rec_z[valid].mean()), _robust_std(rec_z[valid])
    stats.disc_mean, stats.disc_std = float(disc_z[valid].mean()), _robust_std(disc_z[valid])
    *_, image_raw, _ = combine(residual, evidence, fg, stats, cfg, prior, feat_ev)
    stats.image_mean, stats.image_std = float(image_raw.mean()), _robust_std(image_raw)
    known = torch.isfinite(position)
    if cfg.position_bandwidth > 0 and int(known.sum()) > 1:
        stats.level_mean, stats.level_std = level_table(
            image_raw[known], position[known], cfg.position_bandwidth, cfg.position_prior
        )
    return stats
