"""A private redis-server for the embedded default (`patchrank screen` with no --redis-url).

Started on a free localhost port with a random password and no persistence, and stopped
on exit, also on Ctrl-C. The configuration (with the password) goes to redis-server on
its stdin, never into a file or onto the command line, and its working directory is
removed as soon as it listens, so a `kill -9` of the parent leaves no secret on disk; the
server itself gets SIGKILL when its parent dies (PR_SET_PDEATHSIG), and the parent's
watchdog (pipeline.service.watchdog) covers systems without prctl.
"""

from __future__ import annotations

import ctypes
import secrets
import shutil
import signal
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
            raise RuntimeError(f"{Path(str(proc.args[0])).name} exited with code {proc.returncode}")
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


def die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGKILL this child when its parent dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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
        conf = (  # on stdin ("redis-server -"): the password is in no file and not in `ps`
            f'port {self.port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {self.workdir}\n'
            f"requirepass {self.password}\n"
        )
        self.proc = subprocess.Popen(
            [binary, "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, no locks taken
        )
        self.proc.stdin.write(conf.encode())
        self.proc.stdin.close()
        if wait_listening(self.proc, self.port, timeout_s):
            shutil.rmtree(self.workdir, ignore_errors=True)  # persists nothing; nothing left after a kill -9
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
