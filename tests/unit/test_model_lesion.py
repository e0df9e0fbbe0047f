"""Lesion-shape evidence for dermoscopy-like 2D images (model.lesion) inside the one scoring function."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from modeldoubles import Mean, ZeroDisc, bare

from patchrank.model import fit_score_stats, score_images
from patchrank.model.checkpoint import load_checkpoint, save_checkpoint
from patchrank.model.discriminator import PatchDiscriminator
from patchrank.model.evidence.lesion import (
    SHAPE_NEIGHBOURS,
    dark_lesion,
    fit_lesion_shape,
    lesion_core,
    lesion_descriptors,
    otsu_threshold,
    shape_evidence,
)
from patchrank.model.reconstructor import MaskedReconstructor
from patchrank.model.scoring import ScoreStats

NAN = float("nan")
S = 32


def _ellipse(a: float, b: float, angle: float = 0.0, cy: float = 15.5, cx: float = 15.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def _lesion(mask: torch.Tensor, seed: int, spread: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """-> an RGB image (1, 3, S, S) with a brown, evenly coloured lesion on skin, and its mask."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((1, 3, S, S), 0.6) + 0.02 * torch.randn(1, 3, S, S, generator=g)
    lesion = torch.tensor([-0.2, -0.4, -0.5])[:, None, None] + spread * torch.randn(3, S, S, generator=g)
    x[0] = torch.where(mask, lesion, x[0])
    return x, mask[None, None]


def _normal_set(n: int, seed: int = 0):
    """Roughly round, evenly coloured lesions of varying size and orientation."""
    g = torch.Generator().manual_seed(seed)
    xs, ms = [], []
    for i in range(n):
        a = 5 + 4 * float(torch.rand(1, generator=g))
        b = a * (0.8 + 0.2 * float(torch.rand(1, generator=g)))
        x, m = _lesion(_ellipse(a, b, float(torch.rand(1, generator=g)) * math.pi), seed * 1000 + i)
        xs.append(x)
        ms.append(m)
    return torch.cat(xs), torch.cat(ms)


def _irregular() -> torch.Tensor:
    """A lobed, asymmetric outline: a disc plus two off-axis bumps on one side."""
    return (
        _ellipse(6, 6) | _ellipse(3, 3, cy=8, cx=22) | _ellipse(2.5, 4, cy=22, cx=21) | _ellipse(2, 2, cy=15.5, cx=24)
    )


def test_descriptors_read_area_border_asymmetry_and_colour():
    disc, _ = _lesion(_ellipse(6, 6), 0)
    d_disc = lesion_descriptors(disc, _ellipse(6, 6)[None, None])[0]
    d_big = lesion_descriptors(*_lesion(_ellipse(10, 10), 0))[0]
    d_odd = lesion_descriptors(*_lesion(_irregular(), 0))[0]
    d_varied = lesion_descriptors(*_lesion(_ellipse(6, 6), 0, spread=0.3))[0]
    assert d_disc.shape == (4 + 3,)
    assert d_big[0] > 2.5 * d_disc[0] and abs(float(d_disc[0]) - math.pi * 36 / S**2) < 0.02  # area fraction
    assert d_odd[4] > 1.3 * d_disc[4]  # border irregularity: perimeter^2 / (4 pi area)
    assert d_disc[5:].max() < 0.1 and d_odd[5:].max() > 2 * d_disc[5:].max()  # asymmetry about the principal axes
    assert (d_varied[1:4] > 3 * d_disc[1:4]).all()  # colour spread inside the lesion


def test_otsu_matches_the_textbook_definition_and_splits_two_modes():
    g = torch.Generator().manual_seed(0)
    v = torch.cat([0.2 + 0.05 * torch.randn(300, generator=g), 0.7 + 0.05 * torch.randn(200, generator=g)])
    t = otsu_threshold(v, bins=64)
    lo, hi = float(v.min()), float(v.max())
    centres = [lo + (i + 0.5) * (hi - lo) / 64 for i in range(64)]
    best = max(
        centres,
        key=lambda c: (
            (v < c).sum().item() * (v >= c).sum().item() * (float(v[v < c].mean()) - float(v[v >= c].mean())) ** 2
            if 0 < (v < c).sum() < len(v)
            else -1
        ),
    )
    assert 0.35 < t < 0.55 and abs(t - best) <= (hi - lo) / 64 + 1e-9


def test_descriptors_read_the_lesion_proper_not_the_dilated_foreground():
    """Preprocessing dilates the lesion so ranked patches include its border; the descriptors
    re-segment the dark lesion inside that foreground, so the dilation does not smooth the
    outline they measure."""
    x, m = _lesion(_irregular(), 0, spread=0.0)
    grown = F.max_pool2d(m.float(), 5, stride=1, padding=2) > 0
    assert torch.equal(lesion_core(x, grown), m)
    assert torch.allclose(lesion_descriptors(x, grown), lesion_descriptors(x, m))
    assert dark_lesion(torch.full((3, S, S), 0.5)) is None  # no contrast
    flat = torch.full((1, 3, S, S), 0.5)
    assert torch.equal(lesion_core(flat, m), m)  # nothing dark: the foreground itself


def test_fit_and_calibration():
    x, m = _normal_set(40)
    st = fit_lesion_shape(x, m)
    assert st["shape_bank"].shape == (40, 7) and st["shape_cal"].shape == (2,) and float(st["shape_cal"][1]) > 0
    assert torch.allclose(st["shape_bank"].mean(0), torch.zeros(7), atol=1e-4)
    assert set(fit_lesion_shape(x[: SHAPE_NEIGHBOURS + 1], m[: SHAPE_NEIGHBOURS + 1]).values()) == {None}  # too few
    stats = ScoreStats(torch.zeros(1, 1, S, S), torch.ones(1, 1, S, S), terms={"lesion_shape": st})
    new_x, new_m = _normal_set(30, seed=1)
    normal_ev = shape_evidence(new_x, new_m, None, stats.terms["lesion_shape"], 1.0)
    odd_ev = shape_evidence(*_lesion(_irregular(), 5), None, stats.terms["lesion_shape"], 1.0)
    assert abs(float(normal_ev.mean())) < 1.0  # calibrated: new normal images score near zero
    assert float(odd_ev[0]) > float(normal_ev.max()) and float(odd_ev[0]) > 3
    assert torch.allclose(shape_evidence(*_lesion(_irregular(), 5), None, stats.terms["lesion_shape"], 2.0), 2 * odd_ev)


def test_only_2d_images_and_off_cases():
    x, m = _normal_set(20)
    stats = ScoreStats(torch.zeros(1, 1, S, S), torch.ones(1, 1, S, S), terms={"lesion_shape": fit_lesion_shape(x, m)})
    ev = shape_evidence(x[:3], m[:3], torch.tensor([NAN, 0.5, NAN]), stats.terms["lesion_shape"], 1.0)
    assert ev.shape == (3,) and ev[1] == 0 and ev[0] != 0 and ev[2] != 0
    assert shape_evidence(x[:3], m[:3], None, stats.terms["lesion_shape"], 0.0) is None
    assert shape_evidence(x[:3], None, None, stats.terms["lesion_shape"], 1.0) is None
    assert shape_evidence(x[:3], m[:3], None, {}, 1.0) is None  # older checkpoints


def test_score_images_ranks_an_irregular_lesion_first_and_fit_needs_a_segmented_lesion():
    x, m = _normal_set(40)
    base = bare(grid_cell=4, disc_weight=0.0, min_foreground=0.0)
    odd_x, odd_m = _lesion(_irregular(), 9)
    test_x, test_m = _normal_set(12, seed=2)
    test_x, test_m = torch.cat([odd_x, test_x]), torch.cat([odd_m, test_m])
    ranks = {}
    for w in (0.0, 1.0):
        cfg = dataclasses.replace(base, shape_weight=w)
        stats = fit_score_stats(Mean(), ZeroDisc(), [(x, m, None)], cfg)
        assert ("lesion_shape" in stats.terms) == (w > 0)
        scores = score_images(Mean(), ZeroDisc(), test_x, cfg=cfg, stats=stats, foreground=test_m).image_scores
        ranks[w] = int((scores > scores[0]).sum())
    assert ranks[1.0] == 0 and ranks[1.0] <= ranks[0.0]
    # whole-image foreground (no lesion segmented) or slices of volumes: no bank is fitted
    cfg = dataclasses.replace(base, shape_weight=1.0)
    assert fit_score_stats(Mean(), ZeroDisc(), [(x, None, None)], cfg).terms.get("lesion_shape") is None
    assert (
        fit_score_stats(Mean(), ZeroDisc(), [(x, m, torch.linspace(0, 1, 40))], cfg).terms.get("lesion_shape") is None
    )


def test_bank_survives_the_checkpoint(tmp_path):
    x, m = _normal_set(20)
    st = fit_lesion_shape(x, m)
    stats = ScoreStats(torch.zeros(1, 1, S, S), torch.ones(1, 1, S, S), terms={"lesion_shape": st})
    recon, disc = (
        MaskedReconstructor(in_channels=3, base_channels=4, depth=2),
        PatchDiscriminator(in_channels=3, base_channels=4),
    )
    save_checkpoint(
        tmp_path / "m.pt",
        recon,
        disc,
        preprocess={"image_size": S},
        scoring=bare(shape_weight=1.0),
        stats=stats,
        meta={},
    )
    lm = load_checkpoint(tmp_path / "m.pt")
    assert lm.scoring.shape_weight == 1.0
    for key in ("shape_mean", "shape_std", "shape_bank", "shape_cal"):
        assert torch.equal(lm.stats.terms["lesion_shape"][key], st[key])
    with pytest.raises(TypeError):
        ScoreStats(torch.zeros(1), torch.ones(1), shape_unknown=1)


def test_settings_pass_the_weight_and_the_ablation_turns_it_off():
    from patchrank.pipeline.evaluation.folds import ABLATIONS
    from patchrank.pipeline.settings import TrainConfig, merge

    assert TrainConfig().scoring.shape_weight == 1.0
    off = TrainConfig(**merge(TrainConfig().model_dump(), ABLATIONS["no_shape"]))
    assert off.scoring.shape_weight == 0.0
    with pytest.raises(ValueError):
        TrainConfig(scoring={"shape_weight": -1})
