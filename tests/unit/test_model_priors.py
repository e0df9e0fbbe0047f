"""Anatomical evidence from the input itself (model.priors) inside the one scoring function."""

from __future__ import annotations

import dataclasses

import torch
from modeldoubles import Mean, ZeroDisc, bare

from patchrank.model import fit_score_stats, score_images
from patchrank.model.evidence.anatomy import fit_prior_stats, prior_evidence, raw_priors
from patchrank.model.scoring import ScoreStats


def _normal_brains(n: int, seed: int = 0) -> torch.Tensor:
    """Left-right symmetric 'brains' (mirror axis = dim -2) with a bright midline structure and
    bright lower-half structures at random but symmetric positions (normal anatomy varies)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 1, 32, 32), -0.5)
    x[:, :, 14:18, 4:28] = 0.4  # midline
    for i in range(n):
        r, c = int(torch.randint(2, 10, (1,), generator=g)), int(torch.randint(4, 26, (1,), generator=g))
        x[i, :, r : r + 3, c : c + 3] = 0.8
        x[i, :, 31 - r - 2 : 31 - r + 1, c : c + 3] = 0.8  # its mirror image
    return x + 0.02 * torch.randn(x.shape, generator=g)


def test_mirror_difference_and_where_it_is_defined():
    x = _normal_brains(2)
    xs, sym, fg, ok = raw_priors(x, None, torch.tensor([0.3, 0.7]), smooth=3)
    assert xs.shape == sym.shape == (2, 1, 32, 32) and fg.all() and ok.all()
    assert sym.abs().max() < 0.1  # symmetric slices: no left-right difference
    y = x.clone()
    y[0, :, 4:7, 20:23] += 1.0  # a unilateral bright spot
    _, sym_y, _, _ = raw_priors(y, None, torch.tensor([0.3, 0.7]), smooth=3)
    assert sym_y[0, 0, 5, 21] > 0.5 and sym_y[0, 0, 31 - 5, 21] < -0.5
    # 2D images (no axial position) and unknown positions carry neither term
    assert not raw_priors(x, None, None, 3)[2].any() and not raw_priors(x, None, None, 3)[3].any()
    for i in (2, 3):
        assert raw_priors(x, None, torch.tensor([float("nan"), 0.5]), 3)[i].sum(dim=(1, 2, 3)).tolist() == [0, 32 * 32]


def test_prior_stats_and_evidence_sign():
    x = _normal_brains(40)
    raw = raw_priors(x, None, torch.linspace(0, 1, 40), 3)
    st = fit_prior_stats(*raw)
    assert st["int_mean"].shape == (1, 1, 32, 32) and (st["int_std"] > 0).all()
    stats = ScoreStats(torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32), terms={"anatomy": st})
    y = _normal_brains(1, seed=5)
    y[0, :, 22:25, 8:11] -= 1.0  # darker than normal, one side only

    def ev(how):
        return prior_evidence(raw_priors(y, None, torch.tensor([0.5]), 3), stats.terms["anatomy"], 1.0, 1.0, how)

    # "positive" counts only brighter-than-normal, "abs" either way
    assert ev("positive")[0, 0, 23, 9] < ev("abs")[0, 0, 23, 9]
    assert ev("abs")[0, 0, 23, 9] > 3
    # no statistics without volumes; both terms off -> None
    assert set(fit_prior_stats(*raw_priors(x, None, None, 3)).values()) == {None}
    assert prior_evidence(raw, stats.terms["anatomy"], 0.0, 0.0, "positive") is None
    assert prior_evidence(raw, {}, 1.0, 1.0, "positive") is None  # older checkpoints


def test_symmetry_evidence_finds_a_lesion_the_residual_misses():
    """A unilateral spot as bright as normal (symmetric) structures: the anatomy-blind residual
    ranks a normal structure first, the symmetry term puts the lesion's patch on top."""
    normal = _normal_brains(64)
    pos = torch.linspace(0, 1, 64)
    base = bare(grid_cell=4, residual="positive", disc_weight=0.0, min_foreground=0.0, prior_smooth=3, stat_prior=8.0)
    lesion = _normal_brains(1, seed=9)
    lesion[0, :, 24:27, 20:23] = 0.8  # normal brightness, but only on one side
    scores = {}
    for w in (0.0, 2.0):
        cfg = dataclasses.replace(base, symmetry_weight=w)
        stats = fit_score_stats(Mean(), ZeroDisc(), [(normal, None, pos)], cfg)
        out = score_images(
            Mean(),
            ZeroDisc(),
            torch.cat([lesion, _normal_brains(8, seed=11)]),
            cfg=cfg,
            stats=stats,
            position=torch.full((9,), 0.5),
        )
        top = divmod(int(out.patch_scores[0].flatten().argmax()), out.patch_scores.shape[-1])
        scores[w] = (top, float(out.image_scores[0] - out.image_scores[1:].max()))
    # without symmetry the most suspicious patch is a normal (symmetric) bright structure;
    # with it, the patch holding the lesion (rows 24-27, cols 20-23 -> cell (6, 5))
    assert scores[0.0][0] != (6, 5) and scores[2.0][0] == (6, 5)
    assert scores[2.0][1] > scores[0.0][1] + 1.0  # and the slice stands further above normal ones


def test_pixel_prior_scale_changes_only_the_pixel_map():
    normal, pos = _normal_brains(32), torch.linspace(0, 1, 32)
    y = _normal_brains(2, seed=3)
    y[0, :, 24:27, 20:23] = 0.8
    base = bare(
        grid_cell=4,
        residual="positive",
        disc_weight=0.0,
        prior_smooth=3,
        stat_prior=8.0,
        intensity_weight=1.0,
        symmetry_weight=2.0,
    )
    outs = {}
    for scale in (0.0, 0.5, 1.0):
        cfg = dataclasses.replace(base, pixel_prior_scale=scale)
        stats = fit_score_stats(Mean(), ZeroDisc(), [(normal, None, pos)], cfg)
        outs[scale] = score_images(Mean(), ZeroDisc(), y, cfg=cfg, stats=stats, position=torch.full((2,), 0.5))
    off = dataclasses.replace(base, intensity_weight=0.0, symmetry_weight=0.0)
    plain = score_images(
        Mean(), ZeroDisc(), y, cfg=off, stats=fit_score_stats(Mean(), ZeroDisc(), [(normal, None, pos)], off)
    )
    for scale in (0.5, 1.0):  # patch and image scores do not depend on the pixel-map share
        assert torch.equal(outs[scale].patch_scores, outs[0.0].patch_scores)
        assert torch.equal(outs[scale].image_scores, outs[0.0].image_scores)
    # share 0: the residual-only map, up to the affine normalisation (fitted with the evidence in the patches)
    a, b = outs[0.0].pixel_map.flatten(), plain.pixel_map.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9999

    def lesion_px(o):
        return float(o.pixel_map[0, 25, 21])

    assert lesion_px(outs[0.0]) < lesion_px(outs[0.5]) < lesion_px(outs[1.0])
