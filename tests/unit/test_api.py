"""The Python API gives what `patchrank score` and `patchrank train` give."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import patchrank
from patchrank.pipeline.data.loaders import ScanError


@pytest.mark.slow
def test_load_and_score_match_the_scoring_path(tiny_checkpoint, phantom_dir):
    from patchrank.pipeline.data.preprocess import load_prepared
    from patchrank.pipeline.inference import load_for_inference
    from patchrank.pipeline.scan_scoring import score_prepared

    det = patchrank.load(tiny_checkpoint)
    path = sorted(phantom_dir.rglob("*_flair.nii.gz"))[-1]
    res = det.score(path, top=4, maps=True)
    lm = load_for_inference(tiny_checkpoint)  # the fast path, as `patchrank score` loads it
    ref = score_prepared(lm, load_prepared(path, lm.preprocess), top_n=4)
    assert res.scan_score == ref.scan_score and np.array_equal(res.slice_scores, ref.slice_scores)
    assert [p.rank for p in res.patches] == [1, 2, 3, 4] and res.patches == ref.patches
    assert res.maps.shape == (len(res.slice_scores), 32, 32) and det.model_version == lm.model_version
    frame = res.to_frame()
    assert list(frame["rank"]) == [1, 2, 3, 4] and frame["score"].is_monotonic_decreasing
    assert det.score(path).maps is None
    assert [r.scan_score for r in det.score_many([path, path])] == [res.scan_score] * 2
    with pytest.raises(ScanError):
        det.score(phantom_dir / "no_such_scan.nii.gz")


@pytest.mark.slow
def test_train_picks_the_preset_and_writes_a_loadable_checkpoint(phantom_dir, tmp_path, capsys):
    tiny = {"critic_epochs": 0, "batch_size": 8, "preprocess": {"image_size": 32}, "max_val_slices": 8,
            "arch": {"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2}}  # fmt: skip
    out = patchrank.train(phantom_dir, tmp_path / "m.pt", config=tiny, epochs=1)
    det = patchrank.load(out)
    assert det.model.meta["train_config"]["epochs"] == 1 and det.preprocess.image_size == 32
    assert det.model.scoring.context_radius == 6  # the brain-mri preset's scoring (volumes in the data)


def test_import_patchrank_installs_no_generic_top_level_names(tmp_path):
    names = "('model', 'pipeline', 'actors', 'deploy')"
    code = f"import patchrank, importlib.util as u; print([n for n in {names} if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
