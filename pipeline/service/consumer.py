"""The stream consumer: plain asyncio Python, wrapped by the Serve ingest deployment.

Loop: XAUTOCLAIM stalled entries (every claim_every_s), XTRIM the acknowledged head of the
stream (every trim_every_s) and XREADGROUP new ones -> per entry: validate the JSON
message -> check the URI against the allowed roots -> check the file is the one queued
(size, mtime, inode) and of the kind the model was trained on -> reserve its estimated
memory from the replica's in-flight budget -> load + preprocess
(pipeline.data.preprocess.preprocess_scan, in a worker thread) -> send the slices, in
chunks, concurrently to `score_chunk` (the Serve scorer, or a local function) -> rank
patches (pipeline.scan_scoring) and the volume score (model.scoring.score_scan) -> buffer
the rows -> write a Parquet part -> mark done -> XACK. Outcomes:
  ok / failed (ScanError: corrupt, unsupported, missing, empty, wrong dims, outside roots,
      changed since queued, implausible geometry, over a size limit, non-finite score)
      -> one result row, acknowledged;
  infrastructure error (scorer down, anything unexpected) -> reason recorded in Redis
      (one line: class and message, pipeline.errors.one_line), entry left pending, retried
      via XAUTOCLAIM; after max_deliveries -> a `failed` row saying why ("gave up after ...":
      not final, a later queueing scores it again), plus a copy on the dead-letter stream,
      acknowledged;
  malformed message (no scan_id to key a row on) -> dead-letter stream, acknowledged;
  already has a result for this model version -> acknowledged, nothing written.
Logs name the scan_id and stream entry, never the path or header text.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

from patchrank.model.config import ScoringConfig
from patchrank.pipeline.data.bids import entities
from patchrank.pipeline.data.dicom import read_series
from patchrank.pipeline.data.loaders import ScanError, scan_values
from patchrank.pipeline.data.modality import other_modality, wrong_kind
from patchrank.pipeline.data.preprocess import Prepared, as_config, peak_bytes, prepared_bytes
from patchrank.pipeline.data.storage import is_s3
from patchrank.pipeline.errors import one_line
from patchrank.pipeline.evaluation import operating_point
from patchrank.pipeline.scan_scoring import finish_scan, rank_patches, write_scan_map
from patchrank.pipeline.service.intake import MemoryBudget, check_identity, check_uri, load_uri
from patchrank.pipeline.service.messages import MessageError, ScanMessage
from patchrank.pipeline.service.settings import ServiceConfig
from patchrank.pipeline.service.sink import ParquetSink
from patchrank.pipeline.service.slice_scorer import ChunkResult, ModelInfo, SliceChunk, merge_chunks
from patchrank.pipeline.service.streams import AsyncStreamClient
from patchrank.pipeline.service.tables import GAVE_UP, PatchRow, ScanRow, gave_up, patch_row, top_patch, utcnow

log = logging.getLogger(__name__)
ScoreChunk = Callable[[SliceChunk], Awaitable[ChunkResult]]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class _Result:
    entry_id: str
    scan: ScanRow | None
    patches: list[PatchRow] = field(default_factory=list)
    dead_reason: str | None = None  # set: copy to the dead-letter stream instead of a plain ack
    fields: dict | None = None
    created: float = field(default_factory=time.monotonic)


class StreamConsumer:
    def __init__(
        self,
        cfg: ServiceConfig,
        client: AsyncStreamClient,
        score_chunk: ScoreChunk,
        info: ModelInfo,
        *,
        name: str | None = None,
        sink: ParquetSink | None = None,
    ) -> None:
        self.cfg, self.client, self.score_chunk, self.info = cfg, client, score_chunk, info
        self.name = name or consumer_name()
        self.scoring = ScoringConfig.from_dict(info.scoring)
        self.roots = frozenset(cfg.resolved_roots())
        self.sink = sink or ParquetSink(cfg.output_dir, model_version=info.model_version, endpoint=cfg.s3_endpoint_url)
        # None: rows get flagged=None
        self.threshold = operating_point.load(cfg.checkpoint, info.model_version, cfg.s3_endpoint_url)
        self.stats = {
            k: 0
            for k in (
                "read",
                "claimed",
                "ok",
                "failed",
                "dead",
                "duplicate",
                "infra_errors",
                "acked",
                "parts",
                "trimmed",
            )
        }
        self._buffer: list[_Result] = []
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._sem = asyncio.Semaphore(cfg.max_inflight_scans)
        self._budget = MemoryBudget(cfg.max_inflight_mb * 2**20)
        self._flush_lock = asyncio.Lock()

    # ---- main loop -------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.client.ensure_group()
        log.info("consumer %s started (model_version %s)", self.name, self.info.model_version)
        flusher = asyncio.create_task(self._flush_loop(stop))
        last_beat, last_claim, last_trim, backoff = 0.0, 0.0, time.monotonic(), 0.5
        try:
            while not stop.is_set():
                try:
                    # heartbeat and trim run on schedule even while every slot is busy: in-flight
                    # entries must not look idle to other consumers however long they take
                    if time.monotonic() - last_beat >= self.cfg.claim_every_s:
                        last_beat = await self._heartbeat()
                    if self.cfg.trim_every_s and time.monotonic() - last_trim >= self.cfg.trim_every_s:
                        last_trim = time.monotonic()
                        self.stats["trimmed"] += await self.client.trim_acked()
                    if len(self._tasks) >= self.cfg.max_inflight_scans:
                        await asyncio.wait(
                            self._tasks, timeout=self._idle_wait_s(), return_when=asyncio.FIRST_COMPLETED
                        )
                        continue
                    if time.monotonic() - last_claim >= self.cfg.claim_every_s:
                        last_claim = last_beat = await self._heartbeat()  # own live entries are never idle here
                        claimed = [
                            e
                            for e in await self.client.claim(self.name, self.cfg.claim_idle_ms)
                            if e[0] not in self._active
                        ]
                        self.stats["claimed"] += len(claimed)
                        self._spawn(claimed, claimed=True)
                    free = self.cfg.max_inflight_scans - len(self._tasks)
                    if free > 0:
                        entries = await self.client.read(self.name, min(free, self.cfg.read_count), self.cfg.block_ms)
                        self.stats["read"] += len(entries)
                        self._spawn(entries, claimed=False)
                    backoff = 0.5
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("consumer %s: stream or group vanished; recreating the group", self.name)
                    await self.client.ensure_group()
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    log.warning(
                        "consumer %s: redis unavailable (%s); retrying in %.1fs",
                        self.name,
                        exc.__class__.__name__,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
        finally:
            await self._flush()  # what is scored is written and acked first: a shutdown deadline may cut the wait below
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self.cfg.drain_timeout_s)
            stop.set()
            if self._tasks:  # still stuck (e.g. the scorer is gone): they stay pending, redelivered later
                async with self._flush_lock:
                    flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush()

    async def _heartbeat(self) -> float:
        """Reset the idle time of the entries in flight; returns when it ran."""
        if self._active:
            await self.client.touch(self.name, list(self._active))
        return time.monotonic()

    def _idle_wait_s(self) -> float:
        """How long a consumer with every slot busy waits for one to free before its next heartbeat/trim check."""
        return min(0.5, self.cfg.claim_every_s, self.cfg.trim_every_s or 0.5)

    def _spawn(self, entries: list, *, claimed: bool) -> None:
        for entry_id, fields in entries:
            self._active.add(entry_id)
            t = asyncio.create_task(self._handle(entry_id, fields, claimed))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    # ---- one entry -----------------------------------------------------------------
    async def _handle(self, entry_id: str, fields: dict, claimed: bool) -> None:
        t0, mv = time.monotonic(), self.info.model_version
        try:
            deliveries = (await self.client.deliveries([entry_id]))[entry_id] if claimed else 1
            try:
                msg = ScanMessage.from_fields(fields)
            except MessageError as exc:
                log.warning("entry %s: %s -> dead letter", entry_id, exc)
                await self.client.dead_letter(entry_id, fields, str(exc), deliveries)
                self.stats["dead"] += 1
                self._active.discard(entry_id)
                return
            queue_s = max(0.0, time.time() - msg.submitted_at)
            if self.sink.is_written(msg.scan_id, mv) or (await self.client.done(mv, [msg.scan_id]))[0]:
                log.info("scan %s already has a result for %s; acknowledging entry %s", msg.scan_id, mv, entry_id)
                self.stats["duplicate"] += 1
                await self.client.ack([entry_id])
                self.stats["acked"] += 1
                self._active.discard(entry_id)
                return
            if deliveries > self.cfg.max_deliveries:
                reason = await self.client.last_error(entry_id) or "no error recorded (consumer died while scoring?)"
                why = f"{GAVE_UP}{deliveries - 1} deliveries: {reason}"
                log.warning("scan %s (entry %s): %s", msg.scan_id, entry_id, why)
                row = self._failed(msg, entry_id, deliveries, why, t0, queue_s)
                self._buffer.append(_Result(entry_id, row, dead_reason=why, fields=fields))
                return
            async with self._sem:
                result = await self._score(msg, entry_id, deliveries, t0, queue_s)
            self._buffer.append(result)  # not `self._buffer.append(await ...)`: a flush may swap the buffer meanwhile
        except Exception as exc:  # noqa: BLE001 - infrastructure: leave pending, retry via XAUTOCLAIM
            self.stats["infra_errors"] += 1
            log.warning("entry %s: %s; left pending for retry", entry_id, exc.__class__.__name__)
            try:
                await self.client.record_error(entry_id, one_line(exc))
            except Exception:  # noqa: BLE001
                pass
            self._active.discard(entry_id)

    async def _score(self, msg: ScanMessage, entry_id: str, deliveries: int, t0: float, queue_s: float) -> _Result:
        held = 0
        try:
            try:
                path = check_uri(msg.uri, self.roots)
                self._check_kind(path, msg)
                series = None  # a local DICOM series: its headers read once, here, and the found series loaded
                if msg.series_uid is not None and not is_s3(path):
                    series = await asyncio.to_thread(read_series, path, msg.series_uid)
                if msg.modality is None and not (is_s3(path) and msg.series_uid):  # (an s3:// series: not checked)
                    why = other_modality(path, series, self.info.modality)
                    if why:
                        raise ScanError(why)
                local_file = not is_s3(path) and msg.series_uid is None
                if local_file:
                    check_identity(msg, path)
                pre = as_config(self.info.preprocess)
                values = await asyncio.to_thread(scan_values, path, pre.channels) if local_file else 0
                # 0: an s3:// object or a DICOM series (bounded by max_voxels); over max_voxels: the
                # loader refuses it from the header, reading nothing
                need = peak_bytes(values, pre.pose, pre.image_hair) if values <= pre.max_voxels * pre.channels else 0
                if need > self._budget.capacity:
                    raise ScanError(
                        f"{Path(str(path)).name}: needs ~{need / 2**20:.0f} MiB to load and preprocess, over the "
                        f"ingest replica's in-flight budget of {self.cfg.max_inflight_mb} MiB (max_inflight_mb)"
                    )
                await self._budget.acquire(need)
                held = need
                prep = await asyncio.to_thread(
                    load_uri,
                    series or path,
                    self.info.preprocess,
                    self.cfg.s3_endpoint_url,
                    None if series else msg.series_uid,
                    max_slices=self.cfg.max_slices,
                    max_bytes=self.cfg.max_prepared_mb * 2**20,
                )
                if local_file:
                    check_identity(msg, path, "while it was being read")
                keep = min(held, prepared_bytes(len(prep.images), pre))  # what stays in memory while scoring
                await self._budget.release(held - keep)
                held = keep
            except ScanError as exc:
                log.info("scan %s: unreadable (%s)", msg.scan_id, exc.__class__.__name__)
                return _Result(entry_id, self._failed(msg, entry_id, deliveries, str(exc), t0, queue_s))
            return await self._score_prepared(msg, entry_id, deliveries, t0, queue_s, prep)
        finally:
            if held:
                await self._budget.release(held)

    def _check_kind(self, path: Path | str, msg: ScanMessage) -> None:
        """A model trained on volumes (FLAIR) refuses 2D images, and a 2D model volumes."""
        why = wrong_kind(path, msg.series_uid, self.info.input_kind)
        if why:
            raise ScanError(why)

    async def _score_prepared(
        self, msg: ScanMessage, entry_id: str, deliveries: int, t0: float, queue_s: float, prep: Prepared
    ) -> _Result:
        n, step = len(prep.images), self.cfg.chunk
        chunks = [
            SliceChunk(
                prep.images[i : i + step],
                prep.foreground[i : i + step],
                prep.position[i : i + step],
                maps=self.cfg.write_maps,
            )
            for i in range(0, n, step)
        ]
        parts = await asyncio.gather(*(self.score_chunk(c) for c in chunks))
        out = merge_chunks(list(parts))
        scan_scores = finish_scan(out.image_scores, prep, self.scoring, out.pixel_map if self.cfg.write_maps else None)
        score = scan_scores.scan_score
        map_uri = None
        if self.cfg.write_maps and prep.geometry is not None:
            map_uri = f"maps/{msg.scan_id}.nii.gz"
            await asyncio.to_thread(write_scan_map, Path(self.cfg.output_dir) / map_uri, prep, scan_scores.maps)
        hits = rank_patches(
            out, prep.slice_index, prep.native_shape, self.cfg.top_patches, prep.geometry, prep.images.shape[-1]
        )
        if not np.isfinite(float(score)) or any(not np.isfinite(h.score) for h in hits):
            why = "the model gave a non-finite score (NaN/inf) for this scan"  # never `ok` ranked by NULL
            log.warning("scan %s: %s", msg.scan_id, why)
            return _Result(entry_id, self._failed(msg, entry_id, deliveries, why, t0, queue_s))
        now, rid, mv = utcnow(), uuid.uuid4().hex, self.info.model_version
        scan = ScanRow(
            result_id=rid,
            scan_id=msg.scan_id,
            uri=msg.uri,
            series_uid=msg.series_uid,
            **entities(msg.uri),
            map_uri=map_uri,
            flagged=operating_point.flagged(float(score), self.threshold),
            status="ok",
            n_slices=n,
            scan_score=float(score),
            top_patches=[top_patch(h) for h in hits[:10]],
            latency_s=time.monotonic() - t0,
            queue_s=queue_s,
            model_version=mv,
            stream_id=entry_id,
            deliveries=deliveries,
            scored_at=now,
        )
        patches = [patch_row(h, result_id=rid, scan_id=msg.scan_id, model_version=mv, stream_id=entry_id, scored_at=now)
                   for h in hits]  # fmt: skip
        log.debug("scan %s scored: %d slices, score %.3f", msg.scan_id, n, score)
        return _Result(entry_id, scan, patches)

    def _failed(
        self, msg: ScanMessage, entry_id: str, deliveries: int, error: str, t0: float, queue_s: float
    ) -> ScanRow:
        return ScanRow(
            result_id=uuid.uuid4().hex,
            scan_id=msg.scan_id,
            uri=msg.uri,
            series_uid=msg.series_uid,
            **entities(msg.uri),
            status="failed",
            error=" ".join(str(error).split())[:1000],
            latency_s=time.monotonic() - t0,
            queue_s=queue_s,
            model_version=self.info.model_version,
            stream_id=entry_id,
            deliveries=deliveries,
            scored_at=utcnow(),
        )

    # ---- write, then acknowledge ----------------------------------------------------
    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self._tasks):
            await asyncio.sleep(0.05)
            if self._buffer and (
                len(self._buffer) >= self.cfg.flush_scans
                or time.monotonic() - self._buffer[0].created >= self.cfg.flush_interval_s
            ):
                await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            batch, self._buffer = self._buffer, []
            if not batch:
                return
            try:  # another consumer may have finished the same entry meanwhile (a redelivery raced us)
                done = await self.client.done(self.info.model_version, [r.scan.scan_id for r in batch])
            except Exception:  # noqa: BLE001 - Redis down: the write below fails the same way
                done = [False] * len(batch)
            raced = [r for r, d in zip(batch, done) if d]
            batch = [r for r, d in zip(batch, done) if not d]
            if raced:
                await self._ack_raced(raced)
            if not batch:
                return
            try:
                parts = await asyncio.to_thread(
                    self.sink.write, [r.scan for r in batch], [p for r in batch for p in r.patches]
                )
                final = [r.scan.scan_id for r in batch if not gave_up(r.scan.status, r.scan.error)]
                await self.client.mark_done(self.info.model_version, final)  # a give-up is retried if queued again
                for r in batch:
                    if r.dead_reason is not None:
                        await self.client.dead_letter(r.entry_id, r.fields or {}, r.dead_reason, r.scan.deliveries)
                acked = await self.client.ack([r.entry_id for r in batch if r.dead_reason is None])
            except Exception as exc:  # noqa: BLE001 - not acknowledged: redelivered later, deduplicated by key
                self.stats["infra_errors"] += 1
                log.warning("flush of %d results failed (%s); entries stay pending", len(batch), exc.__class__.__name__)
                reason = f"result write failed: {one_line(exc)}"
                for r in batch:
                    self._active.discard(r.entry_id)
                    try:  # the reason survives for the consumer that gives up on the entry
                        if r.dead_reason is None:
                            await self.client.record_error(r.entry_id, reason)
                        else:  # giving up and cannot write the failed row: the dead-letter entry is the record
                            await self.client.dead_letter(
                                r.entry_id, r.fields or {}, f"{r.dead_reason}; {reason}", r.scan.deliveries
                            )
                            self.stats["dead"] += 1
                    except Exception:  # noqa: BLE001 - Redis down too: stays pending, retried later
                        pass
                return
            self.stats["parts"] += len(parts)
            self.stats["acked"] += acked
            for r in batch:
                key = "dead" if r.dead_reason is not None else r.scan.status
                self.stats[key] += 1
                self._active.discard(r.entry_id)

    async def _ack_raced(self, raced: list[_Result]) -> None:
        """Results whose key another consumer has written since we read the entry: acknowledge,
        write nothing (narrows the window in which a redelivery race writes a second row)."""
        try:
            self.stats["acked"] += await self.client.ack([r.entry_id for r in raced])
            self.stats["duplicate"] += len(raced)
        except Exception:  # noqa: BLE001 - stays pending; the next delivery sees the done-set
            pass
        for r in raced:
            self._active.discard(r.entry_id)
