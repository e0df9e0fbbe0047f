"""A small `patchrank bench load`: 300 scans enqueued by a producer process while the Serve
app drains them; nothing lost, queue depth and per-process RSS recorded."""

from __future__ import annotations

import argparse
import json

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_small_load_run_loses_nothing(ray_session, tmp_path):
    from patchrank.pipeline.bench import load

    args = argparse.Namespace(
        scans=300,
        size=40,
        image_size=32,
        checkpoint=None,
        rate=40.0,  # ~7.5 s of enqueueing; the first result comes at 1.3-1.6 s
        producer_batch=25,
        batch_size=32,
        inflight=16,
        replicas=1,
        redis_url=None,
        num_cpus=None,
        sample_s=0.25,
        timeout=150,
        out=str(tmp_path / "load"),
    )
    assert load.run(args) == 0
    s = json.loads((tmp_path / "load" / "load.json").read_text())
    assert s["lost"] == 0 and s["results_logical"] == s["results_distinct"] == 300 and s["dead_letters"] == 0
    assert s["status_counts"] == {"ok": 300}
    assert s["producer_seconds"] >= 7.0, "the producer was rate-limited, so it ran alongside the service"
    series = [r for r in (tmp_path / "load" / "load_timeseries.csv").read_text().splitlines()[1:]]
    rows = [dict(zip(("t", "xlen", "lag", "pending", "done"), map(float, r.split(",")[:5]))) for r in series]
    assert any(0 < r["done"] and r["xlen"] < 300 for r in rows), (
        "draining started while the producer was still enqueueing"
    )
    assert rows[-1]["done"] == 300 and rows[-1]["lag"] == rows[-1]["pending"] == 0
    assert any(k.startswith("ray::ServeReplica") for k in s["peak_rss_mib"]) and any(
        "producer" in k for k in s["peak_rss_mib"]
    )
