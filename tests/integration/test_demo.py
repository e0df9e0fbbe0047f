"""`patchrank demo` (the README's first command) end to end at a small size: phantoms -> train -> screen
through the embedded service -> query, ranking and heatmap. Its own process: the demo starts its own Ray."""

from __future__ import annotations

import shlex
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(400)]


def test_demo_runs_end_to_end(tmp_path):
    work = tmp_path / "demo"
    cmd = [sys.executable, "-m", "patchrank.pipeline.cli", "demo", "--workdir", str(work)]
    cmd += ["--epochs", "1", "--image-size", "32", "--train-subjects", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=360)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    for step in ("[1/4]", "[2/4] training 1 epochs + ", "[3/4]", "[4/4]"):
        assert step in out
    assert "queued 8: result rows 8 (8 ok)" in out
    assert "abnormal scans rank in the top 4 by scan score" in out
    ranking = [line for line in out.splitlines() if line.strip()[:1].isdigit() and "PHANTOM_" in line]
    assert len(ranking) == 8 and sum("LESION" in line for line in ranking) == 4
    assert (work / "model.pt").is_file() and (work / "top_scan.png").stat().st_size > 1000
    more = [line for line in out.splitlines() if line.startswith("more: ")]
    assert len(more) == 1, out[-2000:]
    more = more[0]
    argv = shlex.split(more[len("more: ") :].split("  |")[0])  # the query command the demo suggests, as printed
    query = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)  # from another folder
    assert query.returncode == 0 and "PHANTOM_" in query.stdout, query.stdout[-2000:] + query.stderr[-2000:]
