"""Ensembles: one checkpoint (format 3) holding k trainings, scored as the mean of its members, everywhere."""

from __future__ import annotations

import json

import pytest
import torch

from patchrank.model import (
    CheckpointError,
    ScoringConfig,
    build_networks,
    fit_score_stats,
    load_checkpoint,
    save_checkpoint,
    save_ensemble,
)
from patchrank.model.checkpoint import content_version
from patchrank.pipeline.scan_scoring import score_slices

ARCH = {"recon": {"in_channels": 3, "base_channels": 4, "depth": 2},
        "disc": {"in_channels": 3, "base_channels": 8, "n_layers": 2}}  # fmt: skip
PRE = {"image_size": 32, "channels": 3}
CFG = ScoringConfig(grid_cell=4, feature_weight=4.0, disc_weight=0.0)


def _slices(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    fg = ((yy - 16) ** 2 + (xx - 16) ** 2 < 13**2)[None, None].expand(n, 1, -1, -1)
    x = (0.3 * torch.randn(n, 3, 32, 32, generator=g)).clamp(-0.9, 0.9)
    return torch.where(fg, x, torch.full_like(x, -1.0)), fg.clone()


def _trained(path, seed: int, pre: dict = PRE):
    torch.manual_seed(seed)
    recon, disc = build_networks(ARCH)
    x, fg = _slices(24, 100 + seed)
    stats = fit_score_stats(recon.eval(), disc.eval(), [(x, fg)], CFG)
    save_checkpoint(path, recon, disc, preprocess=pre, scoring=CFG, stats=stats, meta={"train_config": {"seed": seed}})
    return path


@pytest.fixture()
def parts(tmp_path):
    return [_trained(tmp_path / f"m{i}.pt", i) for i in range(3)]


def test_an_ensemble_scores_the_mean_of_its_members(parts, tmp_path):
    version = save_ensemble(tmp_path / "e.pt", parts, meta={"train_config": {"seed": 0, "ensemble": 3}})
    ens = load_checkpoint(tmp_path / "e.pt")
    singles = [load_checkpoint(p) for p in parts]
    assert ens.model_version == version and len(ens.members) == 3
    assert ens.meta["ensemble"] == [m.model_version for m in singles] and ens.meta["train_config"]["ensemble"] == 3
    assert version not in {m.model_version for m in singles}
    assert torch.load(tmp_path / "e.pt", weights_only=True)["format"] == "patchrank-ckpt/3"
    x, fg = _slices(5, 7)
    x[0, :, 10:16, 10:16] = -0.9  # a dark blot: a lesion-like patch
    got = score_slices(ens, x.numpy(), fg.numpy())
    each = [score_slices(m, x.numpy(), fg.numpy()) for m in singles]
    assert float(torch.stack([e.image_scores for e in each]).std(0).max()) > 1e-3  # the members disagree
    for f in ("image_scores", "patch_scores", "rec", "pixel_map", "composite"):
        want = torch.stack([getattr(e, f) for e in each]).mean(0)
        assert torch.allclose(getattr(got, f), want, atol=1e-5), f
    assert torch.equal(got.valid, each[0].valid)


def test_single_trainings_keep_format_2_and_their_versions(parts):
    payload = torch.load(parts[0], weights_only=True)
    assert payload["format"] == "patchrank-ckpt/2" and "members" not in payload
    assert content_version(payload) == payload["model_version"] == load_checkpoint(parts[0]).model_version


def _rewrite(path, change) -> None:
    payload = torch.load(path, weights_only=True)
    change(payload)
    payload["model_version"] = content_version(payload)  # a writer can hash anything: the checks must hold anyway
    torch.save(payload, path)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: p["members"][1]["recon_state"].__setitem__(
            next(iter(p["members"][1]["recon_state"])), torch.tensor(float("nan"))), "members\\[1\\].recon_state"),
        (lambda p: p["members"][0]["stats"].__setitem__("image_std", -1.0), "image_std must be positive"),
        (lambda p: p.__setitem__("format", "patchrank-ckpt/2"), "format patchrank-ckpt/3 only"),
        (lambda p: p.pop("members"), "format patchrank-ckpt/3 only"),
        (lambda p: p.__setitem__("members", [p["members"][0]] * 16), "1..15 further members"),
        (lambda p: p.__setitem__("members", []), "1..15 further members"),
        (lambda p: p["members"][1]["stats"]["terms"]["features"].__setitem__(
            "feat_mean", torch.tensor(float("inf"))), "statistic members\\[1\\].features.feat_mean"),
    ],
)  # fmt: skip
def test_a_broken_ensemble_is_refused_at_load(parts, tmp_path, change, message):
    save_ensemble(tmp_path / "e.pt", parts)
    _rewrite(tmp_path / "e.pt", change)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path / "e.pt")


def test_an_edited_member_fails_the_content_hash(parts, tmp_path):
    save_ensemble(tmp_path / "e.pt", parts)
    payload = torch.load(tmp_path / "e.pt", weights_only=True)
    state = payload["members"][0]["disc_state"]
    key = next(iter(state))
    state[key] = state[key] + 1e-3  # the member's weights count in model_version
    torch.save(payload, tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="content hash"):
        load_checkpoint(tmp_path / "e.pt")


def test_save_ensemble_refuses_parts_that_do_not_belong_together(parts, tmp_path):
    other = _trained(tmp_path / "other.pt", 5, {"image_size": 32, "channels": 3, "image_hair": True})
    with pytest.raises(ValueError, match="differs from .* in preprocessing"):
        save_ensemble(tmp_path / "e.pt", [parts[0], other])
    with pytest.raises(ValueError, match="at least two"):
        save_ensemble(tmp_path / "e.pt", parts[:1])
    with pytest.raises(ValueError, match="the same training is given twice"):
        save_ensemble(tmp_path / "e.pt", [parts[0], parts[1], parts[0]])
    other = _trained(tmp_path / "other.pt", 6)
    payload = torch.load(other, weights_only=True)
    payload["meta"]["train_config"] = {"seed": 6, "epochs": 99}
    payload["model_version"] = content_version(payload)
    torch.save(payload, other)
    with pytest.raises(ValueError, match="or training"):
        save_ensemble(tmp_path / "e.pt", [parts[0], other])
    save_ensemble(tmp_path / "e.pt", parts[:2])
    with pytest.raises(ValueError, match="an ensemble already"):
        save_ensemble(tmp_path / "e2.pt", [parts[2], tmp_path / "e.pt"])


def test_fast_path_and_onnx_export_score_every_member(parts, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from patchrank.pipeline.cli import main
    from patchrank.pipeline.inference import load_for_inference
    from patchrank.pipeline.onnx_model import OnnxReconstructor, load_onnx

    save_ensemble(tmp_path / "e.pt", parts)
    eager = load_checkpoint(tmp_path / "e.pt")
    fast = load_for_inference(tmp_path / "e.pt")
    out = tmp_path / "onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "e.pt"), "--onnx", str(out)]) == 0
    assert "check: max |patch score difference|" in capsys.readouterr().out
    meta = json.loads((out / "patchrank.json").read_text())
    assert meta["format"] == "patchrank-onnx/2" and [m["folder"] for m in meta["members"]] == ["member1", "member2"]
    exported = load_onnx(out)
    x, fg = _slices(6, 3)
    want = score_slices(eager, x.numpy(), fg.numpy())
    for model in (fast, exported):
        assert len(model.members) == 3 and model.model_version == eager.model_version
        assert all(isinstance(m.recon, OnnxReconstructor) for m in model.members)
        got = score_slices(model, x.numpy(), fg.numpy())
        for f in ("image_scores", "patch_scores", "pixel_map"):
            assert float((getattr(got, f) - getattr(want, f)).abs().max()) < 1e-3, f
    for where, outside in (("members", "../elsewhere"), ("stats_file", "/etc/hostname"), ("graphs", "../x.onnx")):
        bad = json.loads(json.dumps(meta))
        if where == "members":
            bad["members"][0]["folder"] = outside
        elif where == "graphs":
            bad["graphs"]["encoder"]["file"] = outside
        else:
            bad[where] = outside
        (out / "patchrank.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match="outside the export"):
            load_onnx(out)
