"""Obvious command-line mistakes end in one clear `patchrank CMD: error: ...` line with exit status 2."""

from __future__ import annotations

import pytest

from patchrank.pipeline.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    return err


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset

    out = tmp_path_factory.mktemp("normals")
    write_phantom_dataset(out, PhantomSpec(shape=(32, 32, 8), n_normal=2, n_abnormal=0))
    return out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "expected a JSON object of settings"),
        ('{"epochs": ', "not valid JSON"),
        ('{"epochz": 3}', "epochz: unknown setting"),
        ('{"preprocess": {"image_sizee": 64}}', "preprocess.image_sizee: unknown setting"),
    ],
)
def test_train_bad_config_file_is_one_line(normals, tmp_path, capsys, text, expected):
    cfg = tmp_path / "over.json"
    cfg.write_text(text)
    assert main(["train", "--data", str(normals), "--out", str(tmp_path / "m.pt"), "--config", str(cfg)]) == 2
    line = _error_line(capsys)
    assert line.startswith("patchrank train: error: ") and expected in line
    assert not (tmp_path / "m.pt").exists()


def test_train_missing_config_file_is_one_line(normals, tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert main(["train", "--data", str(normals), "--out", str(tmp_path / "m.pt"), "--config", str(missing)]) == 2
    assert _error_line(capsys) == f"patchrank train: error: --config {missing}: file not found"


def test_phantom_into_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("hi")
    assert main(["phantom", str(target)]) == 2
    assert "is a file: give a folder" in _error_line(capsys)
    assert target.read_text() == "hi"


def test_query_of_a_folder_without_results_says_so(tmp_path, capsys):
    assert main(["query", str(tmp_path)]) == 0
    assert f"no results under {tmp_path} (is it the --out folder of `patchrank screen`?)" in capsys.readouterr().out


def test_score_of_a_missing_path_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["score", str(missing), "--checkpoint", str(tmp_path / "m.pt")]) == 2
    assert _error_line(capsys) == f"patchrank score: error: {missing}: no such file or folder"


def test_score_of_a_folder_without_scans_fails(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hi")
    assert main(["score", str(tmp_path), "--checkpoint", str(tiny_checkpoint)]) == 2
    assert "no scans to score in" in _error_line(capsys)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"hello\n", "not a PyTorch file, or a truncated one"),
        (b"\x1f\x8b\x08\x00" + bytes(64), "not a PyTorch file, or a truncated one"),  # a gzip (a .nii.gz renamed)
    ],
)
def test_score_with_a_file_that_is_not_a_checkpoint_says_why(normals, tmp_path, capsys, content, why):
    fake = tmp_path / "model.pt"
    fake.write_bytes(content)
    scan = next(normals.rglob("*flair.nii.gz"))
    assert main(["score", str(scan), "--checkpoint", str(fake)]) == 2
    assert _error_line(capsys) == f"patchrank score: error: refusing to load {fake}: not a PatchRank checkpoint ({why})"


def test_report_of_a_folder_without_results_writes_nothing(tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(tmp_path), "--out", str(out)]) == 2
    assert "no results under" in _error_line(capsys) and not out.exists()
