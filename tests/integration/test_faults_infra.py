"""Infrastructure faults around the consumer: a process killed between the Parquet write
and the XACK, SIGTERM / Ctrl-C, Redis restarted mid-run, the output folder unwritable.

The consumer runs in-process (fast) or, where the fault is a signal or a hard kill, in a
child process (`python tests/servicekit.py CONFIG`). Invariant after every fault: each
enqueued scan has exactly one logical result, nothing is pending, parts are complete.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redisproc import RedisServer
from servicekit import LocalScorer, backlog, check_exactly_once, drive, enqueue, make_consumer, service_config

from patchrank.pipeline.service.sink import part_files

pytestmark = pytest.mark.integration
KIT = Path(__file__).resolve().parents[1] / "servicekit.py"


def _child(cfg, tmp_path: Path, *extra: str, slow_s: float = 0.0) -> subprocess.Popen:
    spec = tmp_path / "child.json"
    spec.write_text(json.dumps({"service": cfg.model_dump(), "slow_s": slow_s, "name": "child"}))
    proc = subprocess.Popen(
        [sys.executable, str(KIT), str(spec), *extra],
        stderr=subprocess.PIPE,
        text=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert "READY" in proc.stderr.readline() or proc.poll() is None
    return proc


@pytest.mark.timeout(120)
def test_killed_between_parquet_write_and_xack(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, flush_scans=3, flush_interval_s=600)
    ids = [m.scan_id for m in enqueue(cfg, scans)]
    proc = _child(cfg, tmp_path, "--crash-after-write")
    assert proc.wait(90) == 9, proc.stderr.read()
    written = len(part_files(cfg.output_dir, "scans"))
    b = backlog(cfg)
    assert written >= 1 and b.pending >= 3, f"rows were written but not acknowledged: {b}"
    # a new consumer reclaims the entries (XAUTOCLAIM), sees the rows on disk, acks without rewriting
    restarted = make_consumer(cfg.model_copy(update={"flush_interval_s": 0.1}), LocalScorer(scorer))
    asyncio.run(drive([restarted], cfg, timeout_s=60))
    out = check_exactly_once(cfg, ids)
    assert out.physical == len(ids), "a redelivered entry whose rows were on disk was written again"
    assert restarted.stats["duplicate"] >= 3 and restarted.stats["claimed"] >= 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_gracefully(redis_url, tmp_path, tiny_checkpoint, scorer, scans, sig):
    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_inflight_scans=2, read_count=2)
    ids = [m.scan_id for m in enqueue(cfg, scans)]
    proc = _child(cfg, tmp_path, slow_s=0.3)
    deadline = time.monotonic() + 60
    while not part_files(cfg.output_dir, "scans") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(30) == 0
    err = proc.stderr.read()
    assert "STOPPED" in err
    b = backlog(cfg)
    assert b.pending == 0, f"in-flight scans were not finished, written and acknowledged: {b}"
    assert b.lag > 0, "the signal arrived after the stream was drained; the test proved nothing"
    assert not list(Path(cfg.output_dir).rglob("*.tmp")), "half-written files left behind"
    asyncio.run(drive([make_consumer(cfg, LocalScorer(scorer))], cfg, timeout_s=60))
    out = check_exactly_once(cfg, ids)
    assert out.physical == len(ids)


@pytest.mark.timeout(120)
def test_redis_restarted_mid_run(tmp_path, tiny_checkpoint, scorer, scans):
    server = RedisServer(tmp_path, durable=True)  # AOF: the restart keeps the stream
    server.start()
    try:
        cfg = service_config(
            server.url, tmp_path, tiny_checkpoint, max_deliveries=10, read_count=1, max_inflight_scans=1
        )
        ids = [m.scan_id for m in enqueue(cfg, scans)]
        local = LocalScorer(scorer)
        local.fail = lambda n, c: time.sleep(0.05)
        consumer = make_consumer(cfg, local)
        state = {"restarted": False}

        async def restart(elapsed):
            if not state["restarted"] and consumer.stats["acked"] >= 2:
                state["restarted"] = True
                await asyncio.to_thread(server.stop)  # mid-run: some scans done, some in flight, some queued
                await asyncio.sleep(1.5)
                await asyncio.to_thread(server.start)

        asyncio.run(drive([consumer], cfg, timeout_s=90, during=restart))
        assert state["restarted"]
        out = check_exactly_once(cfg, ids)
        assert {r["status"] for r in out.rows.values()} == {"ok"}
        assert consumer.stats["acked"] + consumer.stats["duplicate"] >= len(ids) - 2
    finally:
        server.stop()


def _block_output(out: Path) -> list[Path]:
    """Make the table folders impossible to create (works as root, unlike chmod)."""
    out.mkdir(parents=True, exist_ok=True)
    blockers = [out / "scans", out / "patches"]
    for b in blockers:
        b.write_text("not a directory")
    return blockers


@pytest.mark.timeout(120)
def test_output_unwritable_for_a_while_then_recovers(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_deliveries=20)
    ids = [m.scan_id for m in enqueue(cfg, scans)]
    blockers = _block_output(Path(cfg.output_dir))
    consumer = make_consumer(cfg, LocalScorer(scorer))

    async def unblock(elapsed):
        if blockers and elapsed > 2.0 and consumer.stats["infra_errors"] >= 1:  # a write has failed first
            assert backlog(cfg).pending > 0, "results were acknowledged although nothing could be written"
            assert not part_files(cfg.output_dir, "scans")
            while blockers:
                blockers.pop().unlink()

    asyncio.run(drive([consumer], cfg, timeout_s=60, during=unblock))
    out = check_exactly_once(cfg, ids)
    assert {r["status"] for r in out.rows.values()} == {"ok"} and not out.dead
    assert consumer.stats["infra_errors"] >= 1 and max(r["deliveries"] for r in out.rows.values()) >= 2


@pytest.mark.timeout(120)
def test_output_unwritable_for_good_dead_letters_with_reason(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_deliveries=2)
    msgs = enqueue(cfg, scans[:4])
    _block_output(Path(cfg.output_dir))
    asyncio.run(drive([make_consumer(cfg, LocalScorer(scorer))], cfg, timeout_s=60))
    b = backlog(cfg)
    assert b.lag == 0 and b.pending == 0
    assert not part_files(cfg.output_dir, "scans")
    from servicekit import StreamClient

    client = StreamClient.from_url(cfg.redis_url, cfg.keys)
    dead = [{k.decode(): v.decode(errors="replace") for k, v in f.items()} for _, f in client.dead_letters()]
    client.close()
    assert sorted(json.loads(d["msg"])["scan_id"] for d in dead) == sorted(m.scan_id for m in msgs), (
        "every scan is on the dead-letter stream"
    )
    for d in dead:
        assert "gave up after 2 deliveries" in d["reason"] and "result write failed" in d["reason"], d["reason"]
