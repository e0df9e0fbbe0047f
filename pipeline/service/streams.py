"""Redis Streams wrappers (sync for the CLI, async for the Serve ingest replicas).

Both clients speak the same protocol on the same names (pipeline/keys.py):
  add        XADD one ScanMessage (JSON)         read      XREADGROUP new entries
  ack        XACK (+ forget the recorded error)  claim     XAUTOCLAIM, looped to the end cursor
  deliveries XPENDING delivery count of entries  dead_letter  XADD to the dead stream with reason
  backlog    XINFO GROUPS lag + pending (for autoscaling and for "is the stream drained")
  trim_acked XTRIM MINID below the oldest pending entry and past the last delivered one:
             only entries every reader has acknowledged go (the stream stays bounded)
Entries are (entry_id: str, fields: dict[bytes, bytes]); nothing is unpickled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from patchrank.pipeline.service.keys import StreamKeys
from patchrank.pipeline.service.messages import ScanMessage

Entry = tuple[str, dict]
_END = (b"0-0", "0-0")


def _sid(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@dataclass(frozen=True)
class Backlog:
    length: int  # XLEN
    lag: int  # entries never delivered to the group
    pending: int  # delivered, not yet acknowledged
    consumers: int
    read: int | None = None  # entries the group has ever read (XINFO GROUPS entries-read, Redis >= 7)

    @property
    def total(self) -> int:
        return self.lag + self.pending

    @property
    def acked(self) -> int:
        """Entries read and acknowledged; exact after trimming where Redis reports entries-read."""
        return self.read - self.pending if self.read is not None else self.length - self.total


def _backlog(groups: list, length: int, group: str) -> Backlog:
    for g in groups:
        if _sid(g.get("name")) == group:
            lag = g.get("lag")
            if lag is None:  # Redis can't tell after deletions: fall back to XLEN - entries-read
                lag = max(0, length - int(g.get("entries-read") or 0))
            read = g.get("entries-read")
            return Backlog(
                length,
                int(lag),
                int(g.get("pending", 0)),
                int(g.get("consumers", 0)),
                None if read is None else int(read),
            )
    return Backlog(length, length, 0, 0)


def _entries(resp) -> list[Entry]:
    out = []
    for _stream, items in resp or []:
        out.extend((_sid(i), f) for i, f in items if f is not None)
    return out


def _after(entry_id: str) -> str:
    """The smallest stream id greater than entry_id."""
    ms, _, seq = entry_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


def safe_minid(groups: list, pending_min: str | None) -> str | None:
    """XTRIM MINID bound that removes only acknowledged entries: below every group's oldest
    pending entry and no further than every group's last delivered entry (entries never
    delivered are kept). None when there is nothing safe to trim."""
    bounds = []
    for g in groups:
        last = _sid(g.get("last-delivered-id") or "0-0")
        if last == "0-0":
            return None
        bounds.append(_after(last))
    if not bounds:
        return None
    if pending_min is not None:
        bounds.append(pending_min)
    return min(bounds, key=lambda i: tuple(int(x) for x in i.split("-")))


def connect(url: str, **kwargs) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, **kwargs)


def connect_async(url: str, **kwargs) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30, **kwargs)


class StreamClient:
    """Synchronous client: enqueue, monitor, tests."""

    def __init__(self, r: redis.Redis, keys: StreamKeys = StreamKeys()) -> None:
        self.r, self.keys = r, keys

    @classmethod
    def from_url(cls, url: str, keys: StreamKeys = StreamKeys(), **kw) -> StreamClient:
        return cls(connect(url, **kw), keys)

    def ensure_group(self) -> None:
        try:
            self.r.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def add(self, msg: ScanMessage) -> str:
        return _sid(self.r.xadd(self.keys.stream, msg.to_fields()))

    def add_many(self, msgs: list[ScanMessage]) -> list[str]:
        pipe = self.r.pipeline(transaction=False)
        for m in msgs:
            pipe.xadd(self.keys.stream, m.to_fields())
        return [_sid(x) for x in pipe.execute()]

    def read(self, consumer: str, count: int, block_ms: int | None = None) -> list[Entry]:
        return _entries(
            self.r.xreadgroup(self.keys.group, consumer, {self.keys.stream: ">"}, count=count, block=block_ms)
        )

    def ack(self, ids: list[str]) -> int:
        if not ids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        pipe.xack(self.keys.stream, self.keys.group, *ids)
        pipe.hdel(self.keys.errors, *ids)
        return int(pipe.execute()[0])

    def claim(self, consumer: str, min_idle_ms: int, count: int = 100) -> list[Entry]:
        out, cursor = [], "0-0"
        while True:
            resp = self.r.xautoclaim(self.keys.stream, self.keys.group, consumer, min_idle_ms, cursor, count=count)
            cursor = resp[0]
            out.extend((_sid(i), f) for i, f in resp[1] if f is not None)
            if cursor in _END:
                return out

    def deliveries(self, ids: list[str]) -> dict[str, int]:
        out = {}
        for i in ids:
            rows = self.r.xpending_range(self.keys.stream, self.keys.group, min=i, max=i, count=1)
            out[i] = int(rows[0]["times_delivered"]) if rows else 0
        return out

    def backlog(self) -> Backlog:
        try:
            groups = self.r.xinfo_groups(self.keys.stream)
        except redis.ResponseError:  # stream does not exist yet
            return Backlog(0, 0, 0, 0)
        return _backlog(groups, int(self.r.xlen(self.keys.stream)), self.keys.group)

    def dead_letters(self, count: int = 1000) -> list[Entry]:
        return [(_sid(i), f) for i, f in self.r.xrange(self.keys.dead_letter, count=count)]

    def wait_drained(self, timeout_s: float, poll_s: float = 0.2) -> Backlog:
        deadline = time.monotonic() + timeout_s
        while True:
            b = self.backlog()
            if b.total == 0 or time.monotonic() > deadline:
                return b
            time.sleep(poll_s)

    def close(self) -> None:
        self.r.close()


class AsyncStreamClient:
    """Asyncio client for the ingest consumer: never blocks the event loop."""

    def __init__(self, r: aioredis.Redis, keys: StreamKeys = StreamKeys()) -> None:
        self.r, self.keys = r, keys

    @classmethod
    def from_url(cls, url: str, keys: StreamKeys = StreamKeys(), **kw) -> AsyncStreamClient:
        return cls(connect_async(url, **kw), keys)

    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, consumer: str, count: int, block_ms: int | None = None) -> list[Entry]:
        resp = await self.r.xreadgroup(self.keys.group, consumer, {self.keys.stream: ">"}, count=count, block=block_ms)
        return _entries(resp)

    async def ack(self, ids: list[str]) -> int:
        if not ids:
            return 0
        pipe = self.r.pipeline(transaction=False)
        pipe.xack(self.keys.stream, self.keys.group, *ids)
        pipe.hdel(self.keys.errors, *ids)
        return int((await pipe.execute())[0])

    async def claim(self, consumer: str, min_idle_ms: int, count: int = 100) -> list[Entry]:
        out, cursor = [], "0-0"
        while True:
            resp = await self.r.xautoclaim(
                self.keys.stream, self.keys.group, consumer, min_idle_ms, cursor, count=count
            )
            cursor = resp[0]
            out.extend((_sid(i), f) for i, f in resp[1] if f is not None)
            if cursor in _END:
                return out

    async def touch(self, consumer: str, ids: list[str]) -> None:
        """Reset the idle time of entries this consumer is still working on (XCLAIM JUSTID:
        no delivery-count increment), so XAUTOCLAIM elsewhere does not steal live work."""
        if ids:
            await self.r.xclaim(self.keys.stream, self.keys.group, consumer, 0, ids, justid=True)

    async def deliveries(self, ids: list[str]) -> dict[str, int]:
        out = {}
        for i in ids:
            rows = await self.r.xpending_range(self.keys.stream, self.keys.group, min=i, max=i, count=1)
            out[i] = int(rows[0]["times_delivered"]) if rows else 0
        return out

    async def record_error(self, entry_id: str, reason: str) -> None:
        await self.r.hset(self.keys.errors, entry_id, reason[:500])

    async def last_error(self, entry_id: str) -> str | None:
        v = await self.r.hget(self.keys.errors, entry_id)
        return _sid(v) if v is not None else None

    async def dead_letter(self, entry_id: str, fields: dict, reason: str, deliveries: int) -> None:
        """Copy the entry to the dead-letter stream with the reason, then XACK it."""
        dead = {
            b"entry_id": entry_id.encode(),
            b"reason": reason[:500].encode(),
            b"deliveries": str(deliveries).encode(),
        }
        raw = fields.get(b"msg", fields.get("msg"))
        if raw is not None:
            dead[b"msg"] = raw if isinstance(raw, bytes) else str(raw).encode()
        await self.r.xadd(self.keys.dead_letter, dead)
        await self.ack([entry_id])

    async def mark_done(self, model_version: str, scan_ids: list[str]) -> None:
        if scan_ids:
            await self.r.sadd(self.keys.done(model_version), *scan_ids)

    async def done(self, model_version: str, scan_ids: list[str]) -> list[bool]:
        if not scan_ids:
            return []
        return [bool(x) for x in await self.r.smismember(self.keys.done(model_version), scan_ids)]

    async def backlog(self) -> Backlog:
        try:
            groups = await self.r.xinfo_groups(self.keys.stream)
        except redis.ResponseError:
            return Backlog(0, 0, 0, 0)
        return _backlog(groups, int(await self.r.xlen(self.keys.stream)), self.keys.group)

    async def trim_acked(self) -> int:
        """Delete the acknowledged head of the stream; returns the number of entries removed.
        Group info is read before the pending lists, so an entry delivered in between has an
        id above the bound and is kept."""
        try:
            groups = await self.r.xinfo_groups(self.keys.stream)
        except redis.ResponseError:  # no stream yet
            return 0
        oldest = []
        for g in groups:
            summary = await self.r.xpending(self.keys.stream, _sid(g["name"]))
            if summary and summary.get("pending"):
                oldest.append(_sid(summary["min"]))
        pending_min = min(oldest, key=lambda i: tuple(int(x) for x in i.split("-"))) if oldest else None
        minid = safe_minid(groups, pending_min)
        if minid is None:
            return 0
        return int(await self.r.xtrim(self.keys.stream, minid=minid, approximate=False))

    async def close(self) -> None:
        await self.r.aclose()
