"""DICOM series under an s3:// prefix, found and loaded as pipeline.data.dicom does in a local folder tree.

find_series_s3   objects (any names) -> DICOM series: each object's first HEAD_BYTES are read with one
                 ranged GET (the whole object only when its header is longer; pixels are never read),
                 checked for the DICOM magic and grouped by SeriesInstanceUID with dicom.group_series's
                 rules. A series is a `dicom.SeriesRef` whose folder is the common s3:// prefix of its
                 objects and whose files are their URIs.
fetch_series     the objects of one series (found again under its prefix by UID, as the consumer re-walks a
                 local folder) copied under a local folder, keeping their relative keys, for dicom.load_series.
object_stamps    (name, size, last-modified) of a series' objects, for its stable scan_id.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.fs as pafs

from patchrank.pipeline.data.dicom import DICOM_MAGIC_OFFSET, SeriesRef, group_series
from patchrank.pipeline.data.loaders import ScanError
from patchrank.pipeline.data.storage import S3, S3Uri, fetch, s3_filesystem, vanished

HEAD_BYTES = 64 << 10  # a slice header (with vendor private tags) fits; an MR slice's pixels mostly do not
_PIXEL_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian: the header ends before it


def _parse(data: bytes):
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - unreadable: the caller skips the object; messages may quote header text
        return None


def header_reader(endpoint: str | None = None):
    """read(uri) -> the object's DICOM header (pydicom Dataset) or None when it is not a DICOM file."""
    fs = s3_filesystem(endpoint)

    def read(uri: str):
        try:
            with fs.open_input_file(S3Uri.parse(uri).path) as f:
                head = f.read(HEAD_BYTES)
                if head[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] != b"DICM":
                    return None
                ds = _parse(head) if _PIXEL_TAG in head or len(head) < HEAD_BYTES else None
                if ds is None and len(head) == HEAD_BYTES:  # a longer header: read it all
                    f.seek(0)
                    ds = _parse(f.read())
                return ds
        except OSError as exc:
            if vanished(exc):
                return None
            raise

    return read


def find_series_s3(uris: list[str], endpoint: str | None = None) -> tuple[list[SeriesRef], list[tuple[str, str]]]:
    """Objects not named like scan files -> (DICOM series, [(uri or prefix, reason skipped)])."""
    read = header_reader(endpoint)
    heads = {u: read(u) for u in uris}
    dicom = [u for u, ds in heads.items() if ds is not None]
    skipped = [(u, "unsupported file type") for u, ds in heads.items() if ds is None]
    series, skip = group_series(dicom, read=heads.get)
    return series, skipped + skip


def _listing(prefix: str, endpoint: str | None) -> dict[str, pafs.FileInfo]:
    """Objects under a prefix whose keys are valid (no empty, '.' or '..' segments)."""
    sel = pafs.FileSelector(S3Uri.parse(prefix).path, recursive=True, allow_not_found=True)
    out = {}
    for i in s3_filesystem(endpoint).get_file_info(sel):
        try:
            if i.type == pafs.FileType.File:
                out[str(S3Uri.parse(S3 + i.path))] = i
        except ValueError:
            continue
    return out


def object_stamps(ref: SeriesRef, endpoint: str | None = None) -> list[tuple[str, int, int]]:
    infos = _listing(str(ref.folder), endpoint)
    missing = [u for u in ref.files if u not in infos]
    if missing:
        raise FileNotFoundError(f"no such object: {S3Uri.parse(missing[0]).name}")
    return [(S3Uri.parse(u).name, int(infos[u].size), int(infos[u].mtime_ns or 0)) for u in ref.files]


def fetch_series(prefix: str, uid: str, folder: Path, endpoint: str | None = None) -> Path:
    """Copy the objects of series `uid` under `prefix` into `folder` (relative keys kept) -> folder."""
    from patchrank.pipeline.data.files import SCAN_SUFFIXES

    infos = _listing(prefix, endpoint)
    names = [u for u in infos if not u.rsplit("/", 1)[-1].startswith(".")]
    found, _ = find_series_s3([u for u in names if not u.lower().endswith(SCAN_SUFFIXES)], endpoint)
    ref = next((s for s in found if s.uid == uid), None)
    if ref is None:
        raise ScanError(f"{S3Uri.parse(prefix).name}: DICOM series not found under the prefix")
    base = S3Uri.parse(prefix).key
    for u in ref.files:
        rel = S3Uri.parse(u).key[len(base) :].lstrip("/")
        dest = folder / Path(rel).parent
        dest.mkdir(parents=True, exist_ok=True)
        fetch(u, dest, endpoint, int(infos[u].size))
    return folder
