"""Feature evidence (model.features): nearest-normal-patch distance of the reconstructor's encoder features."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from modeldoubles import ZeroDisc, bare

from patchrank.model import fit_score_stats, score_images
from patchrank.model.checkpoint import load_checkpoint, save_checkpoint
from patchrank.model.evidence.features import BANK_SIZE, encoder_features, feature_evidence, fit_features
from patchrank.model.reconstructor import MaskedReconstructor
from patchrank.model.scoring import ScoreStats

S = 32


def _encoder(seed: int = 0) -> MaskedReconstructor:
    torch.manual_seed(seed)
    return MaskedReconstructor(in_channels=3, base_channels=4, depth=3).eval()


def _normal(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth skin-like images: a colour plus a gentle gradient and a little noise."""
    g = torch.Generator().manual_seed(seed)
    base = 0.2 + 0.1 * torch.rand(n, 3, 1, 1, generator=g)
    ramp = torch.linspace(-0.1, 0.1, S)[None, None, None, :] * torch.rand(n, 1, 1, 1, generator=g)
    return base + ramp + 0.02 * torch.randn(n, 3, S, S, generator=g)


def _with_odd_patch(x: torch.Tensor) -> torch.Tensor:
    """A checkerboard of strong contrast in one 8 x 8 patch: a texture no normal image has."""
    x = x.clone()
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    x[:, :, 16:24, 8:16] = torch.where((yy + xx) % 2 == 0, 0.9, -0.9).float()
    return x


def test_encoder_features_pool_the_middle_levels_onto_the_patch_grid():
    r = _encoder()
    f = encoder_features(r, _normal(2), (4, 4))
    assert f.shape == (2, 8 + 16, 4, 4)  # levels 1 and 2 of a depth-3 encoder (widths 4, 8, 16, 32)
    levels = r.encode(_normal(2))
    assert [lv.shape[1] for lv in levels] == [4, 8, 16, 32] and levels[-1].shape[-1] == S // 8


def test_fit_calibrates_on_held_out_images_and_flags_an_unusual_patch():
    r = _encoder()
    x = _normal(40)
    feats = encoder_features(r, x, (4, 4))
    valid = torch.ones(40, 4, 4, dtype=torch.bool)
    valid[:, 0, 0] = False
    st, held = fit_features(feats, valid)
    assert st["feat_bank"].shape == (40 * 15, feats.shape[1]) and st["feat_cal"][1] > 0
    assert held.shape == (40, 4, 4) and (held[:, 0, 0] == 0).all()  # invalid patches carry no evidence
    assert abs(float(held[valid].mean())) < 1e-4  # z-scored against those very held-out distances
    stats = ScoreStats(torch.zeros(1, 1, S, S), torch.ones(1, 1, S, S), terms={"features": st})
    new = _normal(20, seed=1)
    normal_ev = feature_evidence(r, new, (4, 4), stats.terms["features"], 1.0)
    odd_ev = feature_evidence(r, _with_odd_patch(new[:1]), (4, 4), stats.terms["features"], 1.0)
    assert abs(float(normal_ev.mean())) < 1.0  # new normal images score near zero
    assert float(odd_ev[0, 2, 1]) > float(normal_ev.max()) and float(odd_ev[0, 2, 1]) > 3
    assert torch.allclose(feature_evidence(r, new, (4, 4), stats.terms["features"], 2.0), 2 * normal_ev, atol=1e-5)
    assert feature_evidence(r, new, (4, 4), stats.terms["features"], 0.0) is None
    assert feature_evidence(r, new, (4, 4), {}, 1.0) is None  # older checkpoints
    assert set(fit_features(feats[:3], valid[:3])[0].values()) == {None}  # too few images


def test_bank_is_capped_by_a_seeded_sample(monkeypatch):
    import patchrank.model.evidence.features as mf

    monkeypatch.setattr(mf, "BANK_SIZE", 50)
    feats, valid = torch.randn(20, 6, 4, 4), torch.ones(20, 4, 4, dtype=torch.bool)
    a, b = fit_features(feats, valid, seed=3)[0], fit_features(feats, valid, seed=3)[0]
    assert a["feat_bank"].shape == (50, 6) and torch.equal(a["feat_bank"], b["feat_bank"])
    assert BANK_SIZE >= 1024


def test_score_images_ranks_the_unusual_texture_first_only_with_the_weight():
    r = _encoder()
    x = _normal(40)
    test = torch.cat([_with_odd_patch(_normal(1, seed=7)), _normal(15, seed=2)])
    base = bare(grid_cell=4, disc_weight=0.0, rec_weight=0.0)
    for w in (0.0, 1.0):
        cfg = dataclasses.replace(base, feature_weight=w)
        stats = fit_score_stats(r, ZeroDisc(), [(x, None)], cfg)
        assert ("features" in stats.terms) == (w > 0)
        out = score_images(r, ZeroDisc(), test, cfg=cfg, stats=stats)
        if w:
            assert int(out.image_scores.argmax()) == 0 and float(out.patch_scores[0].max()) > 3
            assert (
                abs(float(score_images(r, ZeroDisc(), _normal(30, seed=4), cfg=cfg, stats=stats).image_scores.mean()))
                < 1.5
            )
        else:
            assert torch.allclose(out.image_scores, torch.zeros(16), atol=1e-4)  # nothing else scores


def test_bank_survives_the_checkpoint(tmp_path):
    r = _encoder()
    cfg = bare(grid_cell=4, feature_weight=2.0)
    stats = fit_score_stats(r, ZeroDisc(), [(_normal(12), None)], cfg)
    from patchrank.model.discriminator import PatchDiscriminator

    save_checkpoint(
        tmp_path / "m.pt",
        r,
        PatchDiscriminator(in_channels=3, base_channels=4),
        preprocess={"image_size": S},
        scoring=cfg,
        stats=stats,
        meta={},
    )
    lm = load_checkpoint(tmp_path / "m.pt")
    assert lm.scoring.feature_weight == 2.0
    for key in ("feat_mean", "feat_std", "feat_bank", "feat_cal"):
        assert torch.equal(lm.stats.terms["features"][key], stats.terms["features"][key])
    x = _normal(3, seed=9)
    assert torch.allclose(
        feature_evidence(lm.recon, x, (8, 8), lm.stats.terms["features"], 2.0),
        feature_evidence(r, x, (8, 8), stats.terms["features"], 2.0),
    )


def test_settings_pass_the_weight_and_the_ablation_turns_it_off():
    from patchrank.pipeline.evaluation.folds import ABLATIONS
    from patchrank.pipeline.settings import TrainConfig, merge

    assert TrainConfig().scoring.feature_weight == 0.0
    on = TrainConfig(scoring={"feature_weight": 4.0})
    assert on.scoring.feature_weight == 4.0
    off = TrainConfig(**merge(on.model_dump(), ABLATIONS["no_features"]))
    assert off.scoring.feature_weight == 0.0
    with pytest.raises(ValueError):
        TrainConfig(scoring={"feature_weight": -1})
