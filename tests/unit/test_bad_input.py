"""Every hostile input becomes a clear ScanError / MessageError, with bounded memory.

The corpus lives in tests/badinput.py; the same cases drive the integration test that
pushes them through the running consumer (tests/integration/test_faults_bad_input.py).
"""

from __future__ import annotations

import pickle
import time
import tracemalloc
from pathlib import Path

import pytest
from badinput import PATIENT_MARKER, good_volume, message_cases, nifti_header_only, write_file_cases

from patchrank.pipeline.data.loaders import ScanError, load_nifti
from patchrank.pipeline.data.preprocess import load_prepared
from patchrank.pipeline.service.intake import check_uri
from patchrank.pipeline.service.messages import MessageError, ScanMessage, message_for
from patchrank.pipeline.settings import PreprocessConfig

PRE = PreprocessConfig(image_size=32).model_dump()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("bad")
    root, outside = base / "root", base / "outside"
    return root, {c.name: c for c in write_file_cases(root, outside)}


def _names():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        return [c.name for c in write_file_cases(Path(d) / "r", Path(d) / "o")]


def _score_path(uri: str, root: Path, pre: dict = PRE):
    """What the consumer does with a message's URI before scoring: roots check, load, preprocess."""
    return load_prepared(check_uri(uri, [root.resolve()]), pre)


@pytest.mark.parametrize("name", _names())
def test_bad_file_is_a_clear_scan_error(corpus, name):
    root, cases = corpus
    case = cases[name]
    with pytest.raises(ScanError) as info:
        _score_path(case.uri, root)
    msg = str(info.value)
    assert case.expect.lower() in msg.lower(), msg
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 300
    assert PATIENT_MARKER not in msg  # header text never reaches an error row


def test_control_good_volume_and_png_score(corpus, tmp_path):
    root, _ = corpus
    prep = _score_path(str(root / "source_good.nii.gz"), root)
    assert prep.images.shape[1:] == (1, 32, 32) and len(prep.images) > 0
    import numpy as np
    from badinput import write_png

    png = write_png(root / "ok.png", (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
    assert _score_path(str(png), root).images.shape == (1, 1, 32, 32)


def test_enormous_volume_refused_from_header_with_bounded_memory(tmp_path):
    """A header claiming 4096^3 int16 voxels (128 GiB) is refused before any data is read."""
    path = nifti_header_only(tmp_path / "huge.nii.gz", (4096, 4096, 4096))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ScanError, match="exceeds the limit"):
            load_prepared(path, PRE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB while refusing a header-only file"
    assert time.perf_counter() - t0 < 2.0


def test_volume_limit_is_configurable(tmp_path):
    path = good_volume(tmp_path / "v.nii.gz", shape=(32, 32, 12))  # 12,288 voxels
    assert load_nifti(path, max_voxels=12_288).shape == (32, 32, 12)
    with pytest.raises(ScanError, match="12288 voxels exceeds the limit of 12287"):
        load_nifti(path, max_voxels=12_287)
    small = PreprocessConfig(image_size=32, max_voxels=10_000).model_dump()
    with pytest.raises(ScanError, match="exceeds the limit of 10000"):
        load_prepared(path, small)
    with pytest.raises(ValueError):
        PreprocessConfig(max_voxels=0)


@pytest.mark.parametrize("case", message_cases(), ids=lambda c: c.name)
def test_bad_message_is_refused_and_never_unpickled(case, monkeypatch, tmp_path):
    def no_unpickling(*a, **k):
        raise AssertionError("something tried to unpickle a stream message")

    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "Unpickler", no_unpickling)
    with pytest.raises(MessageError) as info:
        ScanMessage.from_fields(case.fields)
    assert case.expect.lower() in str(info.value).lower(), str(info.value)
    assert len(str(info.value)) < 300
    assert not Path("/tmp/patchrank_pwned").exists()


def test_control_valid_message_round_trips(tmp_path):
    path = good_volume(tmp_path / "v.nii.gz")
    msg = message_for(path, "flair")
    back = ScanMessage.from_fields(msg.to_fields())
    assert back == msg and back.uri == str(path.resolve())
    # str keys (decode_responses clients) are accepted too; bytes are the wire default
    assert ScanMessage.from_fields({"msg": msg.model_dump_json()}) == msg


def test_scan_id_is_stable_and_changes_with_content(tmp_path):
    path = good_volume(tmp_path / "v.nii.gz")
    a, b = message_for(path), message_for(path)
    assert a.scan_id == b.scan_id
    good_volume(tmp_path / "v.nii.gz", seed=9, shape=(32, 32, 14))  # rewritten in place
    assert message_for(path).scan_id != a.scan_id


def test_scoring_settings_reject_even_smoothing_and_negative_weights():
    from pydantic import ValidationError

    from patchrank.pipeline.settings import TrainConfig

    bads = (
        {"prior_smooth": 4},
        {"pixel_smooth": 8},
        {"symmetry_weight": -1.0},
        {"intensity_weight": -0.5},
        {"pixel_guide_eps": 0},
        {"residual": "square"},
        {"no_such_setting": 1},
        {"rank": {"k": 0, "decay": 1}},
    )
    for bad in bads:
        with pytest.raises(ValidationError):
            TrainConfig(scoring=bad)
    m = TrainConfig(scoring={"prior_smooth": 7, "symmetry_weight": 0.0}).scoring
    assert (m.prior_smooth, m.symmetry_weight, m.intensity_weight) == (7, 0.0, 1.0)
