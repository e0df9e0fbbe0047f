"""Stream trimming (XTRIM MINID of acknowledged entries) against a real redis-server: only
acknowledged entries go, pending and undelivered ones stay, the backlog stays exact, and a
running consumer keeps the stream bounded."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servicekit import LocalScorer, drive, enqueue, make_consumer, phantom_archive, service_config  # noqa: E402

from patchrank.pipeline.service.messages import ScanMessage  # noqa: E402
from patchrank.pipeline.service.streams import AsyncStreamClient, StreamClient, safe_minid  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_safe_minid_bounds():
    g = [{"name": b"g", "last-delivered-id": b"5-3"}]
    assert safe_minid(g, None) == "5-4"  # all delivered and acknowledged: everything up to 5-3 goes
    assert safe_minid(g, "4-0") == "4-0"  # the oldest pending entry stays
    assert safe_minid(g + [{"name": b"h", "last-delivered-id": b"2-0"}], None) == "2-1"  # the slowest group decides
    assert safe_minid([{"name": b"g", "last-delivered-id": b"0-0"}], None) is None  # nothing delivered yet
    assert safe_minid([], None) is None


def _msg(i: int) -> ScanMessage:
    return ScanMessage(scan_id=f"{i:032x}", uri=f"/nowhere/{i}.nii.gz", submitted_at=0.0)


def test_trim_removes_only_acknowledged(redis_url, tmp_path):
    cfg = service_config(redis_url, tmp_path, "-")
    sync = StreamClient.from_url(redis_url, cfg.keys)
    sync.ensure_group()
    ids = sync.add_many([_msg(i) for i in range(10)])
    got = sync.read("a", 6)  # entries 0-5 delivered
    assert [e for e, _ in got] == ids[:6]
    sync.ack([ids[0], ids[1], ids[3]])  # 2, 4, 5 stay pending (a consumer died holding them)

    async def trim() -> int:
        client = AsyncStreamClient.from_url(redis_url, cfg.keys)
        try:
            return await client.trim_acked()
        finally:
            await client.close()

    assert asyncio.run(trim()) == 2  # 0 and 1; 3 is acknowledged but sits above pending 2
    left = [i.decode() for i, _ in sync.r.xrange(cfg.keys.stream)]
    assert left == ids[2:]
    b = sync.backlog()
    assert (b.lag, b.pending, b.length) == (4, 3, 8)  # lag stays exact after the trim
    assert b.acked == 3  # 0, 1, 3: counted from the group's entries-read, not from the trimmed length
    sync.ack([ids[2], ids[4], ids[5]])
    assert asyncio.run(trim()) == 4  # 2..5 now acknowledged; the 4 undelivered entries stay
    assert [i.decode() for i, _ in sync.r.xrange(cfg.keys.stream)] == ids[6:]
    assert sync.backlog().lag == 4 and sync.backlog().acked == 6
    assert [e for e, _ in sync.read("b", 10)] == ids[6:]  # undelivered entries are still read
    sync.close()


def test_running_consumer_keeps_the_stream_bounded(redis_url, tmp_path, phantom_dir, tiny_checkpoint, scorer):
    files = sorted(phantom_archive(phantom_dir, tmp_path / "scans", 12).iterdir())
    # one scan in flight at a time, each acknowledged on its own: acknowledged entries pile up
    # behind the running consumer from the first scan on, and a trim tick comes several times a scan
    cfg = service_config(
        redis_url, tmp_path, tiny_checkpoint, trim_every_s=0.05, max_inflight_scans=1, read_count=1, flush_scans=1
    )
    enqueue(cfg, files)
    consumer = make_consumer(cfg, LocalScorer(scorer))
    asyncio.run(drive([consumer], cfg, timeout_s=90))
    assert consumer.stats["ok"] == 12 and consumer.stats["trimmed"] > 0  # trimmed while it ran
    sync = StreamClient.from_url(redis_url, cfg.keys)
    assert sync.r.xlen(cfg.keys.stream) == 12 - consumer.stats["trimmed"]

    async def trim() -> int:
        client = AsyncStreamClient.from_url(redis_url, cfg.keys)
        try:
            return await client.trim_acked()
        finally:
            await client.close()

    asyncio.run(trim())
    assert sync.r.xlen(cfg.keys.stream) == 0 and sync.backlog().total == 0  # all acknowledged: nothing kept
    sync.close()
