"""Run the scoring service for one job: services up -> deploy -> enqueue -> drain -> down.

Used by `patchrank screen`, `patchrank demo`, the service benchmark and the
integration tests. Embedded default: a private redis-server (pipeline.service.embedded_redis)
and a local Ray, both started here and stopped here, also on Ctrl-C. With a Redis URL
and/or a Ray address the existing services are used and left running (only the Serve
app this job deployed is deleted). Ray is imported lazily (pipeline/ layout rule).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from patchrank.pipeline.service.settings import AppArgs, redact_url
from patchrank.pipeline.service.streams import Backlog, StreamClient

log = logging.getLogger(__name__)
APP_NAME = "patchrank"


@contextlib.contextmanager
def sigterm_as_interrupt():
    """While active, SIGTERM raises KeyboardInterrupt like Ctrl-C, so the `finally` blocks
    stop what was started. Entered after ray.init, whose native handler would otherwise
    end the process mid-cleanup (leaving the private redis-server and Ray agents behind)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def services(redis_url: str | None = None, address: str | None = None, num_cpus: int | None = None):
    """Yield a Redis URL with Ray + Serve running; stop whatever was started here."""
    import ray
    from ray import serve

    from patchrank.pipeline.service.embedded_redis import EmbeddedRedis

    stack = contextlib.ExitStack()
    with stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis())
            log.info("started a private redis-server at %s", redact_url(redis_url))
        started_ray = False
        if not ray.is_initialized():
            kw = (
                {"address": address}
                if address
                else {"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False}
            )
            ray.init(log_to_driver=False, configure_logging=False, **kw)
            started_ray = address is None
        stack.enter_context(sigterm_as_interrupt())
        try:
            serve.start(proxy_location="Disabled")
            yield redis_url
        finally:
            if started_ray:
                with contextlib.suppress(Exception):
                    serve.shutdown()
                ray.shutdown()


def deploy(args: AppArgs, name: str = APP_NAME):
    from ray import serve

    from patchrank.deploy.serve_app import build_app

    return serve.run(build_app(args), name=name, route_prefix=None)


def scorer_info(name: str = APP_NAME):
    from ray import serve

    from patchrank.pipeline.service.slice_scorer import ModelInfo

    return ModelInfo(**serve.get_deployment_handle("Scorer", name).info.remote().result())


def undeploy(name: str = APP_NAME) -> None:
    from ray import serve

    with contextlib.suppress(Exception):
        serve.delete(name)


def wait_drained(
    client: StreamClient, *, timeout_s: float | None = None, show: bool = True, poll_s: float = 0.25
) -> Backlog:
    """Block until every entry of the stream is acknowledged (lag + pending == 0)."""
    b = client.backlog()
    total = b.total
    bar = tqdm(total=total, desc="scoring", unit="scan", disable=None if show else True)  # None: TTY only
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while b.total > 0:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"stream not drained after {timeout_s:.0f}s: lag {b.lag}, pending {b.pending}")
            time.sleep(poll_s)
            b = client.backlog()
            if b.total > total:  # more was enqueued meanwhile
                bar.total = total = b.total
            bar.n = total - b.total
            bar.refresh()
    finally:
        bar.close()
    return b


@dataclass
class ScreenResult:
    queued: int
    skipped: list[tuple[str, str]]
    model_version: str
    seconds: float
    out: str | Path


def screen(
    paths: list[str | Path],
    app: AppArgs,
    *,
    timeout_s: float | None = None,
    show: bool = True,
    keep_app: bool = False,
    modality: str | None = None,
    pattern: str | None = None,
) -> ScreenResult:
    """Enqueue `paths` and score them through the Serve app described by `app`.

    Expects Ray + Serve to be up (see `services`); deploys the app, waits until the
    stream is drained, then deletes the app unless keep_app."""
    from patchrank.pipeline.commands.enqueue import enqueue_paths

    cfg = app.service
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    t0 = time.monotonic()
    try:
        client.ensure_group()
        deploy(app)
        info = scorer_info()
        report = enqueue_paths(
            client, paths, modality=modality, pattern=pattern, show=show, endpoint=cfg.s3_endpoint_url
        )
        wait_drained(client, timeout_s=timeout_s, show=show)
    finally:
        client.close()
        if not keep_app:
            undeploy()
    out = cfg.output_dir if cfg.output_dir.startswith("s3://") else Path(cfg.output_dir)
    return ScreenResult(len(report.queued), report.skipped, info.model_version, time.monotonic() - t0, out)
