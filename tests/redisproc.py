"""A private redis-server process for tests (started on a free port, restartable)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from patchrank.pipeline.service.embedded_redis import free_port, stop_process, wait_listening

__all__ = ["RedisServer", "free_port"]


class RedisServer:
    """A private redis-server process; restartable on the same port (fault-injection tests).

    durable=True keeps the data in an fsync-always append-only file, so a restart keeps
    the stream.
    """

    def __init__(self, workdir: Path, password: str | None = None, durable: bool = False) -> None:
        self.workdir = workdir
        self.password = password
        self.durable = durable
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server not on PATH (scripts/setup.sh installs it)")
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof, "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_listening(self.proc, self.port):
            raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
