"""Security properties that need no services: no unpickling of anything a user or the
queue provides, checkpoints loaded with weights_only=True on the serving path, secrets
redacted, header text never in error messages.

(Ray moves SliceChunk numpy arrays between the ingest and scorer replicas with its own
serializer; that channel is internal to the cluster. Everything that crosses the trust
boundary — stream messages, scan files, checkpoints — is parsed without pickle.)
"""

from __future__ import annotations

import ast
import logging
import pickle
from pathlib import Path

import pytest
from badinput import PATIENT_MARKER, good_volume

from patchrank.model.checkpoint import CheckpointError
from patchrank.pipeline.service.settings import ServiceConfig, redact_url

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("model", "pipeline", "actors", "deploy")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "joblib", "jsonpickle"}


def _sources():
    for pkg in PACKAGES:
        yield from sorted((ROOT / pkg).rglob("*.py"))


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def test_no_unsafe_deserialisation_in_the_code():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [
                    f"{rel}:{node.lineno} imports {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] in UNSAFE_MODULES
                ]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
                problems.append(f"{rel}:{node.lineno} imports from {node.module}")
            elif isinstance(node, ast.Call):
                name = _call_name(node)
                kw = {k.arg: k.value for k in node.keywords}
                if name.endswith("torch.load") or name == "load" and "weights_only" in kw:
                    v = kw.get("weights_only")
                    if not (isinstance(v, ast.Constant) and v.value is True):
                        problems.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
                if name.endswith(("np.load", "numpy.load")):
                    v = kw.get("allow_pickle")
                    if v is not None and not (isinstance(v, ast.Constant) and v.value is False):
                        problems.append(f"{rel}:{node.lineno} np.load with allow_pickle")
                if name.endswith(("read_pickle", "loads")) and name.split(".")[0] in UNSAFE_MODULES | {"pd", "pandas"}:
                    problems.append(f"{rel}:{node.lineno} calls {name}")
                if isinstance(node.func, ast.Name) and name in ("eval", "exec"):  # builtins, not nn.Module.eval()
                    problems.append(f"{rel}:{node.lineno} calls {name}")
    assert not problems, "\n".join(problems)


def test_the_scan_is_checked_by_the_test_above():
    """Guard against a scanner that silently checks nothing."""
    assert sum(1 for _ in _sources()) > 30
    src = "import pickle\nimport torch\ntorch.load(p)\nnp.load(p, allow_pickle=True)\n"
    tree = ast.parse(src)
    calls = [_call_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert calls == ["torch.load", "np.load"]


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/patchrank_ckpt_pwned",))


def test_serving_path_refuses_a_malicious_pickle_checkpoint(tmp_path):
    """The scorer replica's load path (SliceScorer) uses weights_only=True: refused, not run."""
    from patchrank.pipeline.service.slice_scorer import SliceScorer

    marker = Path("/tmp/patchrank_ckpt_pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "patchrank-ckpt/1", "recon_state": _Evil()}))
    with pytest.raises(CheckpointError):
        SliceScorer(str(evil))
    import torch

    torch.save({"format": "patchrank-ckpt/1", "x": _Evil()}, tmp_path / "evil_zip.pt")  # torch's zip container
    with pytest.raises(CheckpointError):
        SliceScorer(str(tmp_path / "evil_zip.pt"))
    assert not marker.exists(), "the pickle payload ran"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cr3t-Pa55@10.0.0.5:6379/0",
        "rediss://default:s3cr3t-Pa55@redis.example:6380/1",
        "rediss://user:s3cr3t-Pa55@h/0?ssl_cert_reqs=required",
    ],
)
def test_redact_url_hides_the_password(url):
    red = redact_url(url)
    assert "s3cr3t-Pa55" not in red and "***" in red
    assert red.split("://")[0] == url.split("://")[0]


def test_config_repr_and_errors_do_not_leak_the_password():
    cfg = ServiceConfig(redis_url="redis://:s3cr3t-Pa55@h:1/0", checkpoint="c", output_dir="o")
    assert cfg.redis_url.endswith("@h:1/0")
    with pytest.raises(ValueError) as info:
        ServiceConfig(redis_url="http://:s3cr3t-Pa55@h:1/0", checkpoint="c", output_dir="o")
    assert "s3cr3t-Pa55" not in str(info.value)
    with pytest.raises(ValueError) as info:
        ServiceConfig(redis_url="redis://:s3cr3t-Pa55@h:1/0", checkpoint="c", output_dir="o", read_count=-1)
    assert "s3cr3t-Pa55" not in str(info.value) and "read_count" in str(info.value)


def test_password_from_environment(monkeypatch):
    monkeypatch.setenv("PATCHRANK_REDIS_PASSWORD", "env-s3cret")
    cfg = ServiceConfig(redis_url="rediss://h:6380/0", redis_ca_certs="/etc/ca.pem", checkpoint="c", output_dir="o")
    assert cfg.redis_kwargs() == {"password": "env-s3cret", "ssl_ca_certs": "/etc/ca.pem"}
    assert "env-s3cret" not in cfg.redis_url


def test_nifti_header_text_never_reaches_errors_or_logs(tmp_path, caplog):
    """Header text fields (descrip, db_name, aux_file, intent_name) hold a patient name."""
    import numpy as np
    from badinput import write_nifti

    from patchrank.pipeline.data.loaders import ScanError
    from patchrank.pipeline.data.preprocess import load_prepared
    from patchrank.pipeline.service.intake import check_uri

    caplog.set_level(logging.DEBUG)
    pre = {"image_size": 32}
    good = good_volume(tmp_path / "named.nii.gz")
    assert PATIENT_MARKER.encode() in __import__("gzip").decompress(
        good.read_bytes()
    )  # the marker is really in the file
    load_prepared(check_uri(str(good), [tmp_path.resolve()]), pre)
    broken = []
    for name, data in (
        ("zeros", np.zeros((16, 16, 8), np.int16)),
        ("d4", np.ones((16, 16, 8, 2), np.int16)),
        ("nan", np.full((16, 16, 8), np.nan, np.float32)),
    ):
        p = write_nifti(tmp_path / f"{name}.nii.gz", data)
        with pytest.raises(ScanError) as info:
            load_prepared(check_uri(str(p), [tmp_path.resolve()]), pre)
        broken.append(str(info.value))
    assert broken and not any(PATIENT_MARKER in m for m in broken)
    assert PATIENT_MARKER not in caplog.text


# ---- issue 23, item 8: every URL form redacted; the password from a file or the environment ----
AWKWARD = "AbC/dEf+gh="  # '/' ends the host part for a URL parser: "Port could not be cast ... 'AbC'"
# (valid forms point at a closed local port: the CLI fails fast on the connection, never on DNS)
URL_FORMS = [
    f"redis://:{AWKWARD}@127.0.0.1:1/0",  # unencoded reserved character in the password
    "redis://:p@ss@127.0.0.1:1/0",  # unencoded '@'
    "redis://user:s3cr3t-Pa55@127.0.0.1:1/0",
    "redis://:s3cr3t-Pa55@[::1]:6390/0",
    "rediss://:s3cr3t-Pa55@127.0.0.1:1/0?ssl_cert_reqs=required",
    "unix://:s3cr3t-Pa55@/run/redis.sock?db=0",
    "redis://127.0.0.1:1/0?password=s3cr3t-Pa55",
    "redis://:s3cr3t%2FPa55@127.0.0.1:1/0",  # percent-encoded
    "s3cr3t-Pa55@127.0.0.1:1",  # no scheme at all
]


def _parts(url: str) -> list[str]:
    from patchrank.pipeline.service.settings import url_secrets

    return [s for s in url_secrets(url) if len(s) >= 3] or ["s3cr3t-Pa55"]


@pytest.mark.parametrize("url", URL_FORMS)
def test_every_url_form_is_redacted(url):
    red = redact_url(url)
    for secret in _parts(url) + ["AbC", "dEf", "p@ss", "s3cr3t"]:
        assert secret not in red, (url, red)
    assert "***" in red


@pytest.mark.parametrize("url", URL_FORMS)
def test_config_errors_and_cli_errors_never_print_the_password(url, capsys):
    """The URL of the adversarial run printed "Port could not be cast to integer value as 'AbC'"."""
    from patchrank.pipeline.cli import main

    try:
        ServiceConfig(redis_url=url, checkpoint="c", output_dir="o")
    except ValueError as exc:
        text = str(exc)
        assert not any(s in text for s in _parts(url) + ["AbC"]), text
    rc = main(["enqueue", "/nonexistent", "--redis-url", url])
    err = capsys.readouterr()
    printed = err.out + err.err
    assert rc != 0 and "Traceback" not in printed and len(printed.strip().splitlines()) == 1, printed
    assert not any(s in printed for s in _parts(url) + ["AbC", "dEf+gh"]), printed


def test_reserved_characters_are_explained():
    with pytest.raises(ValueError) as info:
        ServiceConfig(redis_url=f"redis://:{AWKWARD}@host:6390/0", checkpoint="c", output_dir="o")
    text = str(info.value)
    assert "percent-encode" in text and "%2F" in text and "--redis-password-file" in text
    ok = ServiceConfig(redis_url="redis://:AbC%2FdEf%2Bgh%3D@host:6390/0", checkpoint="c", output_dir="o")
    import redis

    assert redis.connection.parse_url(ok.redis_url)["password"] == AWKWARD  # what the hint says works


def test_password_from_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("PATCHRANK_REDIS_PASSWORD", raising=False)
    f = tmp_path / "pw"
    f.write_text(AWKWARD + "\n")
    cfg = ServiceConfig(redis_url="redis://host:6390/0", redis_password_file=str(f), checkpoint="c", output_dir="o")
    assert cfg.redis_kwargs()["password"] == AWKWARD
    assert AWKWARD not in repr(cfg) and AWKWARD not in cfg.model_dump_json()
    from patchrank.pipeline.service.settings import cli_password

    assert cli_password("redis://host:6390/0", str(f)).get_secret_value() == AWKWARD
    with pytest.raises(ValueError, match="given twice"):
        cli_password("redis://:other@host:6390/0", str(f))
    with pytest.raises(ValueError, match="more than once"):
        ServiceConfig(redis_url="redis://:x@h:1/0", redis_password_file=str(f), checkpoint="c", output_dir="o")
    with pytest.raises(ValueError, match="cannot read the Redis password file"):
        cli_password("redis://host:6390/0", str(tmp_path / "missing"))
    monkeypatch.setenv("PATCHRANK_REDIS_PASSWORD_FILE", str(f))  # the file from the environment
    assert (
        ServiceConfig(redis_url="redis://h:1/0", checkpoint="c", output_dir="o").redis_kwargs()["password"] == AWKWARD
    )


def test_secret_password_travels_to_replicas_but_not_into_text():
    from pydantic import SecretStr

    cfg = ServiceConfig(redis_url="redis://h:1/0", redis_password=SecretStr(AWKWARD), checkpoint="c", output_dir="o")
    again = ServiceConfig(**cfg.model_dump())  # what the Serve ingest replica rebuilds
    assert again.redis_kwargs()["password"] == AWKWARD
    assert AWKWARD not in repr(cfg) and AWKWARD not in str(cfg.model_dump()) and AWKWARD not in cfg.model_dump_json()


def test_one_line_reasons():
    """Ray wraps a remote exception in a traceback with colour codes; rows store class + message."""
    import traceback

    from ray.exceptions import RayTaskError

    from patchrank.pipeline.errors import one_line

    try:
        raise ValueError("stats shape (1, 1, 128, 128) does not fit 16 px")
    except ValueError as exc:
        cause = exc
    tb = "".join(traceback.format_exception(cause))
    wrapped = RayTaskError("ServeReplica:app:Scorer.score", "\x1b[36mray::ServeReplica\x1b[39m (pid=1)\n" + tb, cause)
    for exc in (wrapped, wrapped.as_instanceof_cause()):
        assert one_line(exc) == "ValueError: stats shape (1, 1, 128, 128) does not fit 16 px"
    assert one_line(RuntimeError("a\n  b\x1b[31m c")) == "RuntimeError: a b c"
    assert len(one_line(RuntimeError("x" * 5000))) <= 300
