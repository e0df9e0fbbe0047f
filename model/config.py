"""The model's settings, defined once: plain frozen dataclasses with the real defaults.

`patchrank.pipeline.settings.TrainConfig` embeds them (pydantic validates their field types,
refuses unknown keys, and runs the checks below), presets in configs/ override them, and the
checkpoint stores them, so a notebook's `ScoringConfig()` is the detector `patchrank train` builds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from .losses import UNIFORM_RANK, RankConfig

_FORBID = {"extra": "forbid"}  # read by pydantic when a TrainConfig embeds these dataclasses


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


@dataclass(frozen=True)
class ScoringConfig:
    """How a preprocessed slice becomes patch, image and scan scores and a pixel map (model.scoring)."""

    __pydantic_config__ = _FORBID

    # masked reconstruction (the paper's part 1)
    grid_period: int = 2  # M = period^2 complementary test-time masks; 0 = no masking (ablation)
    grid_cell: int | None = None  # side of a complementary-mask square in pixels; None = image side // 8
    residual: Literal["abs", "positive"] = "positive"  # positive: only brighter than predicted counts (FLAIR)
    stat_prior: float = 8.0  # residual statistics per pixel position: foreground only, shrunk to global with this count
    rec_weight: float = 1.0  # weight of the reconstruction evidence in a patch score
    # PatchGAN evidence (the paper's part 2): D(reconstruction) - D(image), z-scored
    disc_weight: float = 0.5  # 0 = the discriminator only trains the reconstructor
    # ranking (the paper's part 3)
    min_foreground: float = 0.25  # a patch is ranked when at least this fraction of it is foreground
    rank: RankConfig = field(default_factory=lambda: RankConfig(k=8, decay=0.9))  # patches -> image score
    volume_rank: RankConfig = field(default_factory=lambda: RankConfig(k=3, decay=0.8))  # slices -> scan score
    # evidence terms added to the paper's method (model/evidence/)
    intensity_weight: float = 1.0  # intensity unusual for this position (slices of volumes)
    symmetry_weight: float = 2.0  # brighter than the mirror-image spot (slices of volumes, mid-sagittal at centre)
    prior_smooth: int = 9  # odd box size smoothing the input before those two maps
    appearance_weight: float = 4.0  # distance from the normal-appearance subspace (2D images)
    appearance_components: int = 50  # principal components of that subspace
    feature_weight: float = 0.0  # nearest-normal-patch distance of encoder features (patch level)
    shape_weight: float = 1.0  # lesion-shape (ABCD) distance from normal images (2D images with a dark lesion)
    context_radius: int = 6  # through-plane context: slices of distance up to this (0 = off)
    context_decay: float = 0.25  # z units taken off a neighbour's score per slice of distance
    # the per-pixel map (heatmaps, pixel AUROC, NIfTI maps)
    pixel_prior_scale: float = 0.25  # share of the intensity and symmetry evidence in the map
    pixel_smooth: int = 7  # odd box size smoothing the map (1 = none)
    pixel_close: int = 13  # odd size of a grey-scale closing (a dark core inside bright oedema takes its rim's score)
    pixel_guide: int = 6  # radius of a guided filter with the input as guide (the map follows lesion edges; 0 = off)
    pixel_guide_eps: float = 0.003  # its edge threshold in squared preprocessed-intensity units
    pixel_slice_weight: float = 0.5  # slice gate: a slice's map + weight x min(context slice score - margin, 0)
    pixel_slice_margin: float = 4.0

    def __post_init__(self) -> None:
        _check(0 <= self.grid_period <= 4, f"grid_period must be 0..4, got {self.grid_period}")
        _check(self.grid_cell is None or self.grid_cell >= 1, f"grid_cell must be >= 1, got {self.grid_cell}")
        for name in ("pixel_smooth", "prior_smooth", "pixel_close"):
            v = getattr(self, name)
            _check(0 <= v <= 31 and (v == 0 or v % 2 == 1), f"{name} must be odd (or 0) and <= 31, got {v}")
        _check(self.pixel_smooth >= 1 and self.prior_smooth >= 1, "pixel_smooth and prior_smooth must be >= 1")
        _check(0 <= self.min_foreground <= 1, f"min_foreground must be in [0, 1], got {self.min_foreground}")
        _check(0 <= self.pixel_guide <= 16, f"pixel_guide must be 0..16, got {self.pixel_guide}")
        _check(self.pixel_guide_eps > 0, "pixel_guide_eps must be > 0")
        _check(1 <= self.appearance_components <= 512, "appearance_components must be 1..512")
        _check(0 <= self.context_radius <= 64, f"context_radius must be 0..64, got {self.context_radius}")
        for name in ("stat_prior", "rec_weight", "disc_weight", "intensity_weight", "symmetry_weight",
                     "appearance_weight", "feature_weight", "shape_weight", "context_decay", "pixel_prior_scale",
                     "pixel_slice_weight"):  # fmt: skip
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    def cell(self, side: int) -> int:
        """The complementary-mask square side for images of this side."""
        return self.grid_cell or max(1, side // 8)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ScoringConfig:
        d = dict(d)
        for key in ("rank", "volume_rank"):
            if isinstance(d.get(key), dict):
                d[key] = RankConfig(**d[key])
        return cls(**d)


@dataclass(frozen=True)
class StepConfig:
    """Loss weights and switches of one training step (model.train_step); ablations flip the switches."""

    __pydantic_config__ = _FORBID

    masked_weight: float = 4.0  # extra L1 weight on hidden pixels
    adv_weight: float = 0.01  # the reconstructor's least-squares adversarial term relative to L1
    use_discriminator: bool = True  # False = "no discriminator" ablation
    use_masking: bool = True  # False = "no masking" ablation: plain autoencoding
    rank: RankConfig = UNIFORM_RANK  # rank weights of the per-patch losses; uniform = every patch counts the same

    def __post_init__(self) -> None:
        _check(self.masked_weight >= 0 and self.adv_weight >= 0, "masked_weight and adv_weight must be >= 0")
