"""Fixtures shared by the integration tests: one in-process scorer per module, the phantom volumes
copied under an allowed input root, and a private S3-compatible server (moto)."""

from __future__ import annotations

import os
import shutil

import pytest
from s3server import TEST_BUCKET, MotoS3

from patchrank.pipeline.service.slice_scorer import SliceScorer


def pytest_collection_modifyitems(items):
    """Every integration test (real redis-server, local Ray, end-to-end runs) is in the slow tier."""
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return SliceScorer(str(tiny_checkpoint), torch_threads=1)


@pytest.fixture()
def scans(tmp_path, phantom_dir):
    """8 phantom volumes copied under the allowed root tmp_path/scans."""
    root = tmp_path / "scans"
    root.mkdir()
    out = [shutil.copy(src, root / src.name) for src in sorted(phantom_dir.rglob("*_flair.nii.gz"))]
    assert len(out) == 8
    return out


@pytest.fixture()
def s3(tmp_path):
    """A fresh moto server per test with the bucket TEST_BUCKET, its endpoint and test credentials in the
    environment."""
    server = MotoS3(tmp_path)
    saved = {k: os.environ.get(k) for k in server.env()}
    server.start()
    os.environ.update(server.env())
    server.make_bucket(TEST_BUCKET)
    yield server
    server.kill()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
