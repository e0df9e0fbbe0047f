"""Train a tiny model on generated phantoms, save, load, score: in-process and via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchrank.model import load_checkpoint, score_images
from patchrank.pipeline.cli import main
from patchrank.pipeline.data.datasets import build_slices
from patchrank.pipeline.data.discover import discover
from patchrank.pipeline.data.preprocess import as_config


@pytest.mark.timeout(120)
def test_train_save_load_score(tiny_checkpoint, phantom_dir):
    m = load_checkpoint(tiny_checkpoint)
    assert m.preprocess["image_size"] == 32 and m.meta["epochs_done"] == 2  # 1 adversarial + 1 critic epoch
    assert m.train_state is not None and m.train_state["epoch"] == 1
    assert m.train_state["gan_epochs"] == 1 and m.train_state["critic_epochs"] == 1
    slices = build_slices(discover(phantom_dir), as_config(m.preprocess), normal_only=False)
    x = torch.from_numpy(slices.images[:8])
    fg = torch.from_numpy(slices.foreground[:8])
    a = score_images(m.recon, m.disc, x, cfg=m.scoring, stats=m.stats, foreground=fg)
    b = score_images(m.recon, m.disc, x, cfg=m.scoring, stats=m.stats, foreground=fg)
    assert torch.equal(a.image_scores, b.image_scores)
    assert torch.isfinite(a.patch_scores).all() and a.patch_scores.shape == (8, 8, 8)
    curve = tiny_checkpoint.with_suffix(".curve.csv").read_text().splitlines()
    assert curve[0].startswith("epoch,phase,") and [r.split(",")[1] for r in curve[1:]] == ["gan", "critic"]


@pytest.mark.timeout(180)
def test_cli_train_resume_and_score(tmp_path, phantom_dir, capsys):
    ckpt = tmp_path / "m.pt"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps({"arch": {"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2}, "critic_epochs": 1})
    )
    common = [
        "train",
        "--data",
        str(phantom_dir),
        "--out",
        str(ckpt),
        "--config",
        str(cfg),
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--quiet",
    ]
    assert main([*common, "--epochs", "1"]) == 0
    v1 = load_checkpoint(ckpt)
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    v2 = load_checkpoint(ckpt)
    # a finished run (adversarial epoch 1, critic epoch 2) resumed with --epochs 2: one more
    # adversarial epoch, then the critic phase again, because the discriminator moved
    assert v2.train_state["epoch"] == 3 and v2.meta["epochs_done"] == 4 and v2.train_state["gan_epochs"] == 2
    assert v2.model_version != v1.model_version
    rows = ckpt.with_suffix(".curve.csv").read_text().splitlines()
    assert [tuple(r.split(",")[:2]) for r in rows[1:]] == [
        ("1", "gan"),
        ("2", "critic"),
        ("3", "gan"),
        ("4", "critic"),
    ]  # continued

    out_json = tmp_path / "scores.json"
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    assert (
        main(
            [
                "score",
                str(phantom_dir),
                str(tmp_path / "junk.nii.gz"),
                "--checkpoint",
                str(ckpt),
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    res = json.loads(out_json.read_text())["results"]
    assert sum(r["status"] == "ok" for r in res) == 8
    failed = [r for r in res if r["status"] == "failed"]
    assert len(failed) == 1 and "corrupt" in failed[0]["error"]
    scores = [r["scan_score"] for r in res if r["status"] == "ok"]
    assert np.isfinite(scores).all()
    assert "FAILED" in capsys.readouterr().out


def test_cli_reports_clear_errors(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m.pt"), "--quiet"]) == 2
    assert "data path not found" in capsys.readouterr().err
    assert main(["score", str(tmp_path), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
