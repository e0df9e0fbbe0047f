"""Obvious command-line mistakes end in one clear `patchrank CMD: error: ...` line with exit status 2."""

from __future__ import annotations

from pathlib import Path

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


def test_score_exits_1_when_no_scan_could_be_scored(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "broken_flair.nii.gz").write_bytes(b"not a nifti at all")
    assert main(["score", str(tmp_path / "broken_flair.nii.gz"), "--checkpoint", str(tiny_checkpoint)]) == 1
    out, err = capsys.readouterr()
    assert "FAILED  " in out and "rank" not in out  # no empty ranking table
    assert err.strip() == "patchrank score: none of the 1 scans could be scored (see the FAILED lines)"


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """`patchrank query ... | head`: the reader goes away; no "Broken pipe" error, exit 141 (as a shell reports it)."""
    import patchrank.pipeline.commands.query as query

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(query, "run", closed)
    assert main(["query", "results"]) == 141
    assert capsys.readouterr().err == ""


def test_screen_of_a_missing_path_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["screen", str(missing), "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "o")]) == 2
    assert _error_line(capsys) == f"patchrank screen: error: {missing}: no such file or folder"


def test_screen_of_a_folder_without_scans_fails_before_starting_services(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hi")
    argv = ["screen", str(tmp_path / "in"), "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr()
    assert "private redis-server" not in err.out  # nothing was started
    line = err.err.strip()
    assert line.startswith(f"patchrank screen: error: no scans to screen in {tmp_path / 'in'} (skipped: 1 ") and (
        len(line.splitlines()) == 1
    )
    assert not (tmp_path / "o").exists()


def test_screen_roots_admit_the_targets_of_symlinked_scans_and_nothing_beside_them(tmp_path):
    from patchrank.pipeline.commands.enqueue import scan_list
    from patchrank.pipeline.commands.screen import allowed_roots
    from patchrank.pipeline.data.loaders import ScanError
    from patchrank.pipeline.service.intake import check_uri

    store, links = tmp_path / "store" / "deep", tmp_path / "links"
    store.mkdir(parents=True)
    links.mkdir()
    for name in ("a_flair.nii.gz", "b_flair.nii.gz", "unlinked_flair.nii.gz"):
        (store / name).write_bytes(b"x")
    for name in ("a_flair.nii.gz", "b_flair.nii.gz"):
        (links / name).symlink_to(store / name)
    (links / "plain_flair.nii.gz").write_bytes(b"x")
    given = [str(links)]
    assert allowed_roots(given) == [str(links)]
    files, _ = scan_list(given)
    assert len(files) == 3
    roots = allowed_roots(given, scans=files)
    assert roots == sorted([str(links), str(store / "a_flair.nii.gz"), str(store / "b_flair.nii.gz")])
    resolved = frozenset(Path(r) for r in roots)
    assert check_uri(str(links / "a_flair.nii.gz"), resolved) == store / "a_flair.nii.gz"
    assert check_uri(str(links / "plain_flair.nii.gz"), resolved) == links / "plain_flair.nii.gz"
    with pytest.raises(ScanError, match="outside the allowed input roots"):
        check_uri(str(store / "unlinked_flair.nii.gz"), resolved)  # beside a target, never linked


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


def _subparsers(parser, path=("patchrank",)):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subparsers(sub, (*path, name))


def test_every_option_of_every_command_has_help():
    from patchrank.pipeline.cli import build_parser

    bare = [
        f"{' '.join(path)} {'/'.join(a.option_strings) or a.dest}"
        for path, parser in _subparsers(build_parser())
        for a in parser._actions
        if not a.help and a.dest != "help" and a.__class__.__name__ != "_SubParsersAction"
    ]
    assert bare == []


def test_screen_retry_failed_with_nothing_to_retry_says_so(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["screen", "--retry-failed", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"nothing to retry: no scan in {out} gave up on an infrastructure fault")
    assert "private redis-server" not in text
