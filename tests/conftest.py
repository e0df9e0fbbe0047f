"""Shared fixtures: a private redis-server per test session and one local Ray per session.

Neither depends on services already running on the machine: redis-server is started
on a free port in a temp dir (its binary must be on PATH; scripts/setup.sh installs
it), and Ray is started once with a fixed num_cpus.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server process; restartable (for fault-injection tests)."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password
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
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def redis_url(redis_server):
    """A clean database for each test."""
    import redis

    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    r.close()
    return redis_server.url


@pytest.fixture(scope="session")
def ray_session():
    """Local Ray, started once per test session with a fixed CPU count."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"development data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Small phantom dataset (4 normal + 4 abnormal subjects, 64x64x24)."""
    from pipeline.phantom import PhantomSpec, write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(root, PhantomSpec(shape=(64, 64, 24), n_normal=4, n_abnormal=4, min_radius=3, max_radius=6, seed=1))
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, phantom_dir) -> Path:
    """A tiny model trained for one epoch at 32 px on the phantoms (seconds on CPU)."""
    from pipeline.settings import TrainConfig
    from pipeline.train_local import fit_local, prepare_data

    cfg = TrainConfig(epochs=1, batch_size=8, preprocess={"image_size": 32}, arch={"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2})
    train, val = prepare_data(phantom_dir, cfg, show=False)
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    fit_local(train, val, cfg, out, show=False)
    return out
