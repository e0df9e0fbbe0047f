"""Fast vs eager scoring on real BraTS FLAIR volumes and ISIC dermoscopy images (skipped without ../shared/data).

The models have the default architecture of each preset at its default image size, seeded weights, and score
statistics fitted on real normal slices, so scores are in the z units a user sees; fast (pipeline.inference) and
eager must agree within 1e-3 z on patch, slice and scan scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from patchrank.model.scoring import fit_score_stats
from patchrank.pipeline.inference import prepare_for_inference
from patchrank.pipeline.scan_scoring import finish_scan, score_slices

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TOL = 1e-3


def _models(records, data_cfg_over: dict):
    from patchrank.model.checkpoint import LoadedModel
    from patchrank.pipeline.data.discover import config_for
    from patchrank.pipeline.training.loop import build_models

    cfg, _ = config_for(records, None, data_cfg_over)
    torch.manual_seed(0)
    recon, disc = build_models(cfg)
    recon.eval(), disc.eval()
    return cfg, lambda stats: LoadedModel(recon, disc, cfg.preprocess.model_dump(), cfg.saved_scoring(), stats, "t", {})


def _compare(eager, fast, preps) -> torch.Tensor:
    """Each scan through both -> the eager slice scores of all of them."""
    seen = []
    for p in preps:
        a = score_slices(eager, p.images, p.foreground, p.position, maps=True)
        b = score_slices(fast, p.images, p.foreground, p.position, maps=False)
        assert b.pixel_map is None and torch.equal(a.valid, b.valid)
        assert float((a.patch_scores - b.patch_scores).abs().max()) < TOL
        assert float((a.image_scores - b.image_scores).abs().max()) < TOL
        sa, sb = finish_scan(a.image_scores, p, eager.scoring), finish_scan(b.image_scores, p, fast.scoring)
        assert abs(sa.scan_score - sb.scan_score) < TOL
        seen.append(a.image_scores)
    return torch.cat(seen)


def _fast(model):
    return prepare_for_inference(model)


def test_brats_fast_equals_eager(shared_data):
    from patchrank.pipeline.data.datasets import load_record
    from patchrank.pipeline.data.discover import discover

    records = discover(shared_data / "brats2015")[:2]
    cfg, make = _models(records, {"preprocess": {"pose": False}})  # registered volumes: pose is no part of this
    preps = [load_record(r, cfg.preprocess) for r in records]
    normal = preps[0].lesion_voxels == 0
    x = torch.from_numpy(preps[0].images[normal][::2][:48])
    fg = torch.from_numpy(preps[0].foreground[normal][::2][:48])
    pos = torch.from_numpy(preps[0].position[normal][::2][:48])
    batches = [(x[i : i + 16], fg[i : i + 16], pos[i : i + 16]) for i in range(0, len(x), 16)]
    stats = fit_score_stats(make(None).recon, make(None).disc, batches, cfg.saved_scoring())
    eager = make(stats)
    test = preps[1]
    test.images, test.foreground = test.images[::3], test.foreground[::3]  # every third slice keeps it short
    test.position, test.slice_index = test.position[::3], test.slice_index[::3]
    assert float(_compare(eager, _fast(eager), [test]).std()) > 0.1  # scores vary: the tolerance means something


def test_isic_fast_equals_eager(shared_data):
    from patchrank.pipeline.data.discover import discover
    from patchrank.pipeline.data.preprocess import load_prepared

    records = discover(shared_data / "isic2016_train")[:40]
    cfg, make = _models(records, {})
    assert cfg.scoring.feature_weight > 0  # the dermoscopy preset: the encoder's features count too
    preps = [load_prepared(r.path, cfg.preprocess) for r in records]
    x = torch.from_numpy(np.concatenate([p.images for p in preps[:28]]))
    fg = torch.from_numpy(np.concatenate([p.foreground for p in preps[:28]]))
    stats = fit_score_stats(make(None).recon, make(None).disc, [(x[:14], fg[:14]), (x[14:], fg[14:])],
                            cfg.saved_scoring())  # fmt: skip
    eager = make(stats)
    assert float(_compare(eager, _fast(eager), preps[28:]).std()) > 0.1  # scores vary: the tolerance means something
