"""Validated configuration (pydantic, extra="forbid"), loaded once at the edge.

The model's own settings (`ScoringConfig`, `StepConfig`) are defined once, as plain dataclasses in
model/config.py, and embedded here as they are: pydantic validates them, model/ receives them.
Presets (configs/*.json) are partial TrainConfigs layered over these defaults.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from patchrank.model.config import ScoringConfig, StepConfig


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
        description="2D images: 'all' pixels are foreground, or the 'dark' lesion "
        "(Otsu on luminance inside the central disc, dilated), so only lesion patches are ranked",
    )
    image_hair: bool = Field(
        False,
        description="2D images: replace thin dark lines (hairs: a morphological black-hat of the luminance) "
        "by the image's grey closing before anything else; images over 256 px are analysed on a resized copy",
    )

    pose: bool = Field(
        False,
        description="volumes: resample each into the head pose of the training volumes (pipeline.data.pose) "
        "before the rest; patch coordinates and maps still refer to the input's own grid",
    )
    pose_target: tuple[float, float, float, float, float] | None = Field(
        None,
        description="the training volumes' mean pose (yaw, roll degrees; reference point - grid centre, x y z mm), "
        "fitted by training when `pose` is on",
    )

    def saved(self) -> dict:
        """What a checkpoint stores; without the pose settings while pose is off (as before they existed)."""
        d = self.model_dump()
        if not self.image_hair:
            d.pop("image_hair")
        if not self.pose:
            d.pop("pose"), d.pop("pose_target")
        elif d["pose_target"] is not None:
            d["pose_target"] = list(d["pose_target"])
        return d

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


class TrainConfig(Strict):
    """Everything `patchrank train` needs besides paths."""

    epochs: int = Field(12, ge=1, description="adversarial epochs")
    batch_size: int = Field(16, ge=1, description="per worker; global batch = batch_size x workers")
    lr_g: float = Field(1e-3, gt=0)
    lr_d: float = Field(1e-3, gt=0)
    critic_epochs: int = Field(
        4,
        ge=0,
        description="epochs after the adversarial ones that train only the discriminator against the frozen "
        "reconstructor's test-time composites (model.train_step.critic_step); 0 = none",
    )
    lr_critic: float = Field(2e-4, gt=0, description="the discriminator's learning rate in the critic epochs")
    seed: int = 0
    ensemble: int = Field(
        1, ge=1, le=16, description="trainings whose scores are averaged, with seeds seed .. seed + ensemble - 1"
    )
    val_fraction: float = Field(0.2, gt=0, lt=1, description="fraction of training subjects held out")
    max_val_slices: int = Field(512, ge=8, description="normal slices per set (seeded sample) for the statistics")
    stats_every: int = Field(4, ge=1, description="refit the score statistics every N epochs (and first and last)")
    modality: str | None = Field(
        None, description="what the model is trained on (e.g. flair, rgb); scoring keeps only such scans"
    )
    preprocess: PreprocessConfig = PreprocessConfig()
    arch: ArchConfig = ArchConfig()
    masks: MaskConfig = MaskConfig()
    loss: StepConfig = StepConfig()
    scoring: ScoringConfig = ScoringConfig()

    def saved_scoring(self) -> ScoringConfig:
        """The scoring settings as a checkpoint stores them (mask cell resolved for this image size)."""
        return replace(self.scoring, grid_cell=self.scoring.cell(self.preprocess.image_size))


def setting_names(model: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every setting a config file may give, dotted (e.g. preprocess.image_size)."""
    import dataclasses
    import typing

    out = []
    fields = (
        typing.get_type_hints(model)
        if dataclasses.is_dataclass(model)
        else {k: f.annotation for k, f in model.model_fields.items()}
    )
    for name, kind in fields.items():
        nested = isinstance(kind, type) and (issubclass(kind, BaseModel) or dataclasses.is_dataclass(kind))
        out += setting_names(kind, f"{prefix}{name}.") if nested else [prefix + name]
    return out


PRESETS = ("brain-mri", "dermoscopy")


def preset_overrides(name: str) -> dict:
    """A preset's partial TrainConfig (configs/<name>.json, installed as patchrank.configs)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return json.loads(resources.files("patchrank.configs").joinpath(f"{name}.json").read_text())


def read_config_file(path: str) -> dict:
    """A --config file: a JSON object of TrainConfig settings (any subset); a one-line ValueError otherwise."""
    try:
        with open(path) as f:
            over = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: file not found") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(over, dict):
        raise ValueError(f'--config {path}: expected a JSON object of settings, e.g. {{"epochs": 20}}')
    return over


def merge(base: dict, over: dict) -> dict:
    """Nested dict update: `over`'s leaves replace `base`'s."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_config(preset: str, *layers: dict) -> TrainConfig:
    """Defaults <- preset <- each layer (a --config file, then command-line flags)."""
    d = preset_overrides(preset)
    for layer in layers:
        d = merge(d, layer)
    return TrainConfig.model_validate(d)
