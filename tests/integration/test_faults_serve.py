"""Faults at the Ray Serve level: the scorer replica is killed mid-batch, then the ingest
replica is killed mid-run. Serve restarts both; entries in flight are reclaimed with
XAUTOCLAIM; every scan still ends as exactly one result and nothing stays pending.
"""
from __future__ import annotations

import shutil
import time

import pytest
from servicekit import backlog, check_exactly_once

from pipeline.messages import scan_id_for
from pipeline.service_settings import AppArgs, Placement, ServiceConfig
from pipeline.sink import part_files
from pipeline.streams import StreamClient

pytestmark = pytest.mark.integration


def _replica(cls: str):
    """The live Serve replica actor of deployment `cls` (e.g. "Scorer")."""
    import ray
    from ray._private import state

    for info in state.actors().values():
        name = info.get("Name") or ""
        if info.get("State") == "ALIVE" and name.startswith("SERVE_REPLICA::") and f"#{cls}#" in name:
            return ray.get_actor(name, namespace="serve")
    return None


def _wait(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.timeout(240)
def test_scorer_and_ingest_replicas_killed_mid_run(ray_session, redis_url, phantom_dir, tiny_checkpoint, tmp_path):
    import ray

    from pipeline import screening
    from pipeline.commands.enqueue import enqueue_paths

    root = tmp_path / "archive"
    root.mkdir()
    sources = sorted(phantom_dir.rglob("*_flair.nii.gz"))
    for i in range(24):
        shutil.copy(sources[i % len(sources)], root / f"scan_{i:02d}_flair.nii.gz")
    cfg = ServiceConfig(redis_url=redis_url, namespace="t-serve-faults", checkpoint=str(tiny_checkpoint), output_dir=str(tmp_path / "out"),
                        allowed_roots=[str(root)], max_inflight_scans=2, flush_scans=2, flush_interval_s=0.1, chunk_slices=4,
                        max_batch_size=8, claim_idle_ms=1500, claim_every_s=0.3, max_deliveries=10, torch_threads=1)
    client = StreamClient.from_url(redis_url, cfg.keys)
    client.ensure_group()
    screening.deploy(AppArgs(service=cfg, scorer=Placement(num_cpus=0.5), ingest=Placement(num_cpus=0.1)))
    try:
        assert len(enqueue_paths(client, [root], show=False).queued) == 24
        ids = [scan_id_for(p) for p in sorted(root.iterdir())]

        _wait(lambda: len(part_files(cfg.output_dir, "scans")) >= 1 and backlog(cfg).pending >= 1, 90, "first results")
        scorer = _replica("Scorer")
        assert scorer is not None
        ray.kill(scorer, no_restart=True)  # mid-batch: in-flight score requests fail
        assert backlog(cfg).total > 0, "the scorer was killed after the stream drained"
        _wait(lambda: backlog(cfg).total < 16, 120, "progress after the scorer restart")
        ingest = _replica("Ingest")
        assert ingest is not None
        ray.kill(ingest, no_restart=True)  # mid-run: read-but-unacknowledged entries stay pending
        assert backlog(cfg).total > 0, "the ingest replica was killed after the stream drained"
        screening.wait_drained(client, timeout_s=150, show=False)
        out = check_exactly_once(cfg, ids)
        assert {r["status"] for r in out.rows.values()} == {"ok"}, {r["error"] for r in out.rows.values()}
        assert max(r["deliveries"] for r in out.rows.values()) >= 2, "some entries were redelivered after a kill"
        assert not list((tmp_path / "out").rglob(".*.tmp"))
    finally:
        client.close()
        screening.undeploy()
