"""Bad flags and unusable output paths are refused before any work (no data read, no service started), and what
was passed over or failed is named."""

from __future__ import annotations

import json

import pytest

from patchrank.pipeline.cli import main


def _usage_error(capsys, argv: list[str]) -> str:
    """argparse's refusal: exit 2, the last stderr line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["score", "x", "--checkpoint", "m.pt", "--top", "-1"], "argument --top: must be >= 0, got -1"),
        (["evaluate", "--checkpoint", "m", "--data", "d", "--out", "o", "--fpr", "2"], "--fpr: must be >= 0 and < 1"),
        (["evaluate", "--checkpoint", "m", "--data", "d", "--out", "o", "--fpr", "nan"], "--fpr: must be >= 0"),
        (["query", "r", "--top", "-1"], "argument --top: must be >= 0, got -1"),
        (["report", "r", "--top", "0"], "argument --top: must be >= 1, got 0"),
        (["screen", "x", "--checkpoint", "m", "--out", "o", "--retry-after", "0"], "--retry-after: must be >= 0.1"),
        (
            ["screen", "x", "--checkpoint", "m", "--out", "o", "--inflight", "300"],
            "--inflight: must be >= 1 and <= 256",
        ),
        (["query", "r", "--sql", "SELECT 1", "--flagged"], "not allowed with argument"),
        (["screen", "x", "--checkpoint", "m", "--out", "o", "--batch-size", "0"], "--batch-size: must be >= 1"),
        (["screen", "x", "--checkpoint", "m", "--out", "o", "--timeout", "-1"], "--timeout: must be > 0"),
        (["screen", "x", "--checkpoint", "m", "--out", "o", "--scorer-replicas", "two"], "not an integer: 'two'"),
        (["score", "x", "--checkpoint", "m", "--modality-pattern", "(["], "not a valid regular expression"),
    ],
)
def test_bad_numbers_and_conflicting_flags_are_usage_errors(capsys, argv, expected):
    assert expected in _usage_error(capsys, argv)


def test_an_operating_point_needs_a_rate_below_one():
    import numpy as np

    from patchrank.pipeline.evaluation.operating_point import fit_threshold

    with pytest.raises(ValueError, match="must be >= 0 and < 1, got 2"):
        fit_threshold(np.arange(4.0), np.zeros(4), fpr=2)


@pytest.mark.timeout(60)  # a zero-sized phantom used to loop forever placing its lesions
def test_phantom_sizes_are_checked_and_nothing_written(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", str(out), "--shape", "0", "0", "0"]) == 2
    assert "phantom shape (0, 0, 0): X and Y must be 16-512 voxels, Z 4-512" in capsys.readouterr().err
    assert "argument --normal: must be >= 0, got -1" in _usage_error(capsys, ["phantom", str(out), "--normal", "-1"])
    assert not out.exists()


def test_screen_into_a_file_fails_before_starting_services(tiny_checkpoint, phantom_dir, tmp_path, capsys):
    target = tmp_path / "results.parquet"
    target.write_text("not a folder")
    argv = ["screen", str(phantom_dir), "--checkpoint", str(tiny_checkpoint), "--out", str(target)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "redis-server" not in out
    assert err.strip() == f"patchrank screen: error: --out {target} is a file: give a folder"


def test_train_refuses_an_out_in_a_missing_folder_and_storage_without_workers(phantom_dir, tmp_path, capsys):
    out = tmp_path / "nope" / "m.pt"
    assert main(["train", "--data", str(phantom_dir), "--out", str(out)]) == 2
    out_err = capsys.readouterr()
    assert "preset" not in out_err.out  # refused before the data was read
    assert out_err.err.strip() == f"patchrank train: error: --out {out}: the folder {out.parent} does not exist"
    argv = ["train", "--data", str(phantom_dir), "--out", str(tmp_path / "m.pt"), "--storage", str(tmp_path / "s")]
    assert main(argv) == 2
    assert "--storage keeps Ray Train's runs: give --workers N" in capsys.readouterr().err
    # --gpu with Ray Train is not judged by this machine's devices (the GPUs may be on other nodes)
    assert main(["train", "--data", str(phantom_dir), "--out", str(out), "--gpu", "--workers", "1"]) == 2
    assert f"--out {out}: the folder" in capsys.readouterr().err


def test_score_checks_json_and_maps_before_scoring(tiny_checkpoint, phantom_dir, tmp_path, capsys):
    scan = str(next(phantom_dir.rglob("*flair.nii.gz")))
    missing = tmp_path / "nope" / "r.json"
    assert main(["score", scan, "--checkpoint", str(tiny_checkpoint), "--json", str(missing)]) == 2
    out, err = capsys.readouterr()
    assert "rank" not in out and f"--json {missing}: the folder {missing.parent} does not exist" in err
    blocker = tmp_path / "maps"
    blocker.write_text("x")
    assert main(["score", scan, "--checkpoint", str(tiny_checkpoint), "--maps", str(blocker)]) == 2
    assert f"--maps {blocker} is a file: give a folder" in capsys.readouterr().err


def test_query_png_needs_a_scan_and_may_go_to_a_new_folder(tmp_path, capsys):
    assert main(["query", str(tmp_path), "--png", str(tmp_path / "h.png")]) == 2
    assert "--png draws one scan: give --scan SCAN_ID too" in capsys.readouterr().err
    from patchrank.pipeline.commands.options import output_file

    output_file(str(tmp_path / "new" / "h.png"), "--png", new_folder=True)  # its writer creates the folder
    with pytest.raises(ValueError, match="the folder .* does not exist"):
        output_file(str(tmp_path / "new" / "h.png"), "--png")


def test_an_unknown_setting_names_the_nested_one(phantom_dir, tmp_path, capsys):
    over = tmp_path / "over.json"
    over.write_text(json.dumps({"image_size": 64}))
    assert main(["train", "--data", str(phantom_dir), "--out", str(tmp_path / "m.pt"), "--config", str(over)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "patchrank train: error: image_size: unknown setting (did you mean preprocess.image_size?)"


def test_skipped_lines_count_and_name_by_reason():
    from patchrank.pipeline.data.files import skipped_lines

    skipped = [(f"/a/s{i}_seg.nii.gz", "label/mask file, not a scan") for i in range(5)]
    skipped.append(("/a/x_t2.nii.gz", "modality t2, the model expects flair"))
    assert skipped_lines(skipped) == [
        "skipped 5 files (label/mask file, not a scan): s0_seg.nii.gz, s1_seg.nii.gz, s2_seg.nii.gz (+2 more)",
        "skipped 1 file (modality t2, the model expects flair): x_t2.nii.gz",
    ]


def test_score_counts_the_scans_that_failed(tiny_checkpoint, phantom_dir, tmp_path, capsys):
    import shutil

    shutil.copy(next(phantom_dir.rglob("*flair.nii.gz")), tmp_path / "good_flair.nii.gz")
    (tmp_path / "broken_flair.nii.gz").write_bytes(b"not a nifti at all")
    assert main(["score", str(tmp_path), "--checkpoint", str(tiny_checkpoint)]) == 0
    out, err = capsys.readouterr()
    assert "FAILED  " in out and "good_flair.nii.gz" in out
    assert err.strip() == "patchrank score: 1 of 2 scans could not be scored (see the FAILED lines)"


def test_format_ranking_marks_flagged_scans():
    from patchrank.pipeline.service.results import format_ranking

    rows = [
        {
            "scan_id": "a" * 64,
            "uri": "/x/a.nii.gz",
            "series_uid": None,
            "scan_score": 3.0,
            "patches": [],
            "flagged": True,
        },
        {
            "scan_id": "b" * 64,
            "uri": "/x/b.nii.gz",
            "series_uid": None,
            "scan_score": 1.0,
            "patches": [],
            "flagged": False,
        },
    ]
    lines = format_ranking(rows).splitlines()
    assert lines[1].endswith("FLAGGED") and not lines[2].endswith("FLAGGED")


def test_resuming_a_finished_training_says_nothing_is_left(tiny_checkpoint, phantom_dir, tmp_path, capsys):
    import shutil

    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.pipeline.settings import TrainConfig
    from patchrank.pipeline.training.local import fit_local, prepare_data

    ck = tmp_path / "m.pt"
    shutil.copy(tiny_checkpoint, ck)
    cfg = TrainConfig.model_validate(load_checkpoint(ck).meta["train_config"])
    train, val = prepare_data(phantom_dir, cfg, show=False)
    before = ck.read_bytes()
    assert fit_local(train, val, cfg, ck, resume=True, show=True) == load_checkpoint(ck).model_version
    assert f"{ck} has already trained 2 epoch(s): nothing to train (raise --epochs to train more)" in (
        capsys.readouterr().out
    )
    assert ck.read_bytes() == before
