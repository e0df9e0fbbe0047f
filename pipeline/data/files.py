"""Walking user-given paths or s3:// prefixes for scan files (shared by `score`, `enqueue`, `screen`)."""

from __future__ import annotations

from pathlib import Path

from patchrank.pipeline.data.loaders import IMAGE_SUFFIXES, NIFTI_SUFFIXES

SCAN_SUFFIXES = NIFTI_SUFFIXES + IMAGE_SUFFIXES
# BraTS side files that are not scans to score.
AUXILIARY_TOKENS = ("_seg.", "_brainmask.", "_mask.", "-seg.")


def is_auxiliary(path: Path) -> bool:
    return any(tok in path.name for tok in AUXILIARY_TOKENS)


def walk_scans(paths: list[str | Path]) -> tuple[list, list[tuple[Path, str]]]:
    """-> (scans sorted: files, and one `dicom.SeriesRef` per DICOM series; [(path, reason skipped)]).
    Folders are walked recursively; DICOM files (any names) are grouped by SeriesInstanceUID."""
    from patchrank.pipeline.data.dicom import group_series, is_dicom_file

    files: list = []
    dicom: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            skipped.append((p, "not found"))
            continue
        candidates = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for q in candidates:
            if q.name.startswith("."):
                continue
            if not q.name.lower().endswith(SCAN_SUFFIXES):
                if is_dicom_file(q):
                    dicom.append(q)
                else:
                    skipped.append((q, "unsupported file type"))
            elif is_auxiliary(q):
                skipped.append((q, "label/mask file, not a scan"))
            else:
                files.append(q)
    series, skip = group_series(sorted(set(dicom)))
    return sorted(set(files), key=str) + series, skipped + skip


def walk_s3(uri: str, endpoint: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """An s3:// object or prefix -> (scan object URIs sorted, [(uri, reason skipped)])."""
    from patchrank.pipeline.data.storage import S3Uri, is_file, list_files

    u = str(S3Uri.parse(uri))
    if is_file(u, endpoint):  # named explicitly: always queued, a bad file becomes a `failed` row
        return [u], []
    objects = list_files(u, endpoint)
    if not objects:
        return [], [(u, "not found")]
    files, skipped = [], []
    for o in objects:
        name = o.rsplit("/", 1)[-1]
        if name.startswith("."):
            continue
        if not name.lower().endswith(SCAN_SUFFIXES):
            skipped.append((o, "unsupported file type"))
        elif is_auxiliary(Path(name)):
            skipped.append((o, "label/mask file, not a scan"))
        else:
            files.append(o)
    return files, skipped
