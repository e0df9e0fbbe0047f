"""Autoscaling on a simulated multi-node cluster (Ray's fake multi-node provider, node types from
ray_cluster.yaml): the real Serve app scales up with a backlog, the autoscaler adds nodes of the
right type, a killed gpu_scorer node loses nothing, and replicas and nodes return to the baseline.

The cluster needs its own Ray head, so `patchrank bench autoscale` runs in a child process
(this test never uses the session's `ray_session` fixture) under a hard timeout; the child
kills only the processes of its own cluster (pipeline/bench/sim_cluster.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(720)]


def test_bench_autoscale_scales_up_and_down_and_survives_a_node_loss(tmp_path):
    out = tmp_path / "autoscale.json"
    cmd = [sys.executable, "-m", "patchrank.pipeline.cli", "bench", "autoscale", "--scans", "480"]
    cmd += ["--json", str(out), "--png", str(tmp_path / "autoscale.png"), "--timeout", "420"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=660)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    tl = r["timeline"]
    assert (r["scans"], r["results"], r["lost"], r["duplicates"], r["failed"]) == (480, 480, 0, 0, 0)
    assert r["max_worker_nodes"] == 3 and r["baseline_worker_nodes"] == 2  # 1 ingest_cpu + 1..2 gpu_scorer
    assert max(x["gpu_scorer"] for x in tl) == 2 and max(x["ingest_cpu"] for x in tl) == 1  # the right type grew
    assert max(x["scorer"] for x in tl) == 2 and max(x["ingest"] for x in tl) == 2  # both deployments scaled up
    assert r["killed"] is not None  # a scorer node died mid-run: its chunks were retried, every scan exactly once
    assert r["end_worker_nodes"] == 2 and r["end_replicas"] == {"ingest": 1, "scorer": 1}  # back to the minimum
    assert r["scale_up_s"] is not None and r["scale_down_s"] is not None
    assert proc.returncode == 0
    assert (tmp_path / "autoscale.png").stat().st_size > 10_000
