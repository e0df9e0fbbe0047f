"""`bench quality --nested`: a real (tiny) nested run on a synthetic ISIC-style folder."""

from __future__ import annotations

import json

import pytest
from legacy_images import write_isic

from patchrank.pipeline.cli import main

TINY = {
    "ensemble": 1,  # one training per candidate (the preset's ensemble: tests/integration/test_ensemble_training.py)
    "preprocess": {"image_size": 32},
    "arch": {"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2},
}


@pytest.mark.timeout(600)
def test_bench_quality_nested_reports_outer_folds_only(tmp_path, monkeypatch):
    import patchrank.pipeline.training.local as tl

    trained = []
    real_fit = tl.fit_local
    monkeypatch.setattr(tl, "fit_local", lambda *a, **k: trained.append(a[3].name) or real_fit(*a, **k))
    write_isic(tmp_path / "isic")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    out, models = tmp_path / "o", tmp_path / "m"
    args = ["bench", "quality", "--data", str(tmp_path / "isic"), "--config", str(tmp_path / "tiny.json"),
            "--epochs", "1", "--folds", "2", "--nested", "2", "--nested-seeds", "1",
            "--methods", "patchrank,percentile", "--models", str(models), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    res = json.loads((out / "nested.json").read_text())
    inner_trainings = [n for n in trained if n.startswith("inner")]
    assert len(inner_trainings) == 2 * 2 * 3  # outer folds x inner folds x the candidates' 3 trainings (one seed)
    assert {r["method"] for r in res["runs"]} == {"patchrank_nested", "patchrank", "percentile"}
    for o in res["outer"]:
        test = set(res["folds"][o["fold"]])
        assert not test & {s for f in o["inner_splits"] for s in f}
        assert o["chosen"] in res["candidates"] and len(o["inner_auroc"]["preset"]) == 2
    table = (out / "nested.md").read_text()
    assert "| patchrank_nested |" in table and "(chosen)" in table and "Outer-fold numbers only" in table
    trained.clear()
    assert main(args) == 0  # the same models folder: every training is reused
    assert trained == [] and json.loads((out / "nested.json").read_text())["outer"] == res["outer"]
    # one process per outer fold, then --merge: the same outer folds as the single run
    for f in ("1", "2"):
        assert main([*args[:-2], "--only-folds", f, "--out", str(tmp_path / f"o{f}")]) == 0
    assert trained == []
    parts = [str(tmp_path / o / "nested.json") for o in ("o2", "o1")]
    assert main(["bench", "quality", "--merge", *parts, "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "nested.json").read_text())
    assert merged["outer"] == res["outer"]
    assert all(merged["summary"][m]["image_auroc"] == v["image_auroc"] for m, v in res["summary"].items())
    assert "outer folds with results: [1, 2] of 2" in (tmp_path / "merged" / "nested.md").read_text()
    # the outer `patchrank` row is the plain benchmark's on the same folds, trained afresh
    plain = ["bench", "quality", "--data", str(tmp_path / "isic"), "--config", str(tmp_path / "tiny.json"),
             "--epochs", "1", "--folds", "2", "--methods", "patchrank", "--models", str(tmp_path / "m2"),
             "--out", str(tmp_path / "p")]  # fmt: skip
    assert main(plain) == 0
    runs = json.loads((tmp_path / "p" / "quality.json").read_text())
    assert runs["folds"] == res["folds"]
    auroc = {(r["method"], r["fold"]): r["image_auroc"] for r in runs["runs"]}
    assert all(auroc[("patchrank", r["fold"])] == r["image_auroc"] for r in res["runs"] if r["method"] == "patchrank")
