"""A private S3-compatible server for tests: moto's standalone server (`moto.server`) in a
child process on 127.0.0.1, restartable on the same port.

moto keeps objects in memory only, so a killed server forgets them. Real S3 does not, so
the server runs with moto's request recorder on (MOTO_ENABLE_RECORDING: every request is
appended to a JSON-lines file before it is handled), and a restarted server first replays
that log into its app in-process and only then opens the port (this file run as a script):
a write-ahead log standing in for durable storage, and no client ever sees the half-restored
store. A request the old server logged but never answered is replayed too, as a real store
may keep a PUT whose response the client never saw.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from patchrank.pipeline.service.embedded_redis import free_port, wait_listening

TEST_BUCKET = "patchrank-test"  # the bucket the `s3` fixture (tests/integration/conftest.py) creates

CREDENTIALS = {  # moto accepts any; these keep the AWS SDK from searching further
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    # Plain Content-Length uploads instead of aws-chunked ones with a trailing checksum: moto's
    # recorder cannot log a chunked body, and the replay after a restart needs the bytes.
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
}


class MotoS3:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.recording = self.workdir / "moto_recording.jsonl"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> None:
        env = {
            **os.environ,
            **CREDENTIALS,
            "MOTO_ENABLE_RECORDING": "1",
            "MOTO_RECORDER_FILEPATH": str(self.recording),
        }
        log = open(self.workdir / "moto.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.port), str(self.recording)],
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        if not wait_listening(self.proc, self.port, timeout_s=30):
            self.kill()
            raise RuntimeError(f"moto server did not start (see {self.workdir / 'moto.log'})")

    def kill(self) -> None:
        """SIGKILL: the process and every open connection die at once."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> int:
        """A fresh process on the same port that replays the request log before it listens;
        returns the number of requests in the log."""
        n = sum(1 for _ in open(self.recording)) if self.recording.exists() else 0
        self.start()
        return n

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=CREDENTIALS["AWS_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


def _records(text: str):
    """The request log's records. moto's recorder writes a record and its newline in two writes, so records of
    concurrent requests can share a line ("AB\\n\\n"); each is read where it starts. A record cut short by the
    SIGKILL (its request never answered) is skipped up to the next line."""
    import json

    decoder, pos = json.JSONDecoder(), 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            nl = text.find("\n", pos)
            if nl < 0:
                return
            pos = nl + 1
            continue
        yield record


def _serve(port: int, recording: Path) -> None:
    """Child process: replay the log into a new moto app, then serve it on 127.0.0.1:port."""
    import base64

    from moto.moto_api import recorder
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server
    from werkzeug.test import Client

    app = DomainDispatcherApplication(create_backend_app)
    if recording.exists():
        recorder.stop_recording()  # the replay must not append itself to the log
        client = Client(app)
        for e in _records(recording.read_text()):
            body = base64.b64decode(e["body"]) if e.get("body_encoded") else (e.get("body") or "").encode()
            headers = {
                k: v for k, v in e["headers"].items() if k.lower() not in ("content-length", "transfer-encoding")
            }
            client.open(e["url"], method=e["method"], headers=headers, data=body)
        recorder.start_recording()
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler)
    server.serve_forever()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), Path(sys.argv[2]))
