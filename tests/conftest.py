"""Shared fixtures: a private redis-server per test session and one local Ray per session.

Neither depends on services already running on the machine: redis-server is started
on a free port in a temp dir (its binary must be on PATH; scripts/setup.sh installs
it), and Ray is started once with a fixed num_cpus.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redisproc import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


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
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            # Train controller polls every 0.5 s (2 s default): the injected-failure test waits 6 s for it
            runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}},
        )
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
    from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset

    root = tmp_path_factory.mktemp("phantom")
    write_phantom_dataset(
        root, PhantomSpec(shape=(64, 64, 24), n_normal=4, n_abnormal=4, min_radius=3, max_radius=6, seed=1)
    )
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, phantom_dir) -> Path:
    """A tiny model trained for one epoch at 32 px on the phantoms (seconds on CPU)."""
    from patchrank.pipeline.settings import TrainConfig
    from patchrank.pipeline.training.local import fit_local, prepare_data

    cfg = TrainConfig(
        epochs=1,
        critic_epochs=1,
        batch_size=8,
        preprocess={"image_size": 32},
        arch={"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2},
    )
    train, val = prepare_data(phantom_dir, cfg, show=False)
    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    fit_local(train, val, cfg, out, show=False)
    return out
