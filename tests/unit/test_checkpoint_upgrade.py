"""Checkpoints saved by the pre-consolidation code (format 1, tests/data/legacy_v0_*) load through the
explicit upgrade and score exactly as they did when they were saved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from patchrank.model.checkpoint import CheckpointError, content_version, load_checkpoint
from patchrank.model.upgrade import FORMAT_1, FORMAT_2, UpgradeError, upgrade
from patchrank.pipeline.data.loaders import load_scan
from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset
from patchrank.pipeline.data.preprocess import preprocess_scan
from patchrank.pipeline.scan_scoring import score_prepared

DATA = Path(__file__).resolve().parents[1] / "data"


def test_brain_checkpoint_of_format_1_scores_as_before(tmp_path):
    lm = load_checkpoint(DATA / "legacy_v0_brain.pt")
    raw = torch.load(DATA / "legacy_v0_brain.pt", weights_only=True)
    assert raw["format"] == FORMAT_1 and lm.meta["upgraded_from"] == FORMAT_1
    assert lm.model_version == raw["model_version"]  # results keep their key
    assert set(lm.stats.terms) == {"anatomy"}
    ref = json.loads((DATA / "legacy_v0_brain.json").read_text())
    write_phantom_dataset(
        tmp_path, PhantomSpec(shape=(64, 64, 24), n_normal=4, n_abnormal=2, min_radius=3, max_radius=6, seed=1)
    )
    for subject, want in ref.items():
        path = next(tmp_path.rglob(f"{subject}_flair.nii.gz"))
        got = score_prepared(lm, preprocess_scan(load_scan(path), lm.preprocess), top_n=3)
        assert got.scan_score == pytest.approx(want["scan_score"], abs=1e-5)
        assert got.slice_scores.tolist() == pytest.approx(want["slice_scores"], abs=1e-5)


def test_dermoscopy_checkpoint_of_format_1_scores_as_before(tmp_path):
    from legacy_images import write_images

    lm = load_checkpoint(DATA / "legacy_v0_skin.pt")
    assert set(lm.stats.terms) == {"appearance", "lesion_shape", "features"}
    ref = json.loads((DATA / "legacy_v0_skin.json").read_text())
    paths = {p.name: p for p in write_images(tmp_path)}
    for name, want in ref.items():
        prep = preprocess_scan(load_scan(paths[name], channels=3), lm.preprocess)
        # 5e-3, not 1e-5: the feature term's nearest distance is now computed directly rather than through
        # cdist's matrix-product form (docs/decisions.md, Inference), which moves these references by <= 1.8e-3.
        assert score_prepared(lm, prep, top_n=3).scan_score == pytest.approx(want["scan_score"], abs=5e-3)


def test_upgrade_refuses_removed_scoring_options_and_keeps_the_input():
    raw = torch.load(DATA / "legacy_v0_brain.pt", weights_only=True)
    up = upgrade(raw)
    assert up["format"] == FORMAT_2 and raw["format"] == FORMAT_1 and "patch_pool" in raw["scoring"]
    assert upgrade(up) is up
    for key, value in (("patch_pool", "max"), ("position_bandwidth", 0.2), ("disc_evidence", "logit")):
        with pytest.raises(UpgradeError, match=key):
            upgrade({**raw, "scoring": {**raw["scoring"], key: value}})
    old = {k: v for k, v in raw["scoring"].items() if k != "pixel_slice_context"}  # older: per-slice gate
    assert "slice gate" in upgrade({**raw, "scoring": old})["meta"]["upgrade_notes"][0]
    with pytest.raises(UpgradeError, match="format"):
        upgrade({**raw, "format": "patchrank-ckpt/0"})


def test_unusable_old_checkpoint_is_one_clear_error(tmp_path):
    raw = torch.load(DATA / "legacy_v0_brain.pt", weights_only=True)
    bad = {**raw, "scoring": {**raw["scoring"], "patch_pool": "max"}}
    bad["model_version"] = content_version(bad)
    torch.save(bad, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="patch_pool"):
        load_checkpoint(tmp_path / "old.pt")
