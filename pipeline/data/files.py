"""Walking user-given paths or s3:// prefixes for scan files (shared by `score`, `enqueue`,
`screen`), and the identity of a file (size, modification time, inode) that a queued scan is
re-checked against.

Nothing found in a folder is dropped silently: every entry that is not queued is either
a plain non-scan (directories, hidden non-scan files) or listed as skipped with a reason
(FIFOs and other special files, directories named like scans, symlink loops, broken
symlinks, symlinked folders, unreadable folders).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from patchrank.pipeline.data.loaders import IMAGE_SUFFIXES, NIFTI_SUFFIXES

SCAN_SUFFIXES = NIFTI_SUFFIXES + IMAGE_SUFFIXES
# BraTS side files that are not scans to score.
AUXILIARY_TOKENS = ("_seg.", "_brainmask.", "_mask.", "-seg.")


def is_auxiliary(path: Path) -> bool:
    return any(tok in path.name for tok in AUXILIARY_TOKENS)


def _named_like_scan(path: Path) -> bool:
    return path.name.lower().endswith(SCAN_SUFFIXES)


@dataclass(frozen=True)
class FileIdentity:
    """What must not change between enqueueing a scan and reading it."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | Path) -> FileIdentity:
        st = os.stat(path)
        return cls(int(st.st_size), int(st.st_mtime_ns), int(st.st_ino))

    def differs(self, other: FileIdentity) -> str | None:
        """None, or which attributes differ (for a failure reason; no values, no paths)."""
        changed = [n for n in ("size", "mtime_ns", "inode") if getattr(self, n) != getattr(other, n)]
        return ", ".join(changed) or None


def link_problem(path: Path) -> str | None:
    """Why a symlink cannot be followed ("symlink loop", "broken symlink"), else None."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symlink" if os.path.islink(path) else "not found"
        return f"cannot stat ({errno.errorcode.get(exc.errno, exc.__class__.__name__)})"
    return None


def _walk(folder: Path, files: list, dicom: list[Path], skipped: list[tuple[Path, str]]) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        skipped.append((folder, f"folder not readable ({errno.errorcode.get(exc.errno, exc.__class__.__name__)})"))
        return
    for e in entries:
        q = Path(e.path)
        try:
            if e.is_symlink():
                why = link_problem(q)
                if why is not None:
                    skipped.append((q, why))
                    continue
                if q.is_dir():
                    skipped.append((q, "symlink to a folder (not followed)"))
                    continue
                mode = os.stat(q).st_mode
            else:
                mode = e.stat(follow_symlinks=False).st_mode
        except OSError as exc:
            skipped.append((q, f"cannot stat ({errno.errorcode.get(exc.errno, exc.__class__.__name__)})"))
            continue
        if stat.S_ISDIR(mode):
            if _named_like_scan(q):
                skipped.append((q, "folder named like a scan file"))
            _walk(q, files, dicom, skipped)
        elif not stat.S_ISREG(mode):
            kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device or special file"
            skipped.append((q, f"not a regular file ({kind})"))
        else:
            _classify(q, files, dicom, skipped)


def _classify(q: Path, files: list, dicom: list[Path], skipped: list[tuple[Path, str]]) -> None:
    from patchrank.pipeline.data.dicom import is_dicom_file

    if q.name.startswith("."):
        if _named_like_scan(q):
            skipped.append((q, "hidden file"))
        return
    if not _named_like_scan(q):
        if is_dicom_file(q):
            dicom.append(q)
        else:
            skipped.append((q, "unsupported file type"))
    elif is_auxiliary(q):
        skipped.append((q, "label/mask file, not a scan"))
    else:
        files.append(q)


def walk_scans(paths: list[str | Path]) -> tuple[list, list[tuple[Path, str]]]:
    """-> (scans sorted: files, and one `dicom.SeriesRef` per DICOM series; [(path, reason skipped)]).
    Folders are walked recursively (symlinked folders are not followed); DICOM files (any names)
    are grouped by SeriesInstanceUID."""
    from patchrank.pipeline.data.dicom import group_series

    files: list = []
    dicom: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if os.path.islink(p) and link_problem(p):
            skipped.append((p, link_problem(p) or "not found"))
        elif not p.exists():
            skipped.append((p, "not found"))
        elif p.is_dir():
            _walk(p, files, dicom, skipped)
        elif not p.is_file():
            skipped.append((p, "not a regular file"))
        else:
            _classify(p, files, dicom, skipped)
    series, skip = group_series(sorted(set(dicom)))
    return sorted(set(files), key=str) + series, skipped + skip


def walk_s3(uri: str, endpoint: str | None = None) -> tuple[list, list[tuple[str, str]]]:
    """An s3:// object or prefix -> (scan object URIs sorted, and one `dicom.SeriesRef` per DICOM series
    (objects of any names, grouped by SeriesInstanceUID: pipeline.data.dicom_s3); [(uri, reason skipped)])."""
    from patchrank.pipeline.data.dicom_s3 import find_series_s3
    from patchrank.pipeline.data.storage import S3Uri, is_file, list_files

    u = str(S3Uri.parse(uri))
    if is_file(u, endpoint):  # named explicitly: always queued, a bad file becomes a `failed` row
        return [u], []
    objects = list_files(u, endpoint)
    if not objects:
        return [], [(u, "not found")]
    files, others, skipped = [], [], []
    for o in objects:
        name = o.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if not name.lower().endswith(SCAN_SUFFIXES):
            others.append(o)  # a DICOM file, or of an unsupported type
        elif is_auxiliary(Path(name)):
            skipped.append((o, "label/mask file, not a scan"))
        else:
            files.append(o)
    series, skip = find_series_s3(others, endpoint) if others else ([], [])
    return files + series, skipped + skip


def skipped_lines(skipped: list[tuple], names: int = 3) -> list[str]:
    """What was passed over, one line per reason, most frequent first: 'skipped 2 files (reason): a, b'
    naming up to `names` of them (file names only: paths stay out of the summary)."""
    from collections import defaultdict

    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, why in skipped:
        by_reason[why].append(Path(str(path)).name or str(path))
    lines = []
    for why, files in sorted(by_reason.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(files[:names]) + (f" (+{len(files) - names} more)" if len(files) > names else "")
        lines.append(f"skipped {len(files)} file{'s' if len(files) != 1 else ''} ({why}): {shown}")
    return lines
