"""ScanMessage: JSON on the wire, strict validation, size limits, stable scan ids."""

from __future__ import annotations

import os
import pickle

import pytest

from patchrank.pipeline.service.keys import MESSAGE_FIELD, StreamKeys
from patchrank.pipeline.service.messages import MAX_MESSAGE_BYTES, MessageError, ScanMessage, message_for, scan_id_for
from patchrank.pipeline.service.settings import ServiceConfig, redact_url


def _msg(**kw) -> ScanMessage:
    base = dict(scan_id="ab" * 16, uri="/data/a.nii.gz", modality="flair", submitted_at=1.0)
    return ScanMessage(**{**base, **kw})


def test_roundtrip_is_json():
    m = _msg()
    fields = m.to_fields()
    assert list(fields) == [MESSAGE_FIELD]
    assert fields[MESSAGE_FIELD].startswith(b"{")
    assert ScanMessage.from_fields(fields) == m
    assert ScanMessage.from_fields({"msg": fields[MESSAGE_FIELD].decode()}) == m


@pytest.mark.parametrize(
    "raw, expect",
    [
        (b'{"scan_id": "abababababababab", "uri": "/a", "submitted_at": 1, "evil": 1}', "(?i)extra"),
        (b'{"scan_id": "NOT-HEX!", "uri": "/a", "submitted_at": 1}', "scan_id"),
        (b'{"scan_id": "abababababababab", "uri": "", "submitted_at": 1}', "uri"),
        (b'{"schema_version": 2, "scan_id": "abababababababab", "uri": "/a", "submitted_at": 1}', "schema_version"),
        (b"not json", "invalid"),
        (pickle.dumps({"scan_id": "ab" * 8}), "invalid"),
    ],
)
def test_invalid_messages_are_refused(raw, expect):
    with pytest.raises(MessageError, match=expect):
        ScanMessage.from_fields({MESSAGE_FIELD: raw})


def test_missing_field_and_size_limit():
    with pytest.raises(MessageError, match="no 'msg' field"):
        ScanMessage.from_fields({b"other": b"{}"})
    big = b'{"scan_id": "abababababababab", "uri": "/' + b"a" * MAX_MESSAGE_BYTES + b'", "submitted_at": 1}'
    with pytest.raises(MessageError, match="exceeds"):
        ScanMessage.from_fields({MESSAGE_FIELD: big})


def test_scan_id_is_stable_and_changes_with_content(tmp_path):
    f = tmp_path / "s.nii.gz"
    f.write_bytes(b"abc")
    a, b = scan_id_for(f), scan_id_for(tmp_path / "." / "s.nii.gz")
    assert a == b and len(a) == 32
    assert message_for(f).scan_id == a and message_for(f).uri == str(f.resolve())
    f.write_bytes(b"abcd")
    os.utime(f, ns=(1, 2))
    assert scan_id_for(f) != a


def test_keys_namespace_and_service_config():
    k = StreamKeys("tests-1")
    assert {k.stream, k.group, k.dead_letter, k.errors, k.done("v1")} == {
        "tests-1:scans",
        "tests-1:scorers",
        "tests-1:scans:dead",
        "tests-1:errors",
        "tests-1:done:v1",
    }
    with pytest.raises(ValueError):
        StreamKeys("bad name with spaces")
    cfg = ServiceConfig(redis_url="rediss://:pw@host:6380/0", redis_ca_certs="/ca.pem", checkpoint="c", output_dir="o")
    assert cfg.redis_kwargs()["ssl_ca_certs"] == "/ca.pem"
    assert redact_url(cfg.redis_url) == "rediss://:***@host:6380/0"
    with pytest.raises(ValueError, match="redis_url"):
        ServiceConfig(redis_url="http://x", checkpoint="c", output_dir="o")
    with pytest.raises(ValueError, match="(?i)extra"):
        ServiceConfig(checkpoint="c", output_dir="o", surprise=1)
    with pytest.raises(ValueError, match="chunk_slices"):
        ServiceConfig(checkpoint="c", output_dir="o", chunk_slices=64, max_batch_size=32)
    # slices per scorer request: the max batch size unless set (one request fills a forward)
    assert ServiceConfig(checkpoint="c", output_dir="o").chunk == 32
    assert ServiceConfig(checkpoint="c", output_dir="o", max_batch_size=16).chunk == 16
    assert ServiceConfig(checkpoint="c", output_dir="o", chunk_slices=8).chunk == 8
