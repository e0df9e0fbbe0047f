"""The one scoring function and the checkpoint format."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
from modeldoubles import CopyRecon, ZeroDisc, bare

from patchrank.model import (
    MaskedReconstructor,
    PatchDiscriminator,
    fit_score_stats,
    load_checkpoint,
    save_checkpoint,
    score_images,
    volume_score,
)
from patchrank.model.checkpoint import CheckpointError


def test_score_shapes_and_hot_region():
    cfg = bare(grid_cell=4, disc_weight=0.0)
    x = torch.zeros(2, 1, 32, 32)
    x[1, 0, 12:16, 20:24] = 2.0  # one hot patch in image 1, cell (3, 5)
    out = score_images(CopyRecon(), ZeroDisc(), x, cfg=cfg, stats=None)
    assert out.patch_scores.shape == (2, 8, 8) and out.image_scores.shape == (2,)
    assert out.pixel_map.shape == (2, 32, 32) and out.composite.shape == (2, 1, 32, 32)
    flat = out.patch_scores[1].flatten()
    assert divmod(int(flat.argmax()), 8) == (3, 5)
    assert out.image_scores[1] > out.image_scores[0] + 0.5


def test_pixel_map_smoothing_and_discriminator_weight():
    class NoisyDisc(ZeroDisc):  # noise seeded by the input: D(composite) differs from D(x)
        def forward(self, x):
            g = torch.Generator().manual_seed(int(x.abs().sum() * 1000) % 2**31)
            return torch.randn(x.shape[0], 1, x.shape[2] // 4, x.shape[3] // 4, generator=g)

    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 14:16, 14:16] = 2.0  # a 2x2 hot spot
    base = dict(grid_cell=4)
    sharp = score_images(CopyRecon(), ZeroDisc(), x, cfg=bare(**base, pixel_smooth=1), stats=None).pixel_map[0]
    wide = score_images(CopyRecon(), ZeroDisc(), x, cfg=bare(**base, pixel_smooth=9), stats=None).pixel_map[0]
    assert float(sharp[14, 14]) == pytest.approx(2.0) and float(sharp[20, 20]) == 0.0
    assert float(wide[14, 14]) == pytest.approx(8.0 / 81) and float(wide[18, 18]) > 0  # spread over a 9x9 box
    # the coarse discriminator evidence enters the patch scores, never the pixel map
    cfg = bare(**base, disc_weight=0.5)
    noisy = score_images(CopyRecon(), NoisyDisc(), x, cfg=cfg, stats=None)
    quiet = score_images(CopyRecon(), ZeroDisc(), x, cfg=cfg, stats=None)
    assert torch.equal(noisy.pixel_map, quiet.pixel_map) and not torch.equal(noisy.patch_scores, quiet.patch_scores)


def test_discriminator_contrast_evidence_compares_the_image_with_its_reconstruction():
    """D(composite) - D(x) per patch: a patch type the discriminator always finds unreal (here: anything
    bright) scores nothing when its reconstruction is as bright."""

    class BrightIsFake(ZeroDisc):  # logit = -(mean brightness of each 4x4 patch)
        def forward(self, x):
            return -torch.nn.functional.avg_pool2d(x[:, :1], 4)

    from patchrank.model.method import raw_maps

    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, :, :16] = 1.0  # a bright half that the reconstructor (constant 1) reproduces exactly there
    cfg = bare(grid_cell=4, grid_period=2)
    _, contrast_ev, comp = raw_maps(CopyRecon(1.0), BrightIsFake(), x, cfg)
    expected = -torch.nn.functional.avg_pool2d(comp, 4)[:, 0] + torch.nn.functional.avg_pool2d(x, 4)[:, 0]
    assert torch.allclose(contrast_ev, expected)  # D(composite) - D(x)
    assert float(contrast_ev[0, :, :4].abs().max()) == 0.0
    assert float(contrast_ev[0, :, 4:].min()) == -1.0  # dark half: reconstructed too bright, "more real" than it


def test_slice_gate_lowers_only_the_maps_of_normal_looking_slices():
    from patchrank.model.scoring import slice_gate

    x = torch.zeros(3, 1, 32, 32)
    x[1, 0, 12:16, 20:24] = 2.0  # a weak finding: image score 2.0 x the top patch's rank weight
    x[2, 0, 8:24, 8:24] = 4.0  # a strong one
    base = dict(grid_cell=4, disc_weight=0.0)
    plain = score_images(CopyRecon(), ZeroDisc(), x, cfg=bare(**base), stats=None)
    z = plain.image_scores
    gated = slice_gate(plain.pixel_map, z, bare(**base, pixel_slice_weight=0.5, pixel_slice_margin=1.0))
    assert float(z[0]) < 1.0 < float(z[2])
    shift = (gated - plain.pixel_map).flatten(1)
    for i in range(3):  # one constant shift per slice: min(z - margin, 0) x weight
        want = 0.5 * min(float(z[i]) - 1.0, 0.0)
        assert torch.allclose(shift[i], torch.full_like(shift[i], want), atol=1e-5), i
    assert float(shift[0, 0]) < 0 and float(shift[2, 0]) == 0.0  # a blank slice goes down, a clear finding stays


def test_pixel_map_closing_fills_a_dark_core_and_never_lowers():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 8:20, 8:20] = 2.0  # bright rim (oedema) ...
    x[0, 0, 11:17, 11:17] = 0.0  # ... around a core no brighter than normal (necrosis)
    x[0, 0, 26, 26] = 1.0  # an isolated hot pixel
    base = dict(grid_cell=4, pixel_smooth=1, disc_weight=0.0)
    plain = score_images(CopyRecon(), ZeroDisc(), x, cfg=bare(**base), stats=None).pixel_map[0]
    closed = score_images(CopyRecon(), ZeroDisc(), x, cfg=bare(**base, pixel_close=7), stats=None).pixel_map[0]
    assert float(plain[13, 13]) == 0.0 and float(closed[13, 13]) == pytest.approx(2.0)  # the core takes the rim's score
    assert (closed >= plain - 1e-6).all()  # a closing never lowers a value
    assert (
        float(closed[26, 26]) == pytest.approx(1.0) and float(closed[4, 4]) == 0.0
    )  # peaks kept, background untouched
    with pytest.raises(ValueError):
        bare(pixel_close=6)


def test_foreground_excludes_background_patches():
    cfg = bare(grid_cell=4, disc_weight=0.0)
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 0:4, 0:4] = 5.0  # bright corner outside the foreground
    fg = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    fg[..., 8:24, 8:24] = True
    out = score_images(CopyRecon(), ZeroDisc(), x, cfg=cfg, stats=None, foreground=fg)
    assert not out.valid[0, 0, 0]
    assert out.image_scores[0].abs() < 1e-6


def test_complementary_masking_reconstructs_every_pixel_while_hidden():
    class MaskEcho(torch.nn.Module):
        def forward(self, x, mask):
            return mask.expand_as(x)  # 1 where hidden

    cfg = bare(grid_cell=4)
    out = score_images(MaskEcho(), ZeroDisc(), torch.zeros(1, 1, 16, 16), cfg=cfg, stats=None)
    assert torch.equal(out.composite, torch.ones(1, 1, 16, 16))


def _trained_pair(seed=0):
    torch.manual_seed(seed)
    return MaskedReconstructor(1, base_channels=4, depth=2).eval(), PatchDiscriminator(
        1, base_channels=8, n_layers=2
    ).eval()


def test_stats_normalise_normal_data():
    recon, disc = _trained_pair()
    cfg = bare(grid_cell=4)
    normal = torch.randn(24, 1, 32, 32) * 0.1
    stats = fit_score_stats(recon, disc, [(normal[:12], None), (normal[12:], None)], cfg)
    out = score_images(recon, disc, normal, cfg=cfg, stats=stats)
    assert abs(float(out.image_scores.mean())) < 1e-3
    assert abs(float(out.image_scores.std()) - 1.0) < 1e-2
    assert abs(float(out.rec[out.valid].mean())) < 1e-3


def test_volume_score_is_ranked_over_slices():
    cfg = bare()  # volume_rank k=3 decay=0.8
    s = torch.tensor([0.0, 0.1, 5.0, 0.2, 0.0])
    expect = (5.0 + 0.2 * 0.8 + 0.1 * 0.64) / (1 + 0.8 + 0.64)
    assert volume_score(s, cfg) == pytest.approx(expect, rel=1e-6)


def test_checkpoint_round_trip_scores_identically(tmp_path):
    recon, disc = _trained_pair(1)
    cfg = bare(grid_cell=4, residual="positive", rec_weight=0.7, intensity_weight=1.0, symmetry_weight=2.0)
    x = torch.randn(6, 1, 32, 32)
    stats = fit_score_stats(recon, disc, [(x, None, torch.linspace(0, 1, 6))], cfg)
    # the anatomical evidence's state travels in the checkpoint too
    assert stats.terms["anatomy"]["int_mean"] is not None and stats.terms["anatomy"]["sym_mean"] is not None
    v = save_checkpoint(
        tmp_path / "m.pt", recon, disc, preprocess={"image_size": 32}, scoring=cfg, stats=stats, meta={"note": "t"}
    )
    m = load_checkpoint(tmp_path / "m.pt")
    assert m.model_version == v and m.scoring == cfg and m.preprocess == {"image_size": 32}
    a = score_images(recon, disc, x, cfg=cfg, stats=stats)
    b = score_images(m.recon, m.disc, x, cfg=m.scoring, stats=m.stats)
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.patch_scores, b.patch_scores)
    # the version is a content hash: same content -> same version, other weights -> other version
    assert (
        save_checkpoint(tmp_path / "m2.pt", recon, disc, preprocess={"image_size": 32}, scoring=cfg, stats=stats) == v
    )
    r2, d2 = _trained_pair(2)
    assert save_checkpoint(tmp_path / "m3.pt", r2, d2, preprocess={"image_size": 32}, scoring=cfg, stats=stats) != v


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"format": "patchrank-ckpt/1", "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(p)


def test_tampered_checkpoint_is_refused(tmp_path):
    recon, disc = _trained_pair()
    cfg = bare(grid_cell=4)
    stats = fit_score_stats(recon, disc, [(torch.randn(4, 1, 32, 32), None)], cfg)
    save_checkpoint(tmp_path / "m.pt", recon, disc, preprocess={}, scoring=cfg, stats=stats)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["stats"]["image_mean"] += 1.0
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="content hash"):
        load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_model_package_is_pure_pytorch():
    """`import model` must not pull in ray, redis, pyarrow, nibabel (or pydantic)."""
    code = (
        "import sys, patchrank.model, patchrank.model.checkpoint, patchrank.model.scoring, patchrank.model.train_step\n"
        "bad = [m for m in ('ray', 'redis', 'pyarrow', 'nibabel', 'pydantic', 'duckdb', 'pipeline') if m in "
        "sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_model_sources_import_only_torch_numpy():
    import ast
    from pathlib import Path

    allowed = {"torch", "numpy", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    for path in Path(__import__("patchrank.model").model.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for n in names:
                top = n.split(".")[0]
                assert top in allowed or top in stdlib, f"{path.name} imports {n}"
