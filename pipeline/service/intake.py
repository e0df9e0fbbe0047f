"""What the ingest side checks and loads before a scan is scored: the URI against the allowed
roots, the file against the identity recorded at enqueue, and the scan itself
(pipeline.data.preprocess.load_prepared, after copying an s3:// object to a private temp
folder), within one replica's in-flight memory budget. Every refusal is a ScanError: a
`failed` row naming the file, never its folder or header text."""

from __future__ import annotations

import asyncio
import errno
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from patchrank.pipeline.data.files import FileIdentity
from patchrank.pipeline.data.loaders import INPUT_ERRNOS, ScanError
from patchrank.pipeline.data.preprocess import MAX_PREPARED_BYTES, MAX_SLICES, Prepared, load_prepared
from patchrank.pipeline.data.storage import S3Uri, fetch, is_s3, stat, under_root
from patchrank.pipeline.service.messages import ScanMessage


def check_uri(uri: str, roots: list[Path | str] | frozenset) -> Path | str:
    """The scan's location if it lies under an allowed root: a local path resolved (symlinks and
    '..' followed) that is a root or lies under one, or an s3:// URI whose bucket and key prefix
    match an s3:// root. `roots` may be a frozenset of the resolved local and s3:// roots (a lookup
    per parent folder instead of a scan of every root)."""
    if "\x00" in uri:
        raise ScanError("invalid path (NUL byte)")
    if is_s3(uri):
        try:
            u = S3Uri.parse(uri)
        except ValueError as exc:
            raise ScanError(str(exc)) from None
        if not roots:
            raise ScanError("no allowed input roots are configured; refusing to read any file")
        if not any(is_s3(r) and under_root(str(u), r) for r in roots):
            raise ScanError(f"{u.name}: object is outside the allowed input roots")
        return str(u)
    p = Path(uri)
    if not p.is_absolute():
        raise ScanError("path must be absolute")
    if not roots:
        raise ScanError("no allowed input roots are configured; refusing to read any file")
    try:
        real = p.resolve()
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise ScanError(f"{p.name}: symlink loop") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ScanError(f"{p.name}: symlink loop") from None
        if exc.errno in INPUT_ERRNOS:
            raise ScanError(f"{p.name}: cannot resolve the path ({errno.errorcode[exc.errno]})") from None
        raise
    local = roots if isinstance(roots, frozenset) else frozenset(r for r in roots if isinstance(r, Path))
    if real not in local and not any(parent in local for parent in real.parents):
        raise ScanError(f"{p.name}: path is outside the allowed input roots")
    return real


def load_uri(
    path,
    preprocess: dict,
    endpoint: str | None = None,
    series_uid: str | None = None,
    *,
    max_slices: int | None = MAX_SLICES,
    max_bytes: int | None = MAX_PREPARED_BYTES,
) -> Prepared:
    """load_prepared for a checked location (a file, a found local `dicom.SeriesRef`, or a DICOM series'
    folder or s3:// prefix); s3:// objects are first copied to a private temp folder."""
    caps = {"max_slices": max_slices, "max_bytes": max_bytes}
    if not is_s3(path):
        return load_prepared(path, preprocess, series_uid, **caps)
    if series_uid is not None:  # a DICOM series under an s3:// prefix: its objects copied, then read as a folder
        from patchrank.pipeline.data.dicom_s3 import fetch_series

        with tempfile.TemporaryDirectory(prefix="patchrank-series-") as tmp:
            return load_prepared(
                fetch_series(str(path), series_uid, Path(tmp), endpoint), preprocess, series_uid, **caps
            )
    info = stat(str(path), endpoint)  # connection errors propagate: infrastructure, retried
    if info.type != pafs.FileType.File:
        raise ScanError(f"{S3Uri.parse(str(path)).name}: object not found")
    with tempfile.TemporaryDirectory(prefix="patchrank-scan-") as tmp:
        return load_prepared(fetch(str(path), tmp, endpoint, info.size), preprocess, **caps)


def check_identity(msg: ScanMessage, path: Path, when: str = "since it was queued") -> None:
    """The file at `path` must still be the one queued (size, mtime, inode recorded at enqueue);
    `when` says when it changed in the failure reason."""
    queued = msg.identity()
    if queued is None:
        return
    try:
        now = FileIdentity.of(path)
    except OSError as exc:
        if exc.errno in INPUT_ERRNOS:
            raise ScanError(f"{path.name}: file vanished {when} ({errno.errorcode[exc.errno]})") from None
        raise
    changed = queued.differs(now)
    if changed:
        raise ScanError(
            f"{path.name}: file changed {when} ({changed} differ); enqueue it again to score the new content"
        )


class MemoryBudget:
    """Bytes that the scans in flight in one ingest replica may hold (estimated); a scan
    waits until its share is free. A share larger than the whole budget is refused by the
    caller, so one huge scan never waits forever."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = int(capacity), 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.capacity)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()
