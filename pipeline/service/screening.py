"""Run the scoring service for one job: services up -> deploy -> enqueue -> drain -> down.

Used by `patchrank screen`, `patchrank demo`, the service benchmark and the
integration tests. Embedded default: a private redis-server (pipeline.service.embedded_redis)
and a local Ray, both started here and stopped here, also on Ctrl-C, and killed by a
watchdog when this process is killed outright (kill -9). With a Redis URL and/or a Ray
address the existing services are used and left running (only the Serve app this job
deployed is deleted). Each run deploys its own Serve app (`patchrank-screen-<run id>`),
so two runs on one Ray cluster never replace each other's app.

A run ends with an account of every queued scan (`Accounting`): a result row, or a
dead-letter entry (which lives only as long as the Redis it is in), or missing. Anything
but a row for every scan is reported, scan by scan, and `patchrank screen` exits non-zero.
Ray is imported lazily (pipeline/ layout rule).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from patchrank.pipeline.service.settings import AppArgs, redact_url
from patchrank.pipeline.service.streams import Backlog, StreamClient

log = logging.getLogger(__name__)
APP_NAME = "patchrank"  # `patchrank serve` (override with --app-name); `screen` runs get their own


def run_id() -> str:
    return secrets.token_hex(4)


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


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in one line, when a host:port Ray address does not accept connections
    (ray.init would wait minutes for a GCS that is not there)."""
    import socket

    target = address.split("://", 1)[-1]
    if address in ("auto", "local") or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ValueError(f"--address {address}: expected host:port, ray://host:port or auto") from None
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise ConnectionError(f"cannot reach the Ray cluster at --address {address}: {reason}") from None


def check_redis(url: str, **kw) -> None:
    """Fail fast, in one line, when an existing Redis refuses us (wrong password, unreachable),
    before Ray is started."""
    client = StreamClient.from_url(url, **kw)
    try:
        client.r.ping()
    finally:
        client.close()


def quiet_ray_logs() -> None:
    """Keep Ray's routine driver-side messages off a clean run's output (unless debug logging is on):
    Serve's INFO lines ("Started Serve", "Deleting app") and the notice that token authentication is on.
    Warnings and errors still print."""
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(getattr(f, "patchrank", False) for f in auth.filters):
        notice = logging.Filter()
        notice.filter = lambda r: not r.getMessage().startswith("Token authentication is enabled")
        notice.patchrank = True
        auth.addFilter(notice)


@contextlib.contextmanager
def services(redis_url: str | None = None, address: str | None = None, num_cpus: int | None = None):
    """Yield a Redis URL with Ray + Serve running; stop whatever was started here."""
    import ray
    from ray import serve

    from patchrank.pipeline.inference import SCORING_ENV
    from patchrank.pipeline.service.embedded_redis import EmbeddedRedis
    from patchrank.pipeline.service.watchdog import watch_children

    quiet_ray_logs()
    if address and not ray.is_initialized():
        check_address(address)  # before anything is started
    stack = contextlib.ExitStack()
    with stack:
        if redis_url is None or (address is None and not ray.is_initialized()):
            stack.enter_context(watch_children())  # a kill -9 of this process still stops what it starts
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis())
            log.debug("started a private redis-server at %s", redact_url(redis_url))
        started_ray = False
        if not ray.is_initialized():
            if not address:  # a local Ray: its processes, the replicas among them, inherit this environment
                for key, value in SCORING_ENV.items():
                    os.environ.setdefault(key, value)
            kw = (
                {"address": address}
                if address
                else {"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False}
            )
            try:
                ray.init(log_to_driver=False, configure_logging=False, **kw)
            except Exception as exc:  # noqa: BLE001 - a bad --address: one line, not Ray's traceback
                from patchrank.pipeline.errors import one_line

                where = f"the Ray cluster at --address {address}" if address else "a local Ray"
                raise ConnectionError(f"cannot start or reach {where}: {one_line(exc)}") from None
            started_ray = address is None
        stack.enter_context(sigterm_as_interrupt())
        try:
            serve.start(proxy_location="Disabled")
            yield redis_url
        finally:
            if started_ray:  # stopping the local Ray stops Serve's controller too; serve.shutdown() would
                ray.shutdown()  # ray.kill it and print "(raylet) ... killed by `ray.kill`" for its pending calls


def deploy(args: AppArgs, name: str = APP_NAME):
    from ray import serve

    from patchrank.deploy.serve_app import build_app

    return serve.run(build_app(args), name=name, route_prefix=None)


def consumer_ready(name: str = APP_NAME, timeout_s: float = 120.0) -> None:
    """Fail now, with its reason, when the app's stream consumer cannot start (ValueError, one line)."""
    from ray import serve

    from patchrank.pipeline.errors import one_line

    try:
        serve.get_deployment_handle("Ingest", name).ready.remote().result(timeout_s=timeout_s)
    except Exception as exc:  # noqa: BLE001 - a Ray error wrapping the consumer's: one line, its root cause
        raise ValueError(f"the scoring service's stream consumer did not start: {one_line(exc)}") from None


def scorer_info(name: str = APP_NAME):
    from ray import serve

    from patchrank.pipeline.service.slice_scorer import ModelInfo

    return ModelInfo.of(serve.get_deployment_handle("Scorer", name).info.remote().result())


def scorer_usage(name: str = APP_NAME, replicas: int = 1) -> list[dict]:
    """ScorerDeployment.usage() of the scorer replicas (memory, forwards run), one entry per process
    reached; requests are routed at random, so 4 per replica reach each with high probability."""
    from ray import serve

    handle = serve.get_deployment_handle("Scorer", name)
    seen = {}
    for _ in range(4 * replicas):
        m = handle.usage.remote().result()
        seen[m["pid"]] = m
    return list(seen.values())


def undeploy(name: str = APP_NAME) -> None:
    from ray import serve

    with contextlib.suppress(Exception):
        serve.delete(name)


def wait_drained(
    client: StreamClient,
    *,
    timeout_s: float | None = None,
    show: bool = True,
    poll_s: float = 0.25,
    skipped: int = 0,
) -> Backlog:
    """Block until every entry of the stream is acknowledged (lag + pending == 0); progress as
    pipeline.progress shows it (a bar on a terminal, a line every 30 s otherwise, nothing if not show)."""
    from patchrank.pipeline.progress import Progress

    b = client.backlog()
    total = b.total
    dead0 = int(client.r.xlen(client.keys.dead_letter))

    def note() -> str:
        dead = int(client.r.xlen(client.keys.dead_letter)) - dead0
        return ", ".join(
            t for t in (f"{dead} dead-lettered" if dead else "", f"{skipped} skipped" if skipped else "") if t
        )

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with Progress(total, "scoring", quiet=not show, note=note) as bar:
        while b.total > 0:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"stream not drained after {timeout_s:.0f}s: lag {b.lag}, pending {b.pending}")
            time.sleep(poll_s)
            b = client.backlog()
            total = max(total, b.total)  # more was enqueued meanwhile
            bar.set(total - b.total, total)
    return b


def active_consumers(client: StreamClient, idle_ms: int = 60_000) -> int:
    """Consumers of the stream's group that read within `idle_ms` (a running serve or screen)."""
    try:
        rows = client.r.xinfo_consumers(client.keys.stream, client.keys.group)
    except Exception:  # noqa: BLE001 - no stream or group yet
        return 0
    return sum(1 for c in rows if int(c.get("idle", idle_ms)) < idle_ms)


@dataclass
class Accounting:
    """Where every queued scan of one run ended up."""

    queued: int
    rows: dict[str, str] = field(default_factory=dict)  # scan_id -> status of its result row
    dead_only: list[tuple[str, str, str]] = field(default_factory=list)  # (scan_id, uri, reason): no row
    missing: list[tuple[str, str]] = field(default_factory=list)  # (scan_id, uri): neither

    @property
    def complete(self) -> bool:
        """Every queued scan has a result row."""
        return not self.dead_only and not self.missing

    @property
    def balanced(self) -> bool:
        """rows + dead letters == queued: nothing vanished without a trace."""
        return not self.missing and len(self.rows) + len(self.dead_only) == self.queued

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for status in self.rows.values():
            out[status] = out.get(status, 0) + 1
        return out

    def summary(self) -> str:
        rows = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items())) or "none"
        text = f"queued {self.queued}: result rows {len(self.rows)} ({rows})"
        if self.dead_only:
            text += f", dead letters without a row {len(self.dead_only)}"
        if self.missing:
            text += f", MISSING {len(self.missing)} (no row, no dead letter)"
        return text


def account(queued: list[tuple[str, str, str]], rows: dict[str, str], dead: list[dict]) -> Accounting:
    """queued: (scan_id, entry_id, uri) per enqueued scan; rows: scan_id -> status of the
    result rows under this run's model version; dead: dead-letter entries ({entry_id, reason,
    msg}, str values) -> which scans have a row, which only a dead letter, which nothing."""
    by_entry = {d.get("entry_id"): d for d in dead}
    by_scan: dict[str, dict] = {}
    for d in dead:
        try:
            by_scan.setdefault(json.loads(d.get("msg") or "{}").get("scan_id"), d)
        except (ValueError, AttributeError):
            pass
    acc = Accounting(queued=len(queued))
    for scan_id, entry_id, uri in queued:
        if scan_id in rows:
            acc.rows[scan_id] = rows[scan_id]
            continue
        d = by_entry.get(entry_id) or by_scan.get(scan_id)
        if d is not None:
            acc.dead_only.append((scan_id, uri, str(d.get("reason", ""))))
        else:
            acc.missing.append((scan_id, uri))
    return acc


def dead_letters_since(client: StreamClient, start_id: str, page: int = 1000) -> list[dict]:
    """Every dead-letter entry added at or after `start_id`, fields decoded to str."""
    out, low = [], start_id
    while True:
        batch = client.r.xrange(client.keys.dead_letter, min=low, count=page)
        for _eid, f in batch:
            out.append({_s(k): _s(v) for k, v in f.items()})
        if len(batch) < page:
            return out
        eid = _s(batch[-1][0])
        ms, seq = eid.split("-")
        low = f"{ms}-{int(seq) + 1}"


def _s(x) -> str:
    return x.decode(errors="replace") if isinstance(x, bytes) else str(x)


def result_rows(out: str | Path, model_version: str, scan_ids: set[str], endpoint: str | None = None) -> dict[str, str]:
    """scan_id -> status of the logical result rows under `model_version` (only `scan_ids`);
    a `failed` row that gave up on an infrastructure fault has the status "gave up"."""
    from patchrank.pipeline.service.results import ResultStore
    from patchrank.pipeline.service.tables import gave_up

    try:
        store = ResultStore(out, endpoint=endpoint)
    except FileNotFoundError:  # nothing written at all
        return {}
    _, rows = store.sql("SELECT scan_id, status, error FROM scans WHERE model_version = ?", [model_version])
    return {sid: "gave up" if gave_up(st, err) else st for sid, st, err in rows if sid in scan_ids}


@dataclass
class ScreenResult:
    queued: int
    skipped: list[tuple[str, str]]
    model_version: str
    seconds: float
    out: str | Path
    accounting: Accounting | None = None
    app_name: str = APP_NAME
    timed_out: str | None = None  # the reason, when the stream was not drained in time


def screen(
    paths: list[str | Path],
    app: AppArgs,
    *,
    timeout_s: float | None = None,
    show: bool = True,
    keep_app: bool = False,
    app_name: str | None = None,
    modality: str | None = None,
    pattern: str | None = None,
    scans: tuple[list, list[tuple[str, str]]] | None = None,
) -> ScreenResult:
    """Enqueue `paths` and score them through the Serve app described by `app`.

    Expects Ray + Serve to be up (see `services`); deploys the app under a name of its own
    (`app_name`, default `patchrank-screen-<run id>`), waits until the stream is drained,
    accounts for every queued scan, then deletes the app unless keep_app. `scans`: the
    enqueue.scan_list of `paths` when the caller made it already."""
    from patchrank.pipeline.commands.enqueue import enqueue_paths

    cfg = app.service
    name = app_name or f"patchrank-screen-{run_id()}"
    if name_taken(name):
        raise ValueError(f"a Serve app named {name!r} already runs on this Ray cluster; choose another name")
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    t0 = time.monotonic()
    timed_out = None
    try:
        client.ensure_group()
        if active_consumers(client):
            raise ValueError(
                f"Redis namespace {cfg.namespace!r} is being consumed by another service (a `serve` or a "
                "`screen` running); use another --namespace"
            )
        start_id = f"{int(client.r.time()[0]) * 1000 - 1000}-0"  # dead letters of this run come after
        deploy(app, name)
        consumer_ready(name)
        info = scorer_info(name)
        report = enqueue_paths(
            client, paths, modality=modality, pattern=pattern, show=show, endpoint=cfg.s3_endpoint_url, scans=scans
        )
        try:
            wait_drained(client, timeout_s=timeout_s, show=show, skipped=len(report.skipped))
        except TimeoutError as exc:
            timed_out = str(exc)
        queued = [(sid, eid, report.uris.get(sid, "")) for sid, eid in report.queued]
        acc = account(
            queued,
            result_rows(cfg.output_dir, info.model_version, set(report.uris), cfg.s3_endpoint_url),
            dead_letters_since(client, start_id),
        )
    finally:
        client.close()
        if not keep_app:
            undeploy(name)
    return ScreenResult(
        len(report.queued),
        report.skipped,
        info.model_version,
        time.monotonic() - t0,
        cfg.output_dir if cfg.output_dir.startswith("s3://") else Path(cfg.output_dir),
        acc,
        name,
        timed_out,
    )


def name_taken(name: str) -> bool:
    """True if a Serve app of this name is deployed (and not being deleted) on the cluster."""
    from ray import serve

    try:
        apps = serve.status().applications
    except Exception:  # noqa: BLE001 - Serve not started: nothing deployed
        return False
    app = apps.get(name)
    return app is not None and str(getattr(app, "status", "")).upper().split(".")[-1] not in ("DELETING", "NOT_STARTED")
