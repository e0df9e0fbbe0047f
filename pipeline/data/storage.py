"""Where files live: local paths or `s3://bucket/key` objects, behind one pyarrow filesystem.

is_s3(uri)                  does the string name an S3 object or prefix
S3Uri.parse(uri)            validated bucket + key ('..', '.', empty segments and NUL refused)
s3_filesystem(endpoint)     pyarrow.fs.S3FileSystem; credentials come from the AWS SDK's
                            standard chain (AWS_ACCESS_KEY_ID/..., ~/.aws/config, instance role)
                            and are never passed through or logged here; endpoint: the argument,
                            else $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL (MinIO, moto, Ceph)
filesystem(root)            (fs, path inside fs) for a local folder or an s3:// prefix
fetch(uri, folder)          copy an object to a local file with the same name (loaders read files)
local_checkpoint(uri)       a checkpoint object cached on local disk, keyed by its size + mtime
under_root(uri, root)       is an s3:// URI inside an allowed s3:// root (bucket + key prefix)
vanished(exc)               is an error "that file / object does not exist (any more)"
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

S3 = "s3://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def is_s3(uri: str | os.PathLike) -> bool:
    return isinstance(uri, str) and uri.startswith(S3)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # no leading or trailing '/'; '' for the whole bucket

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not is_s3(uri):
            raise ValueError("not an s3:// URI")
        if "\x00" in uri or "\\" in uri:
            raise ValueError("invalid s3 URI (NUL byte or backslash)")
        bucket, _, key = uri[len(S3) :].partition("/")
        if not _BUCKET.match(bucket):
            raise ValueError("invalid s3 bucket name")
        key = key.strip("/")
        if key and any(seg in ("", ".", "..") for seg in key.split("/")):
            raise ValueError("invalid s3 key (empty, '.' or '..' path segment)")
        return cls(bucket, key)

    @property
    def path(self) -> str:
        """The path pyarrow's S3FileSystem takes: bucket/key."""
        return f"{self.bucket}/{self.key}" if self.key else self.bucket

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    def __str__(self) -> str:
        return S3 + self.path

    def parent(self) -> S3Uri:
        return S3Uri(self.bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "")


def endpoint_from_env() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@functools.lru_cache(maxsize=8)
def _s3(endpoint: str | None) -> pafs.S3FileSystem:
    kw: dict = {"connect_timeout": 5.0, "request_timeout": 30.0, "allow_delayed_open": True}  # small parts: one PUT
    if endpoint:
        parts = urlsplit(endpoint)
        kw["endpoint_override"] = parts.netloc or parts.path
        kw["scheme"] = parts.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def s3_filesystem(endpoint: str | None = None) -> pafs.S3FileSystem:
    return _s3(endpoint or endpoint_from_env())


def filesystem(root: str | os.PathLike, endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local folder/file or an s3:// URI."""
    if is_s3(root):
        return s3_filesystem(endpoint), S3Uri.parse(str(root)).path
    return pafs.LocalFileSystem(), str(Path(root).resolve())


def stat(uri: str, endpoint: str | None = None) -> pafs.FileInfo:
    fs, path = filesystem(uri, endpoint)
    return fs.get_file_info(path)


def exists(uri: str | os.PathLike, endpoint: str | None = None) -> bool:
    if not is_s3(uri):
        return Path(uri).exists()
    return stat(str(uri), endpoint).type != pafs.FileType.NotFound


def is_file(uri: str | os.PathLike, endpoint: str | None = None) -> bool:
    if not is_s3(uri):
        return Path(uri).is_file()
    return stat(str(uri), endpoint).type == pafs.FileType.File


def list_files(uri: str, endpoint: str | None = None) -> list[str]:
    """s3:// URIs of every object under a prefix (recursively), sorted."""
    u = S3Uri.parse(uri)
    fs = s3_filesystem(endpoint)
    infos = fs.get_file_info(pafs.FileSelector(u.path, recursive=True, allow_not_found=True))
    return sorted(S3 + i.path for i in infos if i.type == pafs.FileType.File)


def fetch(uri: str, folder: str | Path, endpoint: str | None = None, size: int | None = None) -> Path:
    """Copy one object to folder/<its name> (the suffix is kept so loaders recognise the format).
    With `size`, a short copy (connection lost mid-body) raises OSError: retried, never parsed."""
    u = S3Uri.parse(uri)
    dest = Path(folder) / (u.name or "object")
    with s3_filesystem(endpoint).open_input_stream(u.path, compression=None) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, length=1 << 20)
    if size is not None and dest.stat().st_size != size:
        raise OSError(f"{u.name}: download ended after {dest.stat().st_size} of {size} bytes")
    return dest


def local_checkpoint(uri: str | os.PathLike, endpoint: str | None = None) -> str:
    """A local path for a checkpoint: the path itself, or an s3:// object downloaded once into
    $PATCHRANK_CACHE (default <tmp>/patchrank-cache), keyed by URI, size and modification time."""
    if not is_s3(uri):
        return str(uri)
    info = stat(str(uri), endpoint)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"checkpoint not found: {S3Uri.parse(str(uri))}")
    mtime = info.mtime_ns if info.mtime_ns is not None else 0
    tag = hashlib.sha256(f"{uri}\0{info.size}\0{mtime}".encode()).hexdigest()[:16]
    folder = Path(os.environ.get("PATCHRANK_CACHE") or Path(tempfile.gettempdir()) / "patchrank-cache") / tag
    target = folder / S3Uri.parse(str(uri)).name
    if target.is_file() and target.stat().st_size == info.size:
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        got = fetch(str(uri), tmp, endpoint, info.size)
        os.replace(got, target)  # whole file or nothing: concurrent replicas may race here
    return str(target)


def under_root(uri: str, root: str) -> bool:
    """True if s3 `uri` is the root object or lies under the root prefix (segment-wise)."""
    u, r = S3Uri.parse(uri), S3Uri.parse(root)
    return u.bucket == r.bucket and (not r.key or u.key == r.key or u.key.startswith(r.key + "/"))


def vanished(exc: BaseException) -> bool:
    """Is this "the file or object is not there" (pyarrow's S3 filesystem raises a plain OSError for it)?"""
    return isinstance(exc, FileNotFoundError) or (
        isinstance(exc, OSError) and any(t in str(exc) for t in ("RESOURCE_NOT_FOUND", "NoSuchKey", "NO_SUCH_KEY"))
    )
