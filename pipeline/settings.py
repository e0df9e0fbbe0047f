"""Validated configuration (pydantic, extra="forbid"), loaded once at the edge.

model/ never sees these objects: `to_model_kwargs`-style helpers turn them into the
plain keyword arguments and dataclasses that model/ takes.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from patchrank.model.losses import UNIFORM_RANK, RankConfig
from patchrank.model.scoring import ScoringConfig
from patchrank.model.train_step import StepConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessConfig(Strict):
    """The one preprocessing recipe; stored verbatim in every checkpoint."""

    image_size: int = Field(128, ge=16, le=1024, description="square model input side, multiple of 16")
    channels: int = Field(1, ge=1, le=8)
    clip: float = Field(5.0, gt=0, description="z-score clip for volumes, then divided by clip -> [-1, 1]")
    min_area_fraction: float = Field(
        0.15, ge=0, le=1, description="keep slices whose foreground area >= this x the largest slice's"
    )
    max_voxels: int = Field(512 * 512 * 512, ge=1, description="refuse volumes larger than this")
    image_foreground: Literal["all", "dark"] = Field(
        "all",
        description="2D images: 'all' pixels, or the 'dark' lesion (Otsu on luminance inside the central disc, dilated) so only lesion patches are ranked",
    )

    @model_validator(mode="after")
    def _multiple_of_16(self) -> PreprocessConfig:
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        return self


class ArchConfig(Strict):
    base_channels: int = Field(8, ge=4, le=256)
    depth: int = Field(4, ge=1, le=6)
    disc_channels: int = Field(16, ge=4, le=512)
    disc_layers: int = Field(3, ge=1, le=5)


class MaskConfig(Strict):
    min_boxes: int = Field(1, ge=1)
    max_boxes: int = Field(4, ge=1)
    min_size: float = Field(0.08, gt=0, le=1)
    max_size: float = Field(0.25, gt=0, le=1)
    grid_prob: float = Field(0.5, ge=0, le=1)


class RankSettings(Strict):
    k: int = Field(ge=1)
    decay: float = Field(gt=0, le=1)
    floor: float = Field(0.0, ge=0)

    def to_model(self) -> RankConfig:
        return RankConfig(k=self.k, decay=self.decay, floor=self.floor)


class LossConfig(Strict):
    masked_weight: float = Field(4.0, ge=0)
    adv_weight: float = Field(
        0.01,
        ge=0,
        description="generator's adversarial term relative to L1 (0.01: best Dice over three BraTS training seeds at equal slice metrics vs 0.05, docs/quality.md eighth pass)",
    )
    adv_loss: Literal["lsgan", "bce"] = "lsgan"
    use_discriminator: bool = True
    use_masking: bool = True
    rank: RankSettings = Field(
        RankSettings(**asdict(UNIFORM_RANK)),
        description="rank weights of the per-patch training loss. Default: uniform (every patch counts the same). The design's top-k emphasis (k=16, decay 0.95, floor 1 until the ninth pass) cost pixel AUROC 0.002 and small-lesion AUROC 0.005 over five BraTS training seeds (docs/quality.md ninth pass); the ranking that pays is the scores' (scoring.rank)",
    )

    def to_model(self) -> StepConfig:
        return StepConfig(
            masked_weight=self.masked_weight,
            adv_weight=self.adv_weight,
            adv_loss=self.adv_loss,
            use_discriminator=self.use_discriminator,
            rank=self.rank.to_model(),
        )


class ScoringSettings(Strict):
    grid_period: int = Field(2, ge=0, le=4, description="0 = no masking at test time")
    grid_cell: int | None = Field(None, ge=1, description="default: image_size // 8")
    residual: Literal["abs", "positive"] = Field(
        "positive", description="positive: only brighter-than-normal counts (FLAIR lesions); abs for RGB skin"
    )
    calibration: Literal["none", "global", "position"] = "position"
    pixel_calibration: Literal["none", "global", "position"] = Field(
        "position", description="calibration of the per-pixel map (heatmaps, pixel AUROC)"
    )
    pixel_smooth: int = Field(
        7,
        ge=1,
        le=31,
        description="odd box size smoothing the per-pixel map (1 = none; 7 with the guided filter measured best on the BraTS folds, docs/quality.md seventh pass)",
    )
    pixel_close: int = Field(
        13,
        ge=0,
        le=31,
        description="odd size of a grey-scale closing of the per-pixel map: low holes inside high regions (a dark tumour core inside bright oedema) take their rim's score (measured on the BraTS folds, docs/quality.md fifth pass; 0 = off)",
    )
    pixel_disc_weight: float | None = Field(
        0.0, ge=0, description="discriminator evidence in the per-pixel map (coarse, 8-px cells); None = disc_weight"
    )
    pixel_guide: int = Field(
        6,
        ge=0,
        le=16,
        description="radius of a guided filter on the per-pixel map with the input image as guide: the map follows the image's edges (a lesion's border) instead of the smoothing's blur (BraTS folds: Dice 0.812 -> 0.842, pixel AUROC 0.973 -> 0.979; docs/quality.md seventh pass); 0 = off",
    )
    pixel_slice_weight: float = Field(
        0.5,
        ge=0,
        description="slice gate on the per-pixel map: every pixel of a slice whose score is below pixel_slice_margin is lowered by this x the shortfall, so the ranked slice evidence decides which slices' maps count in the heatmaps and pixel metrics (0 = off; docs/quality.md tenth pass)",
    )
    pixel_slice_margin: float = Field(
        4.0,
        description="slice z-score under which the slice gate lowers a slice's map (4 with the context scores: pixel AUROC +0.0028 and Dice +0.0012, up on each of five BraTS training seeds, vs the ninth pass's per-slice gate at 1, docs/quality.md tenth pass)",
    )
    pixel_slice_context: bool = Field(
        True,
        description="gate with the slice scores after through-plane context (context_radius), per scan: the score the slice metrics are measured on, so a lesion's thin edge slices keep their maps; false = each slice's own score",
    )
    pixel_guide_eps: float = Field(
        0.003,
        gt=0,
        description="the guided filter's edge threshold in squared preprocessed-intensity units (smaller = follows weaker edges)",
    )
    rec_weight: float = Field(1.0, ge=0)
    disc_weight: float = Field(
        0.5,
        ge=0,
        description="weight of the discriminator's patch evidence in the patch scores (0 = the discriminator only trains the reconstructor). With the critic phase (critic_epochs) its contrast evidence pays on BraTS over three training seeds; without it, it cost slice AUROC (docs/quality.md seventh and eighth passes)",
    )
    disc_evidence: Literal["logit", "contrast"] = Field(
        "contrast",
        description="discriminator evidence per patch: 'contrast' = D(reconstruction) - D(image), how much less real the patch looks than its own normal reconstruction (docs/quality.md sixth pass); 'logit' = -D(image)",
    )
    min_foreground: float = Field(0.25, ge=0, le=1)
    patch_pool: Literal["mean", "max"] = "mean"
    stat_smooth: int = Field(0, ge=0, le=15, description="box size smoothing the per-position statistics (0 = off)")
    stat_prior: float = Field(
        8.0,
        ge=0,
        description="> 0: per-position stats counted inside the foreground only, shrunk to global with this pseudo-count",
    )
    position_bandwidth: float = Field(
        0.0,
        ge=0,
        le=1,
        description="> 0: image scores calibrated against normal slices at the same relative axial level (kernel width); 0 = one global pair (default: measured worse on BraTS folds, docs/quality.md)",
    )
    position_prior: float = Field(
        5.0, ge=0, description="pseudo-slices shrinking the per-level image statistics to the global ones"
    )
    intensity_weight: float = Field(
        1.0,
        ge=0,
        description="weight of 'intensity unusual for this position in normal slices' evidence (model.priors; 0 = off)",
    )
    symmetry_weight: float = Field(
        2.0,
        ge=0,
        description="weight of left-right asymmetry evidence; slices of volumes only, assumes the mid-sagittal plane at the image centre as in atlas-registered data such as BraTS (0 = off)",
    )
    pixel_prior_scale: float = Field(
        0.25,
        ge=0,
        description="share of the intensity and symmetry evidence in the per-pixel map (1 = as in the patch scores; 0.25 measured best for pixel AUROC with 11-px smoothing, docs/quality.md fourth pass)",
    )
    prior_smooth: int = Field(
        9, ge=1, le=31, description="odd box size smoothing the input before the intensity and symmetry maps"
    )
    appearance_weight: float = Field(
        4.0,
        ge=0,
        description="weight of 'unlike the normal-appearance subspace' evidence (model.appearance: held-out-calibrated error of the top principal components of the normal images); 2D images only, slices of volumes get the anatomical evidence instead (0 = off)",
    )
    appearance_components: int = Field(
        50, ge=1, le=512, description="principal components of the normal-appearance subspace"
    )
    feature_weight: float = Field(
        0.0,
        ge=0,
        description="weight of feature evidence (model.features: distance of a patch's encoder features to the nearest normal patch's, calibrated) in the patch scores (0 = off; the dermoscopy configuration uses it, docs/quality.md sixth pass)",
    )
    shape_weight: float = Field(
        1.0,
        ge=0,
        description="weight of lesion-shape evidence (model.lesion: area, colour spread, border irregularity and asymmetry of the dark lesion, kNN distance from normal images' descriptors, calibrated; measured on the ISIC folds, docs/quality.md fifth and sixth passes); 2D images with image_foreground='dark' only (0 = off)",
    )
    context_radius: int = Field(
        6,
        ge=0,
        le=64,
        description="through-plane context for volumes: a slice's score is at least a neighbouring slice's score minus context_decay per slice of distance, up to this many slices away (0 = off; slices scored independently)",
    )
    context_decay: float = Field(
        0.25,
        ge=0,
        description="z-score units taken off a neighbour's score per slice of distance (through-plane context)",
    )
    rank: RankSettings = RankSettings(k=8, decay=0.9)
    volume_rank: RankSettings = RankSettings(k=3, decay=0.8)

    @model_validator(mode="after")
    def _odd_smoothing(self) -> ScoringSettings:
        for name in ("pixel_smooth", "prior_smooth", "pixel_close"):
            if getattr(self, name) % 2 == 0 and getattr(self, name) > 0:
                raise ValueError(f"{name} must be odd, got {getattr(self, name)}")
        return self

    def to_model(self, image_size: int) -> ScoringConfig:
        return ScoringConfig(
            grid_cell=self.grid_cell or max(1, image_size // 8),
            grid_period=self.grid_period,
            residual=self.residual,
            calibration=self.calibration,
            pixel_calibration=self.pixel_calibration,
            pixel_smooth=self.pixel_smooth,
            pixel_close=self.pixel_close,
            pixel_disc_weight=self.pixel_disc_weight,
            pixel_guide=self.pixel_guide,
            pixel_guide_eps=self.pixel_guide_eps,
            pixel_slice_weight=self.pixel_slice_weight,
            pixel_slice_margin=self.pixel_slice_margin,
            pixel_slice_context=self.pixel_slice_context,
            rec_weight=self.rec_weight,
            disc_weight=self.disc_weight,
            disc_evidence=self.disc_evidence,
            min_foreground=self.min_foreground,
            patch_pool=self.patch_pool,
            stat_smooth=self.stat_smooth,
            stat_prior=self.stat_prior,
            position_bandwidth=self.position_bandwidth,
            position_prior=self.position_prior,
            intensity_weight=self.intensity_weight,
            symmetry_weight=self.symmetry_weight,
            prior_smooth=self.prior_smooth,
            pixel_prior_scale=self.pixel_prior_scale,
            appearance_weight=self.appearance_weight,
            feature_weight=self.feature_weight,
            shape_weight=self.shape_weight,
            appearance_components=self.appearance_components,
            context_radius=self.context_radius,
            context_decay=self.context_decay,
            rank=self.rank.to_model(),
            volume_rank=self.volume_rank.to_model(),
        )


class TrainConfig(Strict):
    """Everything `patchrank train` needs besides paths."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(16, ge=1, description="per worker; global batch = batch_size x workers")
    lr_g: float = Field(1e-3, gt=0)
    lr_d: float = Field(1e-3, gt=0)
    critic_epochs: int = Field(
        4,
        ge=0,
        description="after the adversarial epochs, epochs that train only the discriminator against the frozen reconstructor's test-time composites (model.train_step.critic_step), so its score evidence matches the final reconstructor (0 = off; docs/quality.md eighth pass)",
    )
    lr_critic: float = Field(2e-4, gt=0, description="the discriminator's learning rate in the critic epochs")
    seed: int = 0
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="fraction of training subjects held out for score statistics"
    )
    augment_intensity: float = Field(
        0.0, ge=0, le=0.5, description="per-image random gain/offset of the foreground while training (0 = off)"
    )
    max_val_slices: int = Field(512, ge=8, description="cap per set (seeded sample) for the score statistics")
    stats_every: int = Field(
        4, ge=1, description="refit the score statistics every N epochs (and on the first and last)"
    )
    stats_from: Literal["val", "train+val"] = Field(
        "train+val", description="normal slices the score statistics are fitted on"
    )
    preprocess: PreprocessConfig = PreprocessConfig()
    arch: ArchConfig = ArchConfig()
    masks: MaskConfig = MaskConfig()
    loss: LossConfig = LossConfig()
    scoring: ScoringSettings = ScoringSettings()
