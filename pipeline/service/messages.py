"""The message on the scan stream: a reference to a scan, never its pixels.

JSON on the wire (field `msg` of a stream entry), validated by pydantic with
extra="forbid" and size limits; nothing read from the queue is ever unpickled.
`scan_id` is stable for the same file: sha256 of the resolved path, its size and its
modification time (ns), so re-enqueueing an unchanged archive yields the same ids,
and a file rewritten in place gets a new id (and a new result).

`size`, `mtime_ns` and `inode` record the file as it was when queued (optional: other
producers may leave them out). The consumer re-checks them before and after reading,
so a file replaced after it was queued is a `failed` row ("changed since it was
queued"), never scored under the old file's scan_id.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchrank.pipeline.data.files import FileIdentity
from patchrank.pipeline.service.keys import MESSAGE_FIELD

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 8192
MAX_URI_CHARS = 4096


class MessageError(ValueError):
    """A stream entry that is not a valid ScanMessage."""


class ScanMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    scan_id: str = Field(pattern=r"^[0-9a-f]{16,64}$", description="stable id: see scan_id_for")
    uri: str = Field(
        min_length=1, max_length=MAX_URI_CHARS, description="absolute local path or s3:// URI of the scan file"
    )
    series_uid: str | None = Field(
        None, max_length=64, pattern=r"^[0-9][0-9.]*$", description="DICOM SeriesInstanceUID; uri is then its folder"
    )
    modality: str | None = Field(None, max_length=32, pattern=r"^[A-Za-z0-9_\-]+$")
    submitted_at: float = Field(ge=0, description="unix seconds when enqueued")
    size: int | None = Field(None, ge=0, description="file size (bytes) when enqueued")
    mtime_ns: int | None = Field(None, ge=0, description="file modification time (ns) when enqueued")
    inode: int | None = Field(None, ge=0, description="file inode when enqueued")

    def to_fields(self) -> dict[bytes, bytes]:
        return {MESSAGE_FIELD: self.model_dump_json().encode()}

    @classmethod
    def from_fields(cls, fields: dict) -> ScanMessage:
        raw = fields.get(MESSAGE_FIELD, fields.get(MESSAGE_FIELD.decode()))
        if raw is None:
            raise MessageError(f"stream entry has no {MESSAGE_FIELD.decode()!r} field")
        if isinstance(raw, str):
            raw = raw.encode()
        if len(raw) > MAX_MESSAGE_BYTES:
            raise MessageError(f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "message"
            raise MessageError(
                f"invalid scan message ({exc.error_count()} errors; {where}: {first.get('msg')})"
            ) from None

    def identity(self) -> FileIdentity | None:
        """The file as it was when queued, or None when the producer did not record it."""
        if self.size is None or self.mtime_ns is None or self.inode is None:
            return None
        return FileIdentity(self.size, self.mtime_ns, self.inode)


def _scan_id(p: Path, ident: FileIdentity) -> str:
    return hashlib.sha256(f"{p}\0{ident.size}\0{ident.mtime_ns}".encode()).hexdigest()[:32]


def _s3_id(uri: str, endpoint: str | None) -> tuple[str, str]:
    from patchrank.pipeline.data.storage import S3Uri, stat

    u = str(S3Uri.parse(uri))
    info = stat(u, endpoint)
    if info.type.name != "File":
        raise FileNotFoundError(f"no such object: {S3Uri.parse(u).name}")
    h = hashlib.sha256(f"{u}\0{info.size}\0{info.mtime_ns}".encode())
    return u, h.hexdigest()[:32]


def scan_id_for(path: str | Path, endpoint: str | None = None) -> str:
    """Stable id of a file: sha256(resolved path, size, mtime_ns), 32 hex chars; for an
    s3:// object the same over (normalised URI, size, last-modified)."""
    if isinstance(path, str) and path.startswith("s3://"):
        return _s3_id(path, endpoint)[1]
    p = Path(path).resolve()
    return _scan_id(p, FileIdentity.of(p))


def message_for(path, modality: str | None = None, endpoint: str | None = None) -> ScanMessage:
    """A message for a scan file (local or s3://), or for a DICOM series (a `dicom.SeriesRef`: its folder +
    SeriesInstanceUID)."""
    from patchrank.pipeline.data.dicom import SeriesRef, series_scan_id

    if isinstance(path, str) and path.startswith("s3://"):
        uri, sid = _s3_id(path, endpoint)
        return ScanMessage(scan_id=sid, uri=uri, modality=modality, submitted_at=time.time())
    if isinstance(path, SeriesRef):
        uri = str(path.folder) if isinstance(path.folder, str) else str(path.folder.resolve())  # s3:// prefix
        sid = series_scan_id(path, endpoint)
        return ScanMessage(scan_id=sid, uri=uri, series_uid=path.uid, modality=modality, submitted_at=time.time())
    p = Path(path).resolve()
    ident = FileIdentity.of(p)  # one stat for both the id and the recorded identity
    return ScanMessage(
        scan_id=_scan_id(p, ident),
        uri=str(p),
        modality=modality,
        submitted_at=time.time(),
        size=ident.size,
        mtime_ns=ident.mtime_ns,
        inode=ident.inode,
    )
