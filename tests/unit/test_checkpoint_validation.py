"""Load-time validation of checkpoints (issue 23, items 5 and 7): a checkpoint whose content hash
was recomputed after an edit must still be able to score. Before, NaN statistics loaded and
gave `ok` rows with NULL scores, and image_size 16 loaded and then failed every scan at scoring
time as an infrastructure fault (~100 s of retries each). Now each is refused at load, in one
line, before any scan is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from patchrank.model.checkpoint import CheckpointError, content_version, load_checkpoint

DATA = Path(__file__).resolve().parents[1] / "data"


def _edited(tmp_path: Path, name: str, edit) -> Path:
    """The legacy brain checkpoint with `edit(payload)` applied and its hash recomputed."""
    payload = torch.load(DATA / "legacy_v0_brain.pt", weights_only=True)
    edit(payload)
    payload["model_version"] = content_version(payload)
    out = tmp_path / f"{name}.pt"
    torch.save(payload, out)
    return out


def _refused(path: Path, expect: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert expect in msg and "\n" not in msg and len(msg) < 300, msg
    return msg


def test_the_untouched_checkpoints_load(tmp_path):
    for name in ("legacy_v0_brain.pt", "legacy_v0_skin.pt"):
        assert load_checkpoint(DATA / name).model_version
    assert load_checkpoint(_edited(tmp_path, "same", lambda p: None)).model_version


def test_nan_statistics_are_refused(tmp_path):
    def nan_std(p):
        p["stats"]["pix_std"][0, 0, 3, 3] = float("nan")

    _refused(_edited(tmp_path, "nan", nan_std), "non-finite")

    def nan_scalar(p):
        p["stats"]["image_mean"] = float("nan")

    _refused(_edited(tmp_path, "nan2", nan_scalar), "not finite")

    def zero_std(p):
        p["stats"]["image_std"] = 0.0

    _refused(_edited(tmp_path, "zero", zero_std), "must be positive")

    def nan_term(p):  # an evidence term's statistics (the anatomy atlas)
        p["stats"]["int_mean"][0, 0, 0, 0] = float("inf")

    _refused(_edited(tmp_path, "nan3", nan_term), "non-finite")


def test_image_size_that_does_not_fit_the_statistics_is_refused(tmp_path):
    def size16(p):
        p["preprocess"]["image_size"] = 16

    _refused(_edited(tmp_path, "s16", size16), "image_size 16")


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    def shape(p):
        key = next(iter(p["recon_state"]))
        p["recon_state"][key] = torch.zeros(3, 3)

    _refused(_edited(tmp_path, "shape", shape), "the architecture needs")

    def nan_weight(p):
        key = next(k for k, v in p["disc_state"].items() if v.is_floating_point())
        p["disc_state"][key] = p["disc_state"][key] * float("nan")

    _refused(_edited(tmp_path, "nanw", nan_weight), "non-finite")


def test_bad_checkpoint_is_one_line_on_the_cli(tmp_path, capsys):
    from patchrank.pipeline.cli import main

    def size16(p):
        p["preprocess"]["image_size"] = 16

    bad = _edited(tmp_path, "s16", size16)
    scan = tmp_path / "x.nii.gz"
    scan.write_bytes(b"")
    for argv in (["score", str(scan)], ["screen", str(scan), "--out", str(tmp_path / "o")]):
        assert main([*argv, "--checkpoint", str(bad)]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "image_size 16" in err, err
