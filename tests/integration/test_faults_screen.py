"""`patchrank screen` (embedded default) interrupted with Ctrl-C or SIGTERM mid-run: it exits
promptly, stops every process it started (private redis-server, local Ray), and leaves
no half-written files; every visible part is a complete Parquet file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from servicekit import phantom_archive

from patchrank.pipeline.service.sink import part_files

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_screen_interrupted_stops_everything(tmp_path, phantom_dir, tiny_checkpoint, sig):
    data = phantom_archive(phantom_dir, tmp_path / "data", 200)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchrank.pipeline.cli",
            "screen",
            str(data),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--num-cpus",
            "2",
            "--inflight",
            "2",
            "--chunk",
            "4",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while not part_files(out, "scans"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no results within 120 s"
        time.sleep(0.1)
    started = [p for p in me.children(recursive=True)]
    assert any("redis-server" in p.name() for p in started), "the private redis-server runs under screen"
    proc.send_signal(sig)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("screen did not exit within 60 s of the signal")
    text = proc.stdout.read()
    assert "scored 200 scans" not in text, "the job finished before the signal; the test proved nothing"
    assert rc != 0 and "Traceback" not in text, text[-3000:]
    gone, alive = psutil.wait_procs(started, timeout=20)
    leftover = [f"{p.pid} {p.name()}" for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftover, f"processes left running after {sig.name}: {leftover}\n{text[-2500:]}"
    assert not list(out.rglob("*.tmp")), "half-written part files left behind"
    for table in ("scans", "patches"):
        for p in part_files(out, table):
            pq.read_table(p)
