"""`patchrank export --onnx`: the exported graphs score the same slices as the checkpoint, through ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from patchrank.model import ScoringConfig, build_networks, fit_score_stats, load_checkpoint, save_checkpoint
from patchrank.pipeline.cli import main
from patchrank.pipeline.onnx_model import OnnxDiscriminator, OnnxReconstructor, load_onnx
from patchrank.pipeline.scan_scoring import score_slices

pytest.importorskip("onnxruntime")


def _slices(n: int, seed: int, c: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    fg = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2)[None, None].expand(n, 1, -1, -1)
    x = (0.3 * torch.randn(n, c, size, size, generator=g)).clamp(-0.9, 0.9)
    return torch.where(fg, x, torch.full_like(x, -1.0)), fg.clone()


@pytest.mark.parametrize("c,scoring", [(1, {}), (3, {"feature_weight": 4.0, "disc_weight": 0.0})])
def test_export_scores_like_the_checkpoint(tmp_path, c, scoring, capsys):
    torch.manual_seed(0)
    arch = {"recon": {"in_channels": c, "base_channels": 4, "depth": 2},
            "disc": {"in_channels": c, "base_channels": 8, "n_layers": 2}}  # fmt: skip
    recon, disc = build_networks(arch)
    cfg = ScoringConfig(grid_cell=4, **scoring)
    x, fg = _slices(24, 1, c)
    stats = fit_score_stats(recon.eval(), disc.eval(), [(x, fg)], cfg)
    ck = tmp_path / "m.pt"
    save_checkpoint(ck, recon, disc, preprocess={"image_size": 32, "channels": c}, scoring=cfg, stats=stats)
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(ck), "--onnx", str(out)]) == 0
    assert "check: max |patch score difference|" in capsys.readouterr().out
    meta = json.loads((out / "patchrank.json").read_text())
    assert meta["preprocess"]["image_size"] == 32 and meta["scoring"]["grid_cell"] == 4
    assert {p.name for p in out.iterdir()} >= {"reconstructor.onnx", "discriminator.onnx", "patchrank.json"}
    ort, lm = load_onnx(out), load_checkpoint(ck)
    assert isinstance(ort.recon, OnnxReconstructor) and isinstance(ort.disc, OnnxDiscriminator)
    assert ort.model_version == lm.model_version and ort.scoring == lm.scoring
    t, tfg = _slices(7, 9, c)  # 7: a batch size the export never saw
    t[0, :, 10:16, 10:16] = 0.9
    a = score_slices(lm, t.numpy(), tfg.numpy(), batch_size=4)
    b = score_slices(ort, t.numpy(), tfg.numpy(), batch_size=4)
    assert a.image_scores.std() > 0.1
    for f in ("patch_scores", "image_scores", "pixel_map"):
        assert float((getattr(a, f) - getattr(b, f)).abs().max()) < 1e-3, f
    assert np.array_equal(a.valid.numpy(), b.valid.numpy())


def test_score_and_the_api_take_an_export_folder_as_the_checkpoint(tiny_checkpoint, phantom_dir, tmp_path):
    """The export keeps the checkpoint's modality and operating point: `score` skips a T1 file and flags alike."""
    import shutil

    import patchrank.api
    from patchrank.pipeline.evaluation import operating_point

    tiny = load_checkpoint(tiny_checkpoint)
    ck = tmp_path / "model.pt"
    save_checkpoint(ck, tiny.recon, tiny.disc, preprocess=tiny.preprocess, scoring=tiny.scoring, stats=tiny.stats,
                    meta={**tiny.meta, "modality": "flair"})  # fmt: skip
    operating_point.save(ck, load_checkpoint(ck).model_version, {"threshold": 0.0})
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(ck), "--onnx", str(out)]) == 0
    assert load_onnx(out).meta["modality"] == "flair"
    data = tmp_path / "data"
    data.mkdir()
    flair = next(phantom_dir.rglob("*_flair.nii.gz"))
    shutil.copy(flair, data / flair.name)
    shutil.copy(flair, data / flair.name.replace("_flair", "_t1"))
    got = {}
    for name, c in (("pt", ck), ("onnx", out)):
        assert main(["score", str(data), "--checkpoint", str(c), "--json", str(tmp_path / f"{name}.json")]) == 0
        got[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"]
    assert len(got["onnx"]) == 1 and got["onnx"][0]["flagged"] == got["pt"][0]["flagged"] is not None
    assert got["onnx"][0]["scan_score"] == pytest.approx(got["pt"][0]["scan_score"], abs=1e-3)
    assert patchrank.api.load(out).score(data / flair.name).scan_score == pytest.approx(
        got["pt"][0]["scan_score"], abs=1e-3
    )


def test_a_folder_that_is_no_export_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "scan_flair.nii.gz").write_bytes(b"x")
    assert main(["score", str(tmp_path / "scan_flair.nii.gz"), "--checkpoint", str(tmp_path)]) == 2
    assert "is a folder, not a checkpoint file" in capsys.readouterr().err
