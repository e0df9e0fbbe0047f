"""A corpus of hostile and broken inputs for the scoring service, generated on the fly.

Two kinds of cases:
  FileCase     a scan file (or path) that the consumer is asked to score. Each must end
               as a `ScanError` with a clear reason (-> one `failed` result row), never
               as a crash, a hang or unbounded memory.
  MessageCase  raw stream-entry fields that are not a valid ScanMessage. Each must be
               refused as a `MessageError` (-> dead-letter stream), never unpickled.

`write_file_cases(root, outside)` writes the files under `root` (the allowed input root)
and the escape targets under `outside` (a folder the service must never read), and
returns the cases with the substring their error must contain. Nothing here depends on
the service's code, so the same corpus drives the unit tests and the integration tests.
Header text fields carry PATIENT_MARKER so tests can assert it never leaks into logs
or result rows.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

PATIENT_MARKER = "DOE^JANE-7731"  # a "patient name" planted in NIfTI header text fields


@dataclass(frozen=True)
class FileCase:
    name: str  # short id, used as the test id
    uri: str  # what goes into the stream message (absolute path, possibly hostile)
    expect: str  # substring (case-insensitive) the error message must contain


@dataclass(frozen=True)
class MessageCase:
    name: str
    fields: dict  # the raw stream-entry fields
    expect: str


def _phantom_volume(shape=(32, 32, 12), seed: int = 0) -> np.ndarray:
    """A small brain-like blob: (X, Y, Z) int16 with a non-constant foreground."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    inside = (x**2 + y**2 + (z * 0.8) ** 2) < 0.8
    vol = np.where(inside, 400 + 60 * rng.standard_normal(shape), 0)
    return vol.astype(np.int16)


def write_nifti(path: Path, data: np.ndarray, *, header_text: str | None = PATIENT_MARKER) -> Path:
    """Write a NIfTI-1 file; header text fields carry `header_text` (a fake patient name)."""
    img = nib.Nifti1Image(data, np.eye(4))
    if header_text is not None:
        hdr = img.header
        hdr["descrip"] = header_text.encode()[:79]
        hdr["db_name"] = header_text.encode()[:17]
        hdr["aux_file"] = header_text.encode()[:23]
        hdr["intent_name"] = header_text.encode()[:15]
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def good_volume(path: Path, seed: int = 0, shape=(32, 32, 12)) -> Path:
    """A valid scan whose header text fields hold PATIENT_MARKER."""
    return write_nifti(path, _phantom_volume(shape, seed))


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height 8-bit gray pixels (decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def nifti_header_only(path: Path, shape: tuple[int, ...], extra_bytes: int = 4096) -> Path:
    """A .nii.gz whose header claims `shape` (e.g. 4096^3 int16 = 128 GiB) but holds ~no data.

    A loader that reads the data before checking the header shape would try to allocate
    the whole claimed volume; one that checks the header first refuses it at once.
    """
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    hdr["descrip"] = PATIENT_MARKER.encode()
    raw = hdr.binaryblock + b"\x00" * (352 - len(hdr.binaryblock)) + b"\x00" * extra_bytes
    path.write_bytes(gzip.compress(raw))
    return path


def write_file_cases(root: Path, outside: Path) -> list[FileCase]:
    """Write the hostile scan corpus; `root` is the allowed input root, `outside` is not."""
    root.mkdir(parents=True, exist_ok=True)
    outside.mkdir(parents=True, exist_ok=True)
    cases: list[FileCase] = []

    def add(name: str, path: Path | str, expect: str) -> None:
        cases.append(FileCase(name, str(path), expect))

    good = good_volume(root / "source_good.nii.gz")
    raw_good = good_volume(root / "source_good_raw.nii")
    blob = good.read_bytes()

    p = root / "corrupt.nii.gz"
    p.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    add("corrupt_gz", p, "corrupt")
    p = root / "truncated.nii.gz"
    p.write_bytes(blob[: len(blob) // 2])
    add("truncated_gz", p, "corrupt")
    p = root / "truncated_raw.nii"
    p.write_bytes(raw_good.read_bytes()[:2000])
    add("truncated_raw", p, "corrupt")
    p = root / "header_garbage.nii"
    p.write_bytes(b"\x00" * 40 + b"\xff" * 400)
    add("garbage_header", p, "corrupt")
    add("vol_4d", write_nifti(root / "vol4d.nii.gz", np.stack([_phantom_volume()] * 3, -1)), "4D")
    add("vol_2d", write_nifti(root / "img2d.nii.gz", _phantom_volume()[..., 0]), "2D")
    add(
        "vol_5d", write_nifti(root / "vol5d.nii.gz", _phantom_volume()[..., None, None].repeat(2, 3).repeat(2, 4)), "5D"
    )
    nan = _phantom_volume().astype(np.float32)
    nan[10, 10, 5] = np.nan
    add("nan_voxels", write_nifti(root / "nan.nii.gz", nan), "non-finite")
    inf = _phantom_volume().astype(np.float32)
    inf[12, 12, 6] = np.inf
    add("inf_voxels", write_nifti(root / "inf.nii.gz", inf), "non-finite")
    add("all_zero", write_nifti(root / "zeros.nii.gz", np.zeros((32, 32, 12), np.int16)), "empty volume")
    add("constant", write_nifti(root / "constant.nii.gz", np.full((32, 32, 12), 7, np.int16)), "constant")
    head = _phantom_volume()
    head[head == 0] = 25 + np.arange(head.size).reshape(head.shape)[head == 0] % 7  # skull, scalp and noisy air
    add("not_skull_stripped", write_nifti(root / "head.nii.gz", head), "not a skull-stripped brain")
    add("tiny_slices", write_nifti(root / "tiny.nii.gz", _phantom_volume((4, 4, 30))), "too small")
    add("enormous_header", nifti_header_only(root / "enormous.nii.gz", (4096, 4096, 4096)), "exceeds the limit")
    p = root / "text.png"
    p.write_text("this is not an image, it is a text file pretending to be one\n" * 20)
    add("png_is_text", p, "not a readable image")
    add("png_bomb", png_bomb_header(root / "bomb.png", 60000, 60000), "limit")
    add("png_huge_header", png_bomb_header(root / "huge.png", 10000, 10000), "exceeds the limit")
    add("png_tiny", write_png(root / "tiny.png", np.full((4, 4), 128, np.uint8)), "too small")
    p = root / "nifti_named.png"
    p.write_bytes(blob)
    add("nifti_as_png", p, "not a readable image")
    p = root / "scan.txt"
    p.write_bytes(blob)
    add("wrong_extension", p, "unsupported file type")
    p = root / "scan.dcm"
    p.write_bytes(b"\x00" * 128 + b"DICM" + b"\x00" * 64)
    add("dicom_unsupported", p, "unsupported file type")
    p = root / "empty.nii.gz"
    p.write_bytes(b"")
    add("empty_file", p, "empty file")
    (root / "folder.nii.gz").mkdir(exist_ok=True)
    add("directory", root / "folder.nii.gz", "not a regular file")
    add("missing", root / "does_not_exist.nii.gz", "not found")

    secret = good_volume(outside / "secret.nii.gz", seed=3)
    link = root / "link_out.nii.gz"
    if not link.is_symlink():
        link.symlink_to(secret)
    add("symlink_escape", link, "outside the allowed input roots")
    add("dotdot_escape", f"{root}/../{outside.name}/secret.nii.gz", "outside the allowed input roots")
    add("absolute_outside", secret, "outside the allowed input roots")
    add("etc_passwd", "/etc/passwd", "outside the allowed input roots")
    add("relative_path", "scans/../../etc/passwd.nii.gz", "absolute")
    add("nul_byte", f"{root}/a\x00b.nii.gz", "NUL")
    # issue 23: amplification, lost information, special files
    add("implausible_shape", write_nifti(root / "thin.nii.gz", _phantom_volume((8, 8, 1000))), "implausible shape")
    tiny_voxels = nib.Nifti1Image(_phantom_volume(), np.eye(4))
    tiny_voxels.header.set_zooms((1e-6, 1e-6, 1.0))
    nib.save(tiny_voxels, str(root / "tiny_voxels.nii.gz"))
    add("implausible_voxel_size", root / "tiny_voxels.nii.gz", "implausible voxel size")
    add(
        "complex_nifti",
        write_nifti(root / "complex.nii.gz", _phantom_volume().astype(np.complex64) * (1 + 1j)),
        "complex-valued",
    )
    float_img = np.random.default_rng(2).random((40, 48)).astype(np.float32)
    float_img[3, 4] = np.nan
    from PIL import Image

    Image.fromarray(float_img, mode="F").save(root / "nan.tif")
    add("float_tiff_nan", root / "nan.tif", "non-finite")
    fifo = root / "pipe.nii.gz"
    if not fifo.exists():
        import os

        os.mkfifo(fifo)
    add("fifo", fifo, "not a regular file")
    loop_a, loop_b = root / "loop_a.nii.gz", root / "loop_b.nii.gz"
    if not loop_a.is_symlink():
        loop_a.symlink_to(loop_b)
        loop_b.symlink_to(loop_a)
    add("symlink_loop", loop_a, "symlink loop")
    return cases


def _msg(**over) -> dict:
    base = {
        "schema_version": 1,
        "scan_id": "0123456789abcdef0123456789abcdef",
        "uri": "/data/scan.nii.gz",
        "modality": "flair",
        "submitted_at": 1.0,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not _DROP}


_DROP = object()


class _Evil:
    """Unpickling this would run a shell command; it must never be unpickled."""

    def __reduce__(self):
        import os

        return (os.system, ("echo PWNED > /tmp/patchrank_pwned",))


def message_cases() -> list[MessageCase]:
    """Raw stream-entry fields that must be refused (MessageError), never unpickled."""
    j = lambda d: json.dumps(d).encode()  # noqa: E731
    nested = b"[" * 5000 + b"]" * 5000
    return [
        MessageCase("pickle_payload", {b"msg": pickle.dumps(_Evil())}, "invalid scan message"),
        MessageCase("pickle_of_valid_dict", {b"msg": pickle.dumps(_msg())}, "invalid scan message"),
        MessageCase("not_json", {b"msg": b"scan_id=abc uri=/x"}, "invalid scan message"),
        MessageCase("not_utf8", {b"msg": b"\xff\xfe\x00garbage"}, "invalid scan message"),
        MessageCase("empty", {b"msg": b""}, "invalid scan message"),
        MessageCase("json_array", {b"msg": j([1, 2, 3])}, "invalid scan message"),
        MessageCase("deeply_nested", {b"msg": nested[:8000]}, "invalid scan message"),
        MessageCase("oversized", {b"msg": j(_msg(uri="/data/" + "a" * 20000))}, "exceeds"),
        MessageCase("unknown_schema_version", {b"msg": j(_msg(schema_version=2))}, "schema_version"),
        MessageCase("extra_field", {b"msg": j(_msg(priority="urgent"))}, "priority"),
        MessageCase("pixels_smuggled", {b"msg": j(_msg(pixels=[0] * 100))}, "pixels"),
        MessageCase("missing_scan_id", {b"msg": j(_msg(scan_id=_DROP))}, "scan_id"),
        MessageCase("scan_id_traversal", {b"msg": j(_msg(scan_id="../../etc/passwd"))}, "scan_id"),
        MessageCase("scan_id_wrong_type", {b"msg": j(_msg(scan_id=12345678901234567890))}, "scan_id"),
        MessageCase("negative_time", {b"msg": j(_msg(submitted_at=-5))}, "submitted_at"),
        MessageCase("uri_empty", {b"msg": j(_msg(uri=""))}, "uri"),
        MessageCase("modality_injection", {b"msg": j(_msg(modality="flair; rm -rf /"))}, "modality"),
        MessageCase("no_msg_field", {b"data": j(_msg())}, "no 'msg' field"),
    ]
