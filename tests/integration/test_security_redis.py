"""Redis password and TLS (rediss://) end to end, and the password never in logs/output.

The TLS server is a real redis-server started with --tls-port and certificates made
here with `openssl` (skipped if the binary lacks TLS or openssl is missing).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from redisproc import RedisServer, free_port
from servicekit import LocalScorer, check_exactly_once, drive, make_consumer, service_config

from patchrank.pipeline.cli import main as cli
from patchrank.pipeline.service.messages import message_for
from patchrank.pipeline.service.slice_scorer import SliceScorer

pytestmark = pytest.mark.integration
PASSWORD = "Tr0ub4dor-and-3-horses"


@pytest.fixture()
def scans(tmp_path, phantom_dir):
    root = tmp_path / "scans"
    root.mkdir()
    return [shutil.copy(src, root / src.name) for src in sorted(phantom_dir.rglob("*_flair.nii.gz"))[:3]]


def _no_secret(*texts: str) -> None:
    for t in texts:
        assert PASSWORD not in t


def _enqueue_cli(url: str, paths, capsys, env: dict | None = None, monkeypatch=None) -> str:
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    rc = cli(["-v", "enqueue", *map(str, paths), "--redis-url", url, "--namespace", "sec"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out + out.err


@pytest.mark.timeout(120)
def test_password_url_end_to_end_and_never_logged(tmp_path, tiny_checkpoint, scans, capsys, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    server = RedisServer(tmp_path, password=PASSWORD)
    server.start()
    try:
        url = server.url
        assert PASSWORD in url
        with pytest.raises(redis.AuthenticationError) as info:  # the password is really required
            redis.Redis.from_url(url.replace(PASSWORD, "wrong")).ping()
        _no_secret(str(info.value))
        printed = _enqueue_cli(url, scans, capsys)
        assert "queued 3 scans" in printed and "***" in printed
        cfg = service_config(url, tmp_path, tiny_checkpoint, namespace="sec")
        consumer = make_consumer(cfg, LocalScorer(SliceScorer(str(tiny_checkpoint), torch_threads=1)))
        asyncio.run(drive([consumer], cfg, timeout_s=60))
        out = check_exactly_once(cfg, [message_for(p).scan_id for p in scans])
        assert len(out.rows) == 3 and {r["status"] for r in out.rows.values()} == {"ok"}
        # password from the environment instead of the URL
        monkeypatch.setenv("PATCHRANK_REDIS_PASSWORD", PASSWORD)
        printed2 = _enqueue_cli(url.replace(f":{PASSWORD}@", ""), scans, capsys)
        assert "queued 3 scans" in printed2
        _no_secret(printed, printed2, caplog.text, str(out.rows), repr(cfg.redis_kwargs().keys()))
    finally:
        server.stop()


def _make_certs(d: Path) -> tuple[Path, Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d.mkdir(parents=True, exist_ok=True)
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=patchrank-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return d / "ca.crt", d / "server.crt", d / "server.key"


@pytest.fixture()
def tls_redis(tmp_path):
    ca, crt, key = _make_certs(tmp_path / "tls")
    port = free_port()
    args = [
        shutil.which("redis-server"),
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
        "--tls-cert-file",
        str(crt),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        PASSWORD,
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"redis-server without TLS support: {proc.stdout.read()[-200:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    yield f"rediss://:{PASSWORD}@127.0.0.1:{port}/0", ca
    proc.terminate()
    proc.wait(5)


@pytest.mark.timeout(120)
def test_tls_url_end_to_end(tls_redis, tmp_path, tiny_checkpoint, scans, capsys, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    url, ca = tls_redis
    # plaintext to the TLS port, or TLS without trusting the CA, is refused
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url.replace("rediss://", "redis://"), socket_connect_timeout=2, socket_timeout=2).ping()
    with pytest.raises(redis.ConnectionError) as info:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    assert "certificate" in str(info.value).lower()
    # CLI: CA from the standard SSL_CERT_FILE variable
    printed = _enqueue_cli(url, scans, capsys, env={"SSL_CERT_FILE": str(ca)}, monkeypatch=monkeypatch)
    assert "queued 3 scans" in printed
    cfg = service_config(url, tmp_path, tiny_checkpoint, namespace="sec", redis_ca_certs=str(ca))
    consumer = make_consumer(cfg, LocalScorer(SliceScorer(str(tiny_checkpoint), torch_threads=1)))
    asyncio.run(drive([consumer], cfg, timeout_s=60))
    out = check_exactly_once(cfg, [message_for(p).scan_id for p in scans])
    assert len(out.rows) == 3 and {r["status"] for r in out.rows.values()} == {"ok"}
    _no_secret(printed, caplog.text)
