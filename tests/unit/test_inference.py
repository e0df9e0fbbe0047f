"""The fast inference path (pipeline.inference) scores like the eager one; maps are skipped only when not asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchrank.model import LoadedModel, ScoringConfig, build_networks, fit_score_stats, save_checkpoint, score_images
from patchrank.pipeline.data.prefetch import prefetched
from patchrank.pipeline.inference import inference_threads, is_prepared, load_for_inference, prepare_for_inference
from patchrank.pipeline.scan_scoring import rank_patches, score_slices
from patchrank.pipeline.service.slice_scorer import SliceChunk, SliceScorer, merge_chunks

ARCH = {"recon": {"in_channels": 1, "base_channels": 4, "depth": 2}, "disc": {"in_channels": 1, "base_channels": 8,
                                                                              "n_layers": 2}}  # fmt: skip


def _slices(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Disc-shaped 'brains' with texture and a background of -1: (n, 1, size, size), foreground (n, 1, size, size)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    fg = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2)[None, None].expand(n, 1, -1, -1)
    x = (0.3 * torch.randn(n, 1, size, size, generator=g)).clamp(-0.9, 0.9)
    return torch.where(fg, x, torch.full_like(x, -1.0)), fg.clone()


def _model(seed: int = 0, **scoring):
    torch.manual_seed(seed)
    recon, disc = build_networks(ARCH)
    recon.eval(), disc.eval()
    cfg = ScoringConfig(grid_cell=4, **scoring)
    x, fg = _slices(24, seed=1)
    stats = fit_score_stats(recon, disc, [(x[:12], fg[:12]), (x[12:], fg[12:])], cfg)
    return recon, disc, cfg, stats


@pytest.mark.parametrize("scoring", [{}, {"feature_weight": 4.0, "disc_weight": 0.0}])
def test_prepared_networks_score_like_eager_ones(scoring):
    recon, disc, cfg, stats = _model(**scoring)
    eager = LoadedModel(recon, disc, {"image_size": 32}, cfg, stats, "v", {})
    fast = prepare_for_inference(eager, threads=1)
    assert is_prepared(fast) and not is_prepared(eager) and prepare_for_inference(fast) is fast
    x, fg = _slices(6, seed=7)
    x[0, 0, 12:18, 12:18] = 0.9  # a bright "lesion"
    a = score_images(recon, disc, x, cfg=cfg, stats=stats, foreground=fg)
    b = score_images(fast.recon, fast.disc, x, cfg=cfg, stats=stats, foreground=fg)
    assert torch.equal(a.valid, b.valid)
    for f in ("patch_scores", "rec", "disc", "image_scores", "pixel_map"):
        assert float((getattr(a, f) - getattr(b, f)).abs().max()) < 1e-3, f
    assert a.image_scores.std() > 0.1  # z units that vary: the tolerance is meaningful
    assert int(a.image_scores.argmax()) == int(b.image_scores.argmax()) == 0


def test_maps_false_skips_only_the_pixel_map():
    recon, disc, cfg, stats = _model()
    x, fg = _slices(4, seed=3)
    full = score_images(recon, disc, x, cfg=cfg, stats=stats, foreground=fg)
    lean = score_images(recon, disc, x, cfg=cfg, stats=stats, foreground=fg, maps=False)
    assert lean.pixel_map is None and full.pixel_map.shape == (4, 32, 32)
    for f in ("patch_scores", "rec", "disc", "valid", "image_scores"):
        assert torch.equal(getattr(full, f), getattr(lean, f)), f
    assert rank_patches(lean, np.arange(4), (32, 32), 5, image_size=32) == rank_patches(full, np.arange(4), (32, 32), 5)


@pytest.fixture()
def tiny_ckpt(tmp_path):
    recon, disc, cfg, stats = _model()
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, recon, disc, preprocess={"image_size": 32, "channels": 1}, scoring=cfg, stats=stats)
    return path


def test_load_for_inference_and_the_slice_scorer_return_maps_only_when_asked(tiny_ckpt):
    eager, fast = load_for_inference(tiny_ckpt, fast=False), load_for_inference(tiny_ckpt)
    assert is_prepared(fast) and not is_prepared(eager) and fast.model_version == eager.model_version
    x, fg = _slices(10, seed=5)
    images, fgs = x.numpy(), fg.numpy()
    a = score_slices(eager, images, fgs, batch_size=4)
    b = score_slices(fast, images, fgs, batch_size=4, maps=False)
    assert b.pixel_map is None and a.pixel_map.shape == (10, 32, 32)
    assert float((a.patch_scores - b.patch_scores).abs().max()) < 1e-3
    assert float((a.image_scores - b.image_scores).abs().max()) < 1e-3
    scorer = SliceScorer(str(tiny_ckpt))
    assert is_prepared(scorer.model)
    lean = scorer.score_chunks([SliceChunk(images[:6], fgs[:6]), SliceChunk(images[6:], fgs[6:])])
    assert all(r.pixel_map is None for r in lean)
    merged = merge_chunks(lean)
    assert merged.pixel_map is None and torch.allclose(merged.image_scores, b.image_scores, atol=1e-5)
    with_maps = scorer.score_chunks([SliceChunk(images[:6], fgs[:6], maps=True)])[0]
    assert with_maps.pixel_map.shape == (6, 32, 32) and with_maps.pixel_map.dtype == np.float16


def test_prefetched_keeps_order_and_raises_where_the_item_is_used():
    loaded = []

    def load(i):
        loaded.append(i)
        if i == 2:
            raise ValueError("bad scan")
        return i * 10

    got = []
    for item, fut in prefetched(range(5), load):
        try:
            got.append((item, fut.result()))
        except ValueError:
            got.append((item, None))
    assert got == [(0, 0), (1, 10), (2, None), (3, 30), (4, 40)] and sorted(loaded) == [0, 1, 2, 3, 4]
    assert list(prefetched([], load)) == []


def test_inference_threads_follow_the_cpus_given():
    assert inference_threads(0.5) == 1 and inference_threads(3.0) == 3 and inference_threads() >= 1


def test_bench_score_reports_eager_and_fast_in_one_run(tiny_ckpt, phantom_dir, tmp_path):
    from patchrank.pipeline.cli import main

    files = [str(p) for p in sorted(phantom_dir.rglob("*_flair.nii.gz"))[:2]]
    out = tmp_path / "bench.json"
    args = ["bench", "score", "--checkpoint", str(tiny_ckpt), "--data", *files, "--reps", "2", "--threads", "1"]
    assert main([*args, "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["eager_slices_per_s"] > 0 and r["fast_slices_per_s"] > 0 and r["scans"] == 2 and r["slices"] > 2
    assert 0 <= r["max_abs_score_diff"] < 1e-3 and len(r["seconds"]["eager"]) == 2 and r["threads"] == 1


def test_the_load_time_test_forward_runs_on_the_networks_that_will_score(tiny_ckpt, monkeypatch):
    import patchrank.pipeline.inference as inference

    seen = []
    real = inference.validate_loaded
    monkeypatch.setattr(inference, "validate_loaded", lambda model, path: seen.append(model) or real(model, path))
    fast, eager = load_for_inference(tiny_ckpt), load_for_inference(tiny_ckpt, fast=False)
    assert seen == [fast, eager] and is_prepared(seen[0]) and not is_prepared(seen[1])
