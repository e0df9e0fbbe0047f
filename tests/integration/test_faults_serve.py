"""Faults at the Ray Serve level: the scorer replica is killed mid-batch, then the ingest
replica is killed mid-run. Serve restarts both; entries in flight are reclaimed with
XAUTOCLAIM; every scan still ends as exactly one result and nothing stays pending.
"""

from __future__ import annotations

import time

import pytest
from servicekit import backlog, check_exactly_once, phantom_archive

from patchrank.pipeline.service.messages import scan_id_for
from patchrank.pipeline.service.settings import AppArgs, Placement, ServiceConfig
from patchrank.pipeline.service.sink import part_files
from patchrank.pipeline.service.streams import StreamClient

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

    from patchrank.pipeline.commands.enqueue import enqueue_paths
    from patchrank.pipeline.service import screening

    root = phantom_archive(phantom_dir, tmp_path / "archive", 24)
    cfg = ServiceConfig(
        redis_url=redis_url,
        namespace="t-serve-faults",
        checkpoint=str(tiny_checkpoint),
        output_dir=str(tmp_path / "out"),
        allowed_roots=[str(root)],
        max_inflight_scans=2,
        flush_scans=2,
        flush_interval_s=0.1,
        chunk_slices=4,
        max_batch_size=8,
        claim_idle_ms=1500,
        claim_every_s=0.3,
        max_deliveries=10,
        torch_threads=1,
    )
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
        # a replica killed with SIGKILL mid-write can leave a hidden `.part-*.tmp`; readers never see it
        # (check_exactly_once read every visible part), and it never becomes a visible part
        assert all(p.name.startswith(".") for p in (tmp_path / "out").rglob("*.tmp"))
    finally:
        client.close()
        screening.undeploy()


@pytest.mark.timeout(240)
def test_serve_shutdown_drains_in_flight_scans(ray_session, redis_url, phantom_dir, tiny_checkpoint, tmp_path):
    """serve.delete / redeploy / scale-down (what SIGTERM of `serve run` does): the ingest
    replica stops reading and writes + acknowledges what it has scored; scans it cannot
    finish (the scorer is shutting down too) stay pending and are redelivered later."""
    from patchrank.pipeline.commands.enqueue import enqueue_paths
    from patchrank.pipeline.service import screening

    root = phantom_archive(phantom_dir, tmp_path / "archive", 24)
    # results are buffered (long flush interval) and never reclaimed during the test (long idle):
    # only a graceful drain writes rows before the shutdown
    cfg = ServiceConfig(
        redis_url=redis_url,
        namespace="t-serve-drain",
        checkpoint=str(tiny_checkpoint),
        output_dir=str(tmp_path / "out"),
        allowed_roots=[str(root)],
        max_inflight_scans=3,
        flush_scans=100,
        flush_interval_s=30,
        chunk_slices=4,
        max_batch_size=8,
        claim_idle_ms=600_000,
        drain_timeout_s=2,
        torch_threads=1,
    )
    client = StreamClient.from_url(redis_url, cfg.keys)
    client.ensure_group()
    app = AppArgs(service=cfg, scorer=Placement(num_cpus=0.5), ingest=Placement(num_cpus=0.1))
    screening.deploy(app)
    try:
        assert len(enqueue_paths(client, [root], show=False).queued) == 24
        ids = [scan_id_for(p) for p in sorted(root.iterdir())]
        _wait(lambda: backlog(cfg).lag <= 18 and backlog(cfg).pending >= 1, 90, "scans in flight")
        screening.undeploy()  # scorer and ingest shut down together
        b = backlog(cfg)
        assert b.lag > 0, "the stream drained before the shutdown; the test proved nothing"
        assert not list((tmp_path / "out").rglob(".*.tmp"))
        done = len(ids) - b.lag - b.pending
        from patchrank.pipeline.service.results import ResultStore

        # nothing was flushed during the run (30 s interval): every row here was written by the drain
        assert done >= 1, "scored results buffered at shutdown were dropped instead of written and acknowledged"
        assert ResultStore(cfg.output_dir).sql("SELECT count(*) FROM scans_all")[1][0][0] == done, (
            "every acknowledged scan has its row"
        )
        # scans still in flight when the scorer went away stay pending and are redelivered
        app = AppArgs(
            service=cfg.model_copy(update={"claim_idle_ms": 1000, "flush_interval_s": 0.2}),
            scorer=app.scorer,
            ingest=app.ingest,
        )
        screening.deploy(app)
        screening.wait_drained(client, timeout_s=150, show=False)
        out = check_exactly_once(cfg, ids)
        assert out.physical == len(ids)
    finally:
        client.close()
        screening.undeploy()
