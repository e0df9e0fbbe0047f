"""`ensemble: k`: `train` and the quality benchmark train k seeds and score with their mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from legacy_images import write_isic

from patchrank.model import load_checkpoint
from patchrank.pipeline.cli import main

TINY = {
    "epochs": 1,
    "critic_epochs": 1,
    "batch_size": 8,
    "preprocess": {"image_size": 32},
    "arch": {"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2},
}


@pytest.mark.timeout(300)
def test_train_writes_an_ensemble_of_seeds_and_resumes_it(phantom_dir, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(TINY))
    out = tmp_path / "e.pt"
    base = ["train", "--data", str(phantom_dir), "--config", str(cfg), "--seed", "3", "--quiet", "--ensemble", "2"]
    assert main([*base, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ensemble member 2/2 (seed 4)" in text and f"done: ensemble of 2 trainings {out}" in text
    ens = load_checkpoint(out)
    members = [load_checkpoint(tmp_path / "e.pt.members" / f"member{i}.pt") for i in range(2)]
    assert [m.meta["train_config"]["seed"] for m in members] == [3, 4]
    assert ens.meta["ensemble"] == [m.model_version for m in members]
    assert ens.meta["train_config"]["ensemble"] == 2 and ens.train_state is None
    # members hold out other subjects, but all of them train or calibrate on the same slices (`evaluate` reads them)
    assert ens.meta["seen_slices"] == members[0].meta["seen_slices"] == members[1].meta["seen_slices"]
    for mine, theirs in zip(ens.members, members):  # each member: weights and statistics of its own training
        assert torch.equal(mine.stats.pix_mean, theirs.stats.pix_mean)
        assert all(
            torch.equal(a, b) for a, b in zip(mine.recon.state_dict().values(), theirs.recon.state_dict().values())
        )
    # member 1 is the training `--seed 4` gives on its own
    assert main(["train", "--data", str(phantom_dir), "--config", str(cfg), "--seed", "4", "--quiet",
                 "--out", str(tmp_path / "s4.pt")]) == 0  # fmt: skip
    assert load_checkpoint(tmp_path / "s4.pt").model_version == members[1].model_version
    # --resume with a finished ensemble: nothing trains again, the same model
    curve = (tmp_path / "e.pt.members" / "member0.curve.csv").read_text()
    assert main([*base, "--out", str(out), "--resume"]) == 0
    assert load_checkpoint(out).model_version == ens.model_version
    assert (tmp_path / "e.pt.members" / "member0.curve.csv").read_text() == curve
    # --resume refuses files that are not this ensemble's members, before anything trains
    capsys.readouterr()
    for flags, out_name, message in (
        (["--seed", "5"], "e.pt", "member0.pt was trained with seed 3; member 0 of this ensemble needs seed 5"),
        (["--ensemble", "1"], "e.pt", "is an ensemble of 2 trainings: resume it with --ensemble 2"),
        ([], "s4.pt", "has no ensemble members under"),
    ):
        assert main([*base, *flags, "--out", str(tmp_path / out_name), "--resume"]) != 0
        assert message in capsys.readouterr().err
    assert load_checkpoint(out).model_version == ens.model_version


@pytest.mark.timeout(600)
def test_quality_benchmark_scores_the_ensemble_and_refits_each_members_statistics(tmp_path):
    from patchrank.pipeline.data.discover import discover
    from patchrank.pipeline.data.preprocess import load_prepared
    from patchrank.pipeline.scan_scoring import score_slices

    write_isic(tmp_path / "isic")
    (tmp_path / "tiny.json").write_text(json.dumps({**TINY, "ensemble": 2}))
    models, out = tmp_path / "m", tmp_path / "o"
    args = ["bench", "quality", "--data", str(tmp_path / "isic"), "--config", str(tmp_path / "tiny.json"),
            "--folds", "2", "--methods", "patchrank,no_shape", "--models", str(models), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    res = json.loads((out / "quality.json").read_text())
    ens = load_checkpoint(models / "patchrank_fold0.pt")
    assert len(ens.members) == 2 and sorted(p.name for p in (models / "patchrank_fold0.pt.members").glob("*.pt")) == [
        "member0.pt", "member1.pt"]  # fmt: skip
    assert not (models / "no_shape_fold0.pt").exists()  # a scoring-only ablation rescored the same members
    # the fold's AUROC is the one of the members' mean image score on the fold's test images
    test = set(res["folds"][0])
    records = [r for r in discover(tmp_path / "isic") if r.subject in test]
    preps = [load_prepared(r.path, ens.preprocess) for r in records]
    x = np.concatenate([p.images for p in preps])
    fg = np.concatenate([p.foreground for p in preps])
    parts = [load_checkpoint(models / "patchrank_fold0.pt.members" / f"member{i}.pt") for i in range(2)]
    mean = torch.stack([score_slices(m, x, fg).image_scores for m in parts]).mean(0).numpy()
    labels = np.array([r.label for r in records])
    pos, neg = mean[labels == 1], mean[labels == 0]
    auroc = float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))
    row = next(r for r in res["runs"] if r["method"] == "patchrank" and r["fold"] == 0)
    assert row["image_auroc"] == pytest.approx(auroc, abs=1e-6)
    assert {r["method"] for r in res["runs"]} == {"patchrank", "no_shape"}


@pytest.mark.timeout(300)
def test_nested_inner_trainings_are_ensembles_too(tmp_path):
    from patchrank.pipeline.data.discover import discover
    from patchrank.pipeline.evaluation.folds import build_fold
    from patchrank.pipeline.evaluation.nested import _trained
    from patchrank.pipeline.settings import TrainConfig

    write_isic(tmp_path / "isic")
    records = discover(tmp_path / "isic")
    cfg = TrainConfig(**{**TINY, "ensemble": 2, "preprocess": {**TINY["preprocess"], "channels": 3}})
    fold = build_fold(records, sorted({r.subject for r in records})[:6], cfg, 0)
    path = _trained(tmp_path / "inner.pt", fold, cfg, gpu=False)
    assert len(load_checkpoint(path).members) == 2
