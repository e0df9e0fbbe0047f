"""`patchrank enqueue`: add one stream entry per scan file (JSON reference, never pixels)."""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from patchrank.pipeline.commands.options import add_quiet_arg, add_redis_password_arg
from patchrank.pipeline.data.dicom import is_dicom_file
from patchrank.pipeline.data.files import link_problem, walk_s3, walk_scans


@dataclass
class EnqueueReport:
    queued: list[tuple[str, str]] = field(default_factory=list)  # (scan_id, entry_id)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    uris: dict[str, str] = field(default_factory=dict)  # scan_id -> uri of what was queued

    def summary(self) -> str:
        lines = [f"queued {len(self.queued)} scans, skipped {len(self.skipped)}"]
        for reason, n in Counter(r for _, r in self.skipped).most_common():
            lines.append(f"  skipped {n}: {reason}")
        return "\n".join(lines)


def collect(paths: list[str | Path], endpoint: str | None = None) -> tuple[list, list[tuple[str, str]]]:
    """Folders (and s3:// prefixes) are walked for scan files and DICOM series; a file named explicitly is
    always queued (a DICOM file as its one-file series when it is a readable image), so an unsupported or
    broken file becomes a `failed` result instead of vanishing."""
    files, skipped = [], []
    for raw in paths:
        if isinstance(raw, str) and raw.startswith("s3://"):
            found, skip = walk_s3(raw, endpoint)
            files.extend(found)
            skipped.extend(skip)
            continue
        p = Path(raw)
        if p.is_file():
            series = walk_scans([p])[0] if is_dicom_file(p) else []
            files.extend(series or [p])
        elif p.is_dir():
            found, skip = walk_scans([p])
            files.extend(found)
            skipped.extend((str(q), why) for q, why in skip)
        elif p.exists():  # a FIFO or device named explicitly: queued, refused with a reason
            files.append(p)
        else:
            skipped.append((str(p), link_problem(p) or "not found"))
    return files, skipped


def scan_list(
    paths: list[str | Path], modality: str | None = None, pattern: str | None = None, endpoint: str | None = None
) -> tuple[list, list[tuple[str, str]]]:
    """The scans under `paths` (collect) of `modality` (all when None; see pipeline.data.modality),
    and [(path, why)] for what was left out."""
    from patchrank.pipeline.data.modality import select

    files, skipped = collect(paths, endpoint)
    files, other = select(files, modality, pattern)
    return files, skipped + other


def enqueue_paths(
    client,
    paths: list[str | Path],
    *,
    modality: str | None = None,
    pattern: str | None = None,
    show: bool = True,
    batch: int = 256,
    endpoint: str | None = None,
    scans: tuple[list, list[tuple[str, str]]] | None = None,
) -> EnqueueReport:
    """Walk paths (or take `scans`, a scan_list already made), validate one ScanMessage per scan
    file or DICOM series, XADD them (pipelined, in batches)."""
    from patchrank.pipeline.progress import Progress
    from patchrank.pipeline.service.messages import message_for

    files, skipped = scans if scans is not None else scan_list(paths, modality, pattern, endpoint)
    report = EnqueueReport(skipped=list(skipped))
    client.ensure_group()
    seen: set[str] = set()
    pending = []
    bar = Progress(len(files), "enqueue", quiet=not show)  # a bar on a terminal, else a line every 30 s
    for f in files:
        try:
            msg = message_for(f, modality, endpoint)
        except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
            report.skipped.append((str(f), f"cannot stat/describe file ({exc.__class__.__name__})"))
            bar.update(1)
            continue
        if msg.scan_id in seen:
            report.skipped.append((str(f), "same file given twice"))
            bar.update(1)
            continue
        seen.add(msg.scan_id)
        report.uris[msg.scan_id] = msg.uri
        pending.append(msg)
        if len(pending) >= batch:
            report.queued += zip([m.scan_id for m in pending], client.add_many(pending))
            bar.update(len(pending))
            pending = []
    if pending:
        report.queued += zip([m.scan_id for m in pending], client.add_many(pending))
        bar.update(len(pending))
    bar.close()
    return report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("enqueue", help="queue scan files on the Redis stream for the scoring service")
    p.add_argument(
        "paths",
        nargs="+",
        help="scan files or folders (NIfTI, DICOM series, 2D images), local or s3://bucket/prefix; folders are walked",
    )
    p.add_argument(
        "--redis-url",
        default=os.environ.get("PATCHRANK_REDIS_URL"),
        help="redis://[:password@]host:port/db or rediss:// (TLS); default $PATCHRANK_REDIS_URL",
    )
    add_redis_password_arg(p)
    p.add_argument("--namespace", default="patchrank", help="Redis key prefix (default patchrank)")
    p.add_argument(
        "--modality",
        help="queue only scans of this modality (e.g. flair), tagged to be scored as it; without it every scan is "
        "queued and the service refuses those known to be of another modality than its model's",
    )
    p.add_argument(
        "--modality-pattern",
        help="regular expression a DICOM series' SeriesDescription/ProtocolName must match (default per modality)",
    )
    p.add_argument(
        "--s3-endpoint", default=None, help="S3-compatible endpoint (default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL)"
    )
    add_quiet_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from patchrank.pipeline.commands.screen import redis_password
    from patchrank.pipeline.service.keys import StreamKeys
    from patchrank.pipeline.service.settings import ServiceConfig, redact_url
    from patchrank.pipeline.service.streams import StreamClient

    if not args.redis_url:
        raise ValueError("--redis-url (or $PATCHRANK_REDIS_URL) is required")
    kw = ServiceConfig(
        redis_url=args.redis_url,
        redis_password=redis_password(args),
        namespace=args.namespace,
        checkpoint="-",
        output_dir="-",
    ).redis_kwargs()
    client = StreamClient.from_url(args.redis_url, StreamKeys(args.namespace), **kw)
    try:
        report = enqueue_paths(
            client,
            args.paths,
            modality=args.modality,
            pattern=args.modality_pattern,
            endpoint=args.s3_endpoint,
            show=not args.quiet,
        )
    finally:
        client.close()
    print(f"{redact_url(args.redis_url)} stream {StreamKeys(args.namespace).stream}")
    print(report.summary())
    notable = [(p, w) for p, w in report.skipped if not w.startswith("label/mask")]  # masks beside scans are expected
    for path, why in notable[:20]:
        print(f"  {path}: {why}")
    if len(notable) > 20:
        print(f"  ... and {len(notable) - 20} more")
    return 0 if report.queued or not report.skipped else 1
