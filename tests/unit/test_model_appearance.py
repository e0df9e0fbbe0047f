"""Normal-appearance evidence for 2D images (model.appearance) inside the one scoring function."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from modeldoubles import Mean, ZeroDisc, bare

from patchrank.model import fit_score_stats, score_images
from patchrank.model.evidence.appearance import appearance_evidence, fit_appearance, subspace_error
from patchrank.model.scoring import ScoreStats

NAN = float("nan")


def _normal_images(n: int, seed: int = 0) -> torch.Tensor:
    """RGB 'skin' images that vary along three smooth patterns (a low-dimensional normal appearance)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    patterns = torch.stack([torch.exp(-(xx**2 + yy**2) * 3), xx, yy])  # (3, H, W)
    coef = torch.randn(n, 3, 3, generator=g) * 0.3  # per image, per channel
    x = torch.einsum("ncp,phw->nchw", coef, patterns)
    return x + 0.01 * torch.randn(x.shape, generator=g)


def test_subspace_error_is_zero_inside_and_positive_outside():
    x = _normal_images(40)
    st, held = fit_appearance(x, components=9)
    assert held.shape == (40, 1, 32, 32) and torch.allclose(held.mean(0, keepdim=True), st["app_cal_mean"])
    assert st["app_basis"].shape == (9, 3 * 32 * 32) and st["app_mean"].shape == (1, 3, 32, 32)
    held_out = subspace_error(_normal_images(5, seed=1), st["app_mean"], st["app_basis"])
    odd = _normal_images(1, seed=2)
    odd[0, :, 5:9, 20:24] += 0.8  # a spot no pattern explains
    err = subspace_error(odd, st["app_mean"], st["app_basis"])[0, 0]
    assert float(err[5:9, 20:24].mean()) > 50 * float(held_out.mean())
    # calibration comes from images the subspace did not see: positive and finite
    assert (st["app_cal_std"] > 0).all() and torch.isfinite(st["app_cal_mean"]).all()


def test_only_2d_images_get_it_and_off_cases():
    x = _normal_images(40)
    stats = ScoreStats(
        torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32), terms={"appearance": fit_appearance(x, 9)[0]}
    )
    y = _normal_images(3, seed=3)
    ev = appearance_evidence(y, torch.tensor([NAN, 0.5, NAN]), stats.terms["appearance"], 2.0)
    assert ev.shape == (3, 1, 32, 32) and not ev[1].any() and ev[0].any() and ev[2].any()
    assert (
        appearance_evidence(y, torch.tensor([0.1, 0.5, 0.9]), stats.terms["appearance"], 2.0) is None
    )  # all slices of volumes
    assert appearance_evidence(y, None, stats.terms["appearance"], 0.0) is None
    assert appearance_evidence(y, None, {}, 2.0) is None  # older checkpoints
    assert set(fit_appearance(x[:3], 9)[0].values()) == {None} and fit_appearance(x[:3], 9)[1] is None  # too few images


def test_appearance_ranks_an_unusual_image_first_through_score_images():
    normal = _normal_images(64)
    odd = _normal_images(1, seed=7)
    odd[0, 1, 12:20, 4:12] -= 0.6  # a discoloured region, smooth, so the blind residual barely sees it
    test = torch.cat([odd, _normal_images(16, seed=8)])
    base = bare(grid_cell=4, disc_weight=0.0, min_foreground=0.0, appearance_components=9)
    margin = {}
    for w in (0.0, 4.0):
        cfg = dataclasses.replace(base, appearance_weight=w)
        stats = fit_score_stats(Mean(), ZeroDisc(), [(normal, None)], cfg)
        assert ("appearance" in stats.terms) == (w > 0)
        out = score_images(Mean(), ZeroDisc(), test, cfg=cfg, stats=stats)
        margin[w] = float(out.image_scores[0] - out.image_scores[1:].max())
    assert margin[4.0] > 0 and margin[4.0] > margin[0.0] + 1.0


def test_volumes_store_no_subspace():
    cfg = bare(grid_cell=4, appearance_weight=4.0)
    stats = fit_score_stats(Mean(), ZeroDisc(), [(_normal_images(16), None, torch.linspace(0, 1, 16))], cfg)
    assert "appearance" not in stats.terms


@pytest.mark.parametrize("n2d", [0, 8])
def test_mixed_batches_fit_on_the_2d_images_only(n2d):
    x = _normal_images(16)
    pos = torch.cat([torch.full((n2d,), NAN), torch.linspace(0, 1, 16 - n2d)])
    stats = fit_score_stats(
        Mean(), ZeroDisc(), [(x, None, pos)], bare(grid_cell=4, appearance_weight=1.0, appearance_components=3)
    )
    assert ("appearance" in stats.terms) == (n2d > 0)


def test_checkpoint_carries_the_subspace(tmp_path):
    from patchrank.model.checkpoint import load_checkpoint, save_checkpoint
    from patchrank.model.discriminator import PatchDiscriminator
    from patchrank.model.reconstructor import MaskedReconstructor

    torch.manual_seed(0)
    recon, disc = MaskedReconstructor(3, base_channels=4, depth=2), PatchDiscriminator(3, base_channels=4, n_layers=2)
    cfg = bare(grid_cell=4, appearance_weight=4.0, appearance_components=5)
    x = _normal_images(12)
    stats = fit_score_stats(recon.eval(), disc.eval(), [(x, None)], cfg)
    save_checkpoint(
        tmp_path / "m.pt", recon, disc, preprocess={"image_size": 32, "channels": 3}, scoring=cfg, stats=stats
    )
    m = load_checkpoint(tmp_path / "m.pt")
    assert m.stats.terms["appearance"]["app_basis"].shape == (5, 3 * 32 * 32)
    a = score_images(recon, disc, x, cfg=cfg, stats=stats)
    b = score_images(m.recon, m.disc, x, cfg=m.scoring, stats=m.stats)
    assert torch.equal(a.image_scores, b.image_scores)


def test_new_normal_images_score_like_the_calibration_images():
    """The statistics use each fitting image's held-out error, so new normal images get image
    z-scores centred on 0 (with in-sample errors they would all look abnormal)."""
    cfg = bare(grid_cell=4, disc_weight=0.0, min_foreground=0.0, appearance_weight=4.0, appearance_components=20)
    stats = fit_score_stats(Mean(), ZeroDisc(), [(_normal_images(64), None)], cfg)
    new = score_images(Mean(), ZeroDisc(), _normal_images(64, seed=21), cfg=cfg, stats=stats).image_scores
    assert abs(float(new.mean())) < 1.0  # in-sample errors: +2.8 here
