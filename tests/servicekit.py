"""Test harness for the streaming service: run the plain-Python consumer against a real
redis-server, inject faults, and check the one invariant that matters:

    every enqueued scan ends as exactly one logical result (ok or failed) keyed by
    (scan_id, model_version), nothing is left pending, and every visible Parquet part
    file is complete.

Also runnable as a script (`python tests/servicekit.py CONFIG_JSON [--crash-after-write]`)
to host a consumer in a child process that a test can SIGTERM or SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from patchrank.pipeline.service.consumer import StreamConsumer  # noqa: E402
from patchrank.pipeline.service.messages import ScanMessage, message_for  # noqa: E402
from patchrank.pipeline.service.results import ResultStore  # noqa: E402
from patchrank.pipeline.service.settings import ServiceConfig  # noqa: E402
from patchrank.pipeline.service.sink import part_files  # noqa: E402
from patchrank.pipeline.service.slice_scorer import ChunkResult, SliceChunk, SliceScorer, model_info  # noqa: E402
from patchrank.pipeline.service.streams import AsyncStreamClient, StreamClient  # noqa: E402

FAST = dict(
    claim_idle_ms=300,
    claim_every_s=0.2,
    block_ms=50,
    flush_interval_s=0.1,
    flush_scans=8,
    max_inflight_scans=4,
    read_count=8,
)


def phantom_archive(phantom_dir: Path, root: Path, n: int) -> Path:
    """root/scan_00_flair.nii.gz ... : n copies cycling over the phantom FLAIR volumes
    (distinct files, hence distinct scan ids); returns root."""
    root.mkdir(parents=True)
    sources = sorted(Path(phantom_dir).rglob("*_flair.nii.gz"))
    for i in range(n):
        shutil.copy(sources[i % len(sources)], root / f"scan_{i:02d}_flair.nii.gz")
    return root


def service_config(redis_url: str, tmp: Path, checkpoint: str | Path, **over) -> ServiceConfig:
    kw = dict(FAST)
    kw.update(over)
    kw.setdefault("namespace", f"t{uuid.uuid4().hex[:8]}")
    kw.setdefault("output_dir", str(tmp / "out"))
    kw.setdefault("allowed_roots", [str(tmp / "scans")])
    return ServiceConfig(redis_url=redis_url, checkpoint=str(checkpoint), **kw)


class LocalScorer:
    """The in-process scorer the consumer calls; `fail` hooks inject scorer faults."""

    def __init__(self, scorer: SliceScorer) -> None:
        self.scorer = scorer
        self.calls = 0
        self.fail = None  # callable(call_number, chunk) -> None or raises

    async def __call__(self, chunk: SliceChunk) -> ChunkResult:
        self.calls += 1
        if self.fail is not None:
            self.fail(self.calls, chunk)
        return (await asyncio.to_thread(self.scorer.score_chunks, [chunk]))[0]


def make_consumer(cfg: ServiceConfig, scorer: LocalScorer, *, name: str | None = None) -> StreamConsumer:
    client = AsyncStreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    return StreamConsumer(cfg, client, scorer, model_info(scorer.scorer), name=name)


def enqueue(cfg: ServiceConfig, paths: list[Path]) -> list[ScanMessage]:
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    try:
        client.ensure_group()
        msgs = [message_for(p) for p in paths]
        client.add_many(msgs)
        return msgs
    finally:
        client.close()


def backlog(cfg: ServiceConfig):
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    try:
        return client.backlog()
    finally:
        client.close()


async def drive(consumers: list[StreamConsumer], cfg: ServiceConfig, *, timeout_s: float = 60.0, during=None) -> None:
    """Run the consumers until the stream is drained (lag + pending == 0), then stop them.

    `during(elapsed_s)` is awaited every 50 ms while running (fault injection)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run(stop)) for c in consumers]
    client = AsyncStreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    t0 = time.monotonic()
    try:
        quiet, seen = 0, False  # seen: the stream has had entries (trimming may empty it again)
        while quiet < 3:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"stream not drained after {timeout_s}s")
            for t in tasks:
                if t.done():
                    t.result()  # a consumer that died raises here
            if during is not None:
                await during(time.monotonic() - t0)
            await asyncio.sleep(0.05)
            try:
                b = await client.backlog()
            except Exception:  # noqa: BLE001 - Redis may be down on purpose
                quiet = 0
                continue
            seen = seen or b.length > 0
            quiet = quiet + 1 if b.total == 0 and seen else 0
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        for c in consumers:
            await c.client.close()
        await client.close()


@dataclass
class Outcome:
    rows: dict[str, dict]  # scan_id -> logical result row
    physical: int  # scan rows in all part files (>= logical when a redelivery raced)
    dead: list[dict] = field(default_factory=list)


def check_exactly_once(cfg: ServiceConfig, scan_ids: list[str], *, model_version: str | None = None) -> Outcome:
    """Assert the invariant; return the logical rows for further checks."""
    b = backlog(cfg)
    assert b.lag == 0 and b.pending == 0, f"stream not drained: {b}"
    out = Path(cfg.output_dir)
    for table in ("scans", "patches"):
        for p in part_files(out, table):
            pq.read_table(p)  # every visible part is a complete Parquet file
    store = ResultStore(out)
    where = f"WHERE model_version = '{model_version}'" if model_version else ""
    cols, rows = store.sql(f"SELECT * FROM scans {where}")
    logical = [dict(zip(cols, r)) for r in rows]
    by_id = {r["scan_id"]: r for r in logical}
    assert len(by_id) == len(logical), "two logical results for one key"
    assert sorted(by_id) == sorted(set(scan_ids)), (
        f"missing {sorted(set(scan_ids) - set(by_id))[:5]}, unexpected {sorted(set(by_id) - set(scan_ids))[:5]}"
    )
    physical = store.sql(f"SELECT count(*) FROM scans_all {where}")[1][0][0]
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    try:
        dead = [{k.decode(): v.decode(errors="replace") for k, v in f.items()} for _, f in client.dead_letters()]
    finally:
        client.close()
    return Outcome(by_id, int(physical), dead)


# ---- child-process consumer (SIGTERM / SIGKILL tests) ---------------------------------
def _child(config_path: str, crash_after_write: bool) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
    spec = json.loads(Path(config_path).read_text())
    cfg = ServiceConfig(**spec["service"])
    scorer = LocalScorer(SliceScorer(cfg.checkpoint, torch_threads=1))
    slow_s = float(spec.get("slow_s", 0.0))

    def slow(_n, _chunk):
        time.sleep(slow_s)  # keeps scans in flight long enough to be interrupted

    if slow_s:
        scorer.fail = slow
    consumer = make_consumer(cfg, scorer, name=spec.get("name"))
    if crash_after_write:
        real_write = consumer.sink.write

        def write_then_die(scans, patches):
            parts = real_write(scans, patches)
            print(f"CRASH after writing {len(scans)} results", file=sys.stderr, flush=True)
            os._exit(9)  # killed between the Parquet write and the XACK
            return parts

        consumer.sink.write = write_then_die

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print("READY", file=sys.stderr, flush=True)
        await consumer.run(stop)
        await consumer.client.close()
        print(f"STOPPED {json.dumps(consumer.stats)}", file=sys.stderr, flush=True)

    asyncio.run(main())
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], "--crash-after-write" in sys.argv))
