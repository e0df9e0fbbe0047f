"""Kill the consumer mid-batch, start another: nothing lost, nothing duplicated."""

from __future__ import annotations

import time

import pytest
from servicekit import phantom_archive

from patchrank.pipeline.service.results import ResultStore
from patchrank.pipeline.service.settings import ServiceConfig
from patchrank.pipeline.service.sink import part_files
from patchrank.pipeline.service.streams import StreamClient

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_kill_consumer_mid_batch_then_restart(ray_session, redis_url, phantom_dir, tiny_checkpoint, tmp_path):
    import ray

    from patchrank.actors.ingest import IngestWorker
    from patchrank.pipeline.commands.enqueue import enqueue_paths

    root = phantom_archive(phantom_dir, tmp_path / "archive", 16)  # 16 distinct files (distinct scan ids)
    cfg = ServiceConfig(
        redis_url=redis_url,
        namespace="t-recovery",
        checkpoint=str(tiny_checkpoint),
        output_dir=str(tmp_path / "out"),
        allowed_roots=[str(root)],
        max_inflight_scans=3,
        flush_scans=1,
        flush_interval_s=0.05,
        chunk_slices=4,
        max_batch_size=8,
        claim_idle_ms=1500,
        claim_every_s=0.3,
        torch_threads=1,
    )
    client = StreamClient.from_url(redis_url, cfg.keys)
    report = enqueue_paths(client, [root], show=False)
    assert len(report.queued) == 16

    first = IngestWorker.remote(cfg.model_dump())
    ray.get(first.ready.remote(), timeout=60)
    deadline = time.monotonic() + 60
    while not (len(part_files(cfg.output_dir, "scans")) >= 2 and client.backlog().pending >= 1):
        assert time.monotonic() < deadline, "first consumer made no progress"
        time.sleep(0.01)
    ray.kill(first, no_restart=True)  # dies mid-batch: some entries read, not acknowledged
    after_kill = client.backlog()
    assert after_kill.total > 0, "the kill came too late to test recovery"

    second = IngestWorker.remote(cfg.model_dump())
    ray.get(second.ready.remote(), timeout=60)
    drained = client.wait_drained(timeout_s=120)
    stats = ray.get(second.stop.remote(), timeout=60)
    ray.kill(second)
    assert (drained.lag, drained.pending) == (0, 0)

    store = ResultStore(cfg.output_dir)
    assert store.sql("SELECT count(*), count(DISTINCT scan_id), min(status), max(status) FROM scans")[1] == [
        (16, 16, "ok", "ok")
    ]
    physical = store.sql("SELECT count(*) FROM scans_all")[1][0][0]
    assert physical == 16, f"{physical} physical rows for 16 scans"
    if after_kill.pending:
        assert stats["claimed"] >= 1, "entries pending at the kill were reclaimed with XAUTOCLAIM"
        assert store.sql("SELECT max(deliveries) FROM scans")[1][0][0] >= 2
    assert client.dead_letters() == []
    client.close()
