"""Checkpoint format upgrades: an older payload -> the current format, explicitly.

Format 1 (up to patchrank 0.1.0) stored the scoring settings as a flat dict whose missing keys meant
that version's model defaults, including options since measured and removed (docs/decisions.md),
and the statistics as one flat dict. Format 2 stores `model.config.ScoringConfig` and
`ScoreStats` with one state per evidence term. Format 3 is format 2 plus an ensemble's further members
(written only for ensembles, so that readers of format 2 refuse them). The content hash (`model_version`) is
checked on the payload as it was saved, so an upgraded checkpoint keeps its version and its results keep their key.
"""

from __future__ import annotations

FORMAT_1, FORMAT_2 = "patchrank-ckpt/1", "patchrank-ckpt/2"
FORMAT_3 = "patchrank-ckpt/3"  # format 2 plus `members`: an ensemble's further trainings (model.checkpoint)

# Format 1's model-side defaults: what a key missing from an old checkpoint's scoring dict meant.
V1_DEFAULTS = {
    "grid_cell": 16, "grid_period": 2, "residual": "abs", "calibration": "position", "pixel_calibration": "global",
    "pixel_smooth": 3, "pixel_close": 0, "pixel_disc_weight": None, "pixel_guide": 0, "pixel_guide_eps": 0.1,
    "pixel_slice_weight": 0.0, "pixel_slice_margin": 2.0, "pixel_slice_context": False, "rec_weight": 1.0,
    "disc_weight": 0.5, "disc_evidence": "logit", "min_foreground": 0.25, "patch_pool": "mean", "stat_smooth": 0,
    "stat_prior": 0.0, "position_bandwidth": 0.0, "position_prior": 5.0, "intensity_weight": 0.0,
    "symmetry_weight": 0.0, "prior_smooth": 5, "pixel_prior_scale": 1.0, "appearance_weight": 0.0,
    "appearance_components": 50, "feature_weight": 0.0, "shape_weight": 0.0, "context_radius": 0,
    "context_decay": 0.25, "rank": {"k": 4, "decay": 0.8, "floor": 0.0},
    "volume_rank": {"k": 3, "decay": 0.8, "floor": 0.0},
}  # fmt: skip

# Removed settings that changed only how the statistics were fitted (already baked into them), or only
# the pixel map: dropped. Those that changed the scores themselves are refused unless at today's value.
_DROPPED = ("stat_smooth", "position_prior", "pixel_disc_weight", "pixel_slice_context", "pixel_calibration")
_REQUIRED = {"patch_pool": "mean", "position_bandwidth": 0.0, "calibration": "position"}

# Format 1's flat statistics keys of each evidence term, and the key whose absence means "not fitted".
_TERM_KEYS = {
    "anatomy": (("int_mean", "int_std", "sym_mean", "sym_std"), ("int_mean", "sym_mean")),
    "appearance": (("app_mean", "app_basis", "app_cal_mean", "app_cal_std"), ("app_basis",)),
    "lesion_shape": (("shape_mean", "shape_std", "shape_bank", "shape_cal"), ("shape_bank",)),
    "features": (("feat_mean", "feat_std", "feat_bank", "feat_cal"), ("feat_bank",)),
}
_METHOD_KEYS = ("pix_mean", "pix_std", "rec_mean", "rec_std", "disc_mean", "disc_std", "image_mean", "image_std")


class UpgradeError(ValueError):
    """An old checkpoint uses a setting the current scorer no longer has."""


def _scoring_v1_to_v2(old: dict) -> tuple[dict, list[str]]:
    cfg = {**V1_DEFAULTS, **old}
    notes = []
    for key, want in _REQUIRED.items():
        if cfg[key] != want:
            raise UpgradeError(f"saved with scoring.{key}={cfg[key]!r}, removed in format 2 (docs/decisions.md)")
    if cfg["disc_weight"] != 0 and cfg["disc_evidence"] != "contrast":
        raise UpgradeError(f"saved with scoring.disc_evidence={cfg['disc_evidence']!r}, removed in format 2")
    pdw = cfg["disc_weight"] if cfg["pixel_disc_weight"] is None else cfg["pixel_disc_weight"]
    if pdw:
        notes.append("pixel map: discriminator evidence no longer added")
    if cfg["pixel_calibration"] != "position":
        notes.append("pixel map: residual now calibrated per position")
    if cfg["pixel_slice_weight"] and not cfg["pixel_slice_context"]:
        notes.append("pixel map: slice gate now uses the context slice scores")
    for key in (*_DROPPED, *_REQUIRED, "disc_evidence"):
        cfg.pop(key)
    return cfg, notes


def _stats_v1_to_v2(old: dict) -> dict:
    if old.get("level_mean") is not None:
        raise UpgradeError("saved with per-level image statistics (position_bandwidth), removed in format 2")
    new = {k: old[k] for k in _METHOD_KEYS if k in old}
    new["terms"] = {}
    for name, (keys, present) in _TERM_KEYS.items():
        if any(old.get(k) is not None for k in present):
            new["terms"][name] = {k: old.get(k) for k in keys}
    return new


def upgrade(payload: dict) -> dict:
    """A loaded checkpoint payload of any known format -> format 2, or 3 for an ensemble (a new dict; the input
    is unchanged)."""
    fmt = payload.get("format")
    if fmt in (FORMAT_2, FORMAT_3):
        return payload
    if fmt != FORMAT_1:
        raise UpgradeError(f"unknown checkpoint format {fmt!r}")
    scoring, notes = _scoring_v1_to_v2(payload["scoring"])
    meta = {**payload.get("meta", {}), "upgraded_from": FORMAT_1}
    if notes:
        meta["upgrade_notes"] = notes
    return {**payload, "format": FORMAT_2, "scoring": scoring, "stats": _stats_v1_to_v2(payload["stats"]), "meta": meta}
