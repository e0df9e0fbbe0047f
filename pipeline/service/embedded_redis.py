"""A private redis-server for the embedded default (`patchrank screen` with no --redis-url).

Started on a free localhost port in a temporary directory, with a random password and
no persistence, and stopped (directory removed) on exit, also on Ctrl-C.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc: subprocess.Popen, port: int, timeout_s: float = 10.0) -> bool:
    """True once something accepts connections on 127.0.0.1:port; False on timeout.

    Raises RuntimeError if the process exits first.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class EmbeddedRedis:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.workdir: Path | None = None
        self.port = 0
        self.password = secrets.token_hex(16)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> str:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError(
                "redis-server is not on PATH (install it, e.g. `apt-get install redis-server`, or pass --redis-url)"
            )
        self.workdir = Path(tempfile.mkdtemp(prefix="patchrank-redis-"))
        self.port = free_port()
        conf = self.workdir / "redis.conf"  # password via a 0600 config file, not the command line
        conf.write_text(
            f'port {self.port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {self.workdir}\nrequirepass '
            f"{self.password}\n"
        )
        conf.chmod(0o600)
        self.proc = subprocess.Popen(
            [binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        if wait_listening(self.proc, self.port, timeout_s):
            return self.url
        self.stop()
        raise RuntimeError("redis-server did not start within the timeout")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
