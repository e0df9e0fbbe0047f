"""Ingest: the stream consumer (pipeline.service.consumer.StreamConsumer) inside Ray.

`IngestDeployment` is the Serve deployment: a background asyncio task in the replica
consumes the stream with the async Redis client and sends slice chunks to the scorer
deployment's handle. It reports the stream backlog (lag + pending, XINFO GROUPS) to
Serve through `record_autoscaling_stats`, which the custom policy in
deploy/autoscaling.py turns into a replica count.

`IngestWorker` is a plain Ray actor with the same consumer and an in-process scorer,
for running (and killing) a consumer without Serve.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict

import ray
from ray import serve

from patchrank.pipeline.service.consumer import StreamConsumer
from patchrank.pipeline.service.settings import ServiceConfig
from patchrank.pipeline.service.slice_scorer import ChunkResult, ModelInfo, SliceChunk, SliceScorer, model_info
from patchrank.pipeline.service.streams import AsyncStreamClient

log = logging.getLogger(__name__)


def _log_to_stderr() -> None:
    """Consumer logs (scan_id, entry id, never paths) go to the worker's stderr log."""
    lg = logging.getLogger("pipeline")
    if not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)


INGEST_NICE = 10  # niceness the ingest replica adds to its own: the scorers on its node come first


def yield_cpu_to_scorers(step: int = INGEST_NICE) -> None:
    """Lower this process's CPU priority by `step` (capped at 19): every thread it has, and so every thread
    they start later. On Linux, niceness is per thread (hence /proc/self/task); elsewhere per process."""
    tasks = os.listdir("/proc/self/task") if os.path.isdir("/proc/self/task") else ["0"]
    for tid in tasks:
        try:
            os.setpriority(os.PRIO_PROCESS, int(tid), min(19, os.getpriority(os.PRIO_PROCESS, int(tid)) + step))
        except OSError:  # a thread that ended meanwhile
            pass


class _ConsumerHost:
    """Runs one StreamConsumer as a background task of the current event loop."""

    def _start(
        self,
        cfg: ServiceConfig,
        info: Callable[[], Awaitable[ModelInfo]],
        score: Callable[[SliceChunk], Awaitable[ChunkResult]],
    ) -> None:
        self.cfg, self._info, self._score = cfg, info, score
        _log_to_stderr()
        self.consumer: StreamConsumer | None = None
        self._stop = asyncio.Event()
        self._client = AsyncStreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
        self._task = asyncio.get_running_loop().create_task(self._main())

    async def _main(self) -> None:
        self.consumer = StreamConsumer(self.cfg, self._client, self._score, await self._info())
        await self.consumer.run(self._stop)

    async def ready(self) -> str:
        """Wait until the stream consumer is built -> its name; raises what stopped it (e.g. a result folder it
        cannot create), which would otherwise only restart the replica over and over."""
        while self.consumer is None and not self._task.done():
            await asyncio.sleep(0.05)
        if self._task.done() and self._task.exception() is not None:
            raise self._task.exception()
        return self.consumer.name

    async def stats(self) -> dict:
        if self._task.done() and self._task.exception() is not None:
            raise RuntimeError(f"consumer stopped: {self._task.exception()!r}")
        return dict(self.consumer.stats) if self.consumer else {}

    async def backlog(self) -> dict:
        b = await self._client.backlog()
        return {"length": b.length, "lag": b.lag, "pending": b.pending, "consumers": b.consumers}

    async def stop(self) -> dict:
        self._stop.set()
        await self._task
        return dict(self.consumer.stats) if self.consumer else {}


@serve.deployment(name="Ingest", max_ongoing_requests=16)
class IngestDeployment(_ConsumerHost):
    def __init__(self, scorer, config: dict) -> None:
        yield_cpu_to_scorers()
        self._scorer = scorer  # DeploymentHandle of ScorerDeployment
        self._start(ServiceConfig(**config), self._remote_info, self._remote_score)

    async def _remote_info(self) -> ModelInfo:
        return ModelInfo.of(await self._scorer.info.remote())

    async def _remote_score(self, chunk: SliceChunk) -> ChunkResult:
        return await self._scorer.score.remote(chunk)

    async def record_autoscaling_stats(self) -> dict:
        b = await self._client.backlog()
        return {"backlog": float(b.lag + b.pending)}

    def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"consumer task ended: {self._task.exception()!r}")

    async def __call__(self, request=None) -> dict:
        return {
            "consumer": self.consumer.name if self.consumer else None,
            "stats": await self.stats(),
            "backlog": await self.backlog(),
        }

    def __del__(self):
        """Replica shutdown (scale-down, redeploy, serve.delete, SIGTERM of `serve run`): Serve
        calls this inside the replica's event loop and awaits the coroutine it returns, which
        stops reading, finishes the in-flight scans, writes them and acknowledges them (within
        graceful_shutdown_timeout_s). Plain garbage collection only stops reading; anything
        unacknowledged is then reclaimed by another replica's XAUTOCLAIM."""
        if not hasattr(self, "_stop") or self._stop.is_set():
            return None
        self._stop.set()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._drain()

    async def _drain(self) -> None:
        try:
            await self._task
        finally:
            await self._client.close()


@ray.remote(max_restarts=0)
class IngestWorker(_ConsumerHost):
    """A consumer with its own in-process SliceScorer (no Serve)."""

    async def __init__(self, config: dict) -> None:
        cfg = ServiceConfig(**config)
        self.scorer = await asyncio.to_thread(
            SliceScorer,
            cfg.checkpoint,
            device=cfg.device,
            torch_threads=cfg.torch_threads,
            endpoint=cfg.s3_endpoint_url,
        )
        self._start(cfg, self._local_info, self._local_score)

    async def _local_info(self) -> ModelInfo:
        return model_info(self.scorer)

    async def _local_score(self, chunk: SliceChunk) -> ChunkResult:
        return (await asyncio.to_thread(self.scorer.score_chunks, [chunk]))[0]

    async def ready(self) -> dict:
        return asdict(model_info(self.scorer))
