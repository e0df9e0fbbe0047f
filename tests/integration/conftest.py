"""Fixtures shared by the service fault tests: one in-process scorer per module and the
phantom volumes copied under an allowed input root."""

from __future__ import annotations

import shutil

import pytest

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
