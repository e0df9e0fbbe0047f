"""Serve scorer deployment: the checkpoint loaded once, slices batched with @serve.batch.

A request is one SliceChunk (a few slices of one scan); `@serve.batch` gathers chunks
from many concurrent scans up to `max_batch_size` *slices* (batch_size_fn counts
slices) or `batch_wait_timeout_s`, and runs one forward of reconstructor +
discriminator through pipeline.service.slice_scorer (-> model.scoring.score_members). Both knobs
change at runtime through `user_config` (serve_config.yaml or `serve deploy` again).
Placement (num_cpus / num_gpus) and autoscaling_config come from the app builder; the replica runs as many
torch threads as CPUs it was given (or `torch_threads`), and its networks go through pipeline.inference.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

import ray
from ray import serve

from patchrank.pipeline.inference import inference_threads, process_memory
from patchrank.pipeline.service.slice_scorer import ChunkResult, SliceChunk, SliceScorer, chunk_size, model_info


@serve.deployment(name="Scorer", max_ongoing_requests=256)
class ScorerDeployment:
    def __init__(
        self, checkpoint: str, device: str = "cpu", torch_threads: int | None = None, s3_endpoint: str | None = None
    ) -> None:
        # Threads: as configured, else the CPUs Ray gave this replica (at least 1), so replicas sharing a
        # node never run more threads than it has cores.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        threads = torch_threads or inference_threads(cpus if cpus else 1)
        self.scorer = SliceScorer(checkpoint, device=device, torch_threads=threads, endpoint=s3_endpoint)
        self.work = {"batches": 0, "slices": 0, "busy_s": 0.0, "busy_cpu_s": 0.0}  # forwards run by this replica

    def reconfigure(self, user_config: dict) -> None:
        """user_config: {max_batch_size: int, batch_wait_timeout_s: float} (both optional)."""
        if "max_batch_size" in user_config:
            self.score.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            self.score.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def info(self) -> dict:
        return asdict(model_info(self.scorer))

    def usage(self) -> dict:
        """This replica: pid, resident set now and its peak (MiB), and the forwards it ran (batches, slices,
        seconds spent in them: busy_s over a wall-clock window is the replica's utilisation; busy_cpu_s: the
        process's CPU seconds while they ran)."""
        return {**process_memory(), **self.work}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01, batch_size_fn=chunk_size)
    async def score(self, chunks: list[SliceChunk]) -> list[ChunkResult]:
        # The forward runs in a worker thread so this replica keeps accepting (and
        # batching) requests while the model computes.
        t0, c0 = time.perf_counter(), time.process_time()
        out = await asyncio.to_thread(self.scorer.score_chunks, chunks)
        self.work["busy_s"] += time.perf_counter() - t0
        self.work["busy_cpu_s"] += time.process_time() - c0
        self.work["batches"] += 1
        self.work["slices"] += chunk_size(chunks)
        return out
