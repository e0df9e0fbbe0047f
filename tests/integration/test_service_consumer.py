"""The stream consumer without Serve: retries, dead-lettering, malformed entries (real Redis)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from patchrank.pipeline.data.loaders import ScanError
from patchrank.pipeline.service.consumer import StreamConsumer
from patchrank.pipeline.service.intake import check_uri
from patchrank.pipeline.service.messages import message_for
from patchrank.pipeline.service.results import ResultStore
from patchrank.pipeline.service.settings import ServiceConfig
from patchrank.pipeline.service.slice_scorer import SliceScorer, model_info
from patchrank.pipeline.service.streams import AsyncStreamClient, StreamClient

pytestmark = pytest.mark.integration


def _cfg(redis_url, ckpt, out, root, **kw) -> ServiceConfig:
    base = dict(
        redis_url=redis_url,
        namespace="t-consumer",
        checkpoint=str(ckpt),
        output_dir=str(out),
        allowed_roots=[str(root)],
        claim_idle_ms=100,
        claim_every_s=0.1,
        block_ms=50,
        flush_interval_s=0.1,
        max_deliveries=2,
        chunk_slices=4,
        max_batch_size=8,
    )
    return ServiceConfig(**{**base, **kw})


async def _run_until_drained(consumer: StreamConsumer, sync: StreamClient, timeout: float = 30.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while sync.backlog().total > 0:
            assert asyncio.get_running_loop().time() < deadline, f"not drained: {sync.backlog()} {consumer.stats}"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await consumer.client.close()


@pytest.mark.timeout(120)
def test_infra_errors_retry_then_dead_letter_and_failed_row(redis_url, phantom_dir, tiny_checkpoint, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    scan = root / "a_flair.nii.gz"
    shutil.copy(next(phantom_dir.rglob("*_flair.nii.gz")), scan)
    cfg = _cfg(redis_url, tiny_checkpoint, tmp_path / "out", root)
    sync = StreamClient.from_url(redis_url, cfg.keys)
    sync.ensure_group()
    sync.add(message_for(scan))
    sync.r.xadd(cfg.keys.stream, {b"msg": b'{"scan_id": "zz", "uri": 5}'})  # malformed
    calls = []

    async def broken_scorer(chunk):
        calls.append(len(chunk))
        raise ConnectionError("scorer replica unavailable")

    info = model_info(SliceScorer(str(tiny_checkpoint)))
    consumer = StreamConsumer(cfg, AsyncStreamClient.from_url(redis_url, cfg.keys), broken_scorer, info)
    asyncio.run(_run_until_drained(consumer, sync))

    assert calls, "the scorer was tried"
    assert consumer.stats["infra_errors"] >= 2 and consumer.stats["dead"] == 2
    rows = ResultStore(cfg.output_dir).sql("SELECT scan_id, status, error, deliveries FROM scans_all")[1]
    assert len(rows) == 1
    sid, status, error, deliveries = rows[0]
    assert sid == message_for(scan).scan_id and status == "failed" and deliveries == 3
    assert "gave up after 2 deliveries" in error and "scorer replica unavailable" in error
    dead = sync.dead_letters()
    assert len(dead) == 2
    reasons = sorted(f[b"reason"].decode() for _, f in dead)
    assert "invalid scan message" in reasons[1] and "gave up" in reasons[0]
    assert sync.backlog().pending == 0 and sync.r.hlen(cfg.keys.errors) == 0
    sync.close()


@pytest.mark.timeout(120)
def test_plain_consumer_scores_and_skips_known_results(redis_url, phantom_dir, tiny_checkpoint, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for f in sorted(phantom_dir.rglob("*_flair.nii.gz"))[:3]:
        shutil.copy(f, root / f.name)
    cfg = _cfg(redis_url, tiny_checkpoint, tmp_path / "out", root)
    scorer = SliceScorer(str(tiny_checkpoint))

    async def local(chunk):
        return scorer.score_chunks([chunk])[0]

    sync = StreamClient.from_url(redis_url, cfg.keys)
    sync.ensure_group()
    for _ in range(2):  # the second round is a re-enqueue of the same files
        for f in sorted(root.iterdir()):
            sync.add(message_for(f))
        consumer = StreamConsumer(cfg, AsyncStreamClient.from_url(redis_url, cfg.keys), local, model_info(scorer))
        asyncio.run(_run_until_drained(consumer, sync))
    assert consumer.stats["duplicate"] == 3 and consumer.stats["ok"] == 0
    assert ResultStore(cfg.output_dir).sql("SELECT count(*), count(DISTINCT scan_id), min(status) FROM scans_all")[
        1
    ] == [(3, 3, "ok")]
    sync.close()


def test_check_uri_refuses_escapes(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "x.nii").write_bytes(b"x")
    (root / "link.nii").symlink_to(outside / "x.nii")
    roots = [root.resolve()]
    for uri, why in [
        (str(root / ".." / "outside" / "x.nii"), "outside"),
        (str(root / "link.nii"), "outside"),
        ("relative/x.nii", "absolute"),
        (str(root / "a\x00b"), "NUL"),
    ]:
        with pytest.raises(ScanError, match=why):
            check_uri(uri, roots)
    with pytest.raises(ScanError, match="no allowed input roots"):
        check_uri(str(root / "y.nii"), [])
    assert check_uri(str(root / "sub" / ".." / "y.nii"), roots) == root.resolve() / "y.nii"
