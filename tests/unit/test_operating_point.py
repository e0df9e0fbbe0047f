"""The operating point: threshold at a false-positive rate on normal scans, stored beside the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from patchrank.pipeline.evaluation import operating_point as op


def test_threshold_at_five_percent_fpr_known_answer():
    normal = np.arange(40, dtype=float)  # 0..39: 5 % of 40 = 2 normals may be flagged -> threshold 38
    abnormal = np.array([37.5, 38.0, 50.0, 60.0])
    p = op.fit_threshold(np.r_[normal, abnormal], np.r_[np.zeros(40), np.ones(4)], fpr=0.05)
    assert p["threshold"] == 38.0 and p["fpr"] == 0.05 and p["tpr"] == 0.75
    strict = op.fit_threshold(normal, np.zeros(40), fpr=0.0)
    assert strict["threshold"] > 39.0 and strict["fpr"] == 0.0 and strict["tpr"] is None
    with pytest.raises(ValueError):
        op.fit_threshold(abnormal, np.ones(4))


def test_sidecar_is_keyed_by_model_version(tmp_path):
    ckpt = tmp_path / "m.pt"
    op.save(ckpt, "v1", {"threshold": 1.5})
    assert op.load(ckpt, "v1") == 1.5 and op.load(ckpt, "v2") is None
    op.sidecar(ckpt).write_text("not json")
    assert op.load(ckpt, "v1") is None
    assert op.flagged(2.0, 1.5) is True and op.flagged(1.0, 1.5) is False
    assert op.flagged(2.0, None) is None and op.flagged(float("nan"), 1.5) is None


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """Phantoms the session checkpoint never saw (another seed than conftest's phantom_dir)."""
    from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset

    root = tmp_path_factory.mktemp("heldout")
    write_phantom_dataset(
        root, PhantomSpec(shape=(64, 64, 24), n_normal=4, n_abnormal=4, min_radius=3, max_radius=6, seed=7)
    )
    return root


def _evaluate(tiny_checkpoint, data, tmp_path, capsys) -> tuple:
    """`evaluate --quiet` of a copy of the session checkpoint on `data` -> (copy, stdout, report.json)."""
    import shutil

    from patchrank.pipeline.cli import main

    ckpt = tmp_path / "model.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    args = ["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(tmp_path / "ev"), "--quiet"]
    assert main(args) == 0
    return ckpt, capsys.readouterr().out, json.loads((tmp_path / "ev" / "report.json").read_text())


def test_evaluate_fits_it_and_score_flags(tiny_checkpoint, heldout, tmp_path, capsys):
    from patchrank.pipeline.cli import main

    ckpt, out, rep = _evaluate(tiny_checkpoint, heldout, tmp_path, capsys)
    assert "WARNING: " not in out.replace("WARNING: at this operating point only", "")
    assert "% of the abnormal ones (TPR " in out and "% of the normal scans (FPR " in out
    assert rep["n_normal_scans"] == 4 and rep["n_abnormal_scans"] == 4 and 0.0 <= rep["scan_auroc"] <= 1.0
    assert rep["n_scans_seen_in_training"] == 0
    point = json.loads(op.sidecar(ckpt).read_text())
    assert point["threshold"] == rep["operating_point"]["threshold"] and point["fpr"] <= 0.05
    out = tmp_path / "s.json"
    assert main(["score", str(heldout), "--checkpoint", str(ckpt), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["flagged"] for r in rows] == [r["scan_score"] >= point["threshold"] for r in rows]


def test_evaluate_on_the_training_scans_warns_and_fits_nothing(tiny_checkpoint, phantom_dir, tmp_path, capsys):
    """tiny_checkpoint was trained on phantom_dir's normal slices: every scan there was seen."""
    ckpt, out, rep = _evaluate(tiny_checkpoint, phantom_dir, tmp_path, capsys)
    assert f"WARNING: 8 of 8 scans in {phantom_dir} were used to train this checkpoint" in out
    assert "operating point not fitted: these scans include training scans" in out
    assert not op.sidecar(ckpt).exists()
    assert rep["n_scans_seen_in_training"] == 8 and "operating_point" not in rep


def test_evaluate_without_normal_scans_says_why_no_operating_point(tiny_checkpoint, tmp_path, capsys):
    from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset

    data = tmp_path / "abnormal"
    write_phantom_dataset(data, PhantomSpec(shape=(64, 64, 24), n_normal=0, n_abnormal=2, min_radius=3, seed=8))
    ckpt, out, _ = _evaluate(tiny_checkpoint, data, tmp_path, capsys)
    assert "operating point not fitted: no normal scans among these" in out
    assert not op.sidecar(ckpt).exists()
