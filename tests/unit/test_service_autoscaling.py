"""The ingest autoscaling policy: replicas from stream backlog, clamped, with scale-down delay."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from patchrank.deploy.autoscaling import BacklogPolicy, desired_replicas


def _ctx(backlog: dict, current: int, now: float, state: dict | None = None, lo: int = 1, hi: int = 4):
    return SimpleNamespace(
        aggregated_metrics={"backlog": backlog} if backlog is not None else {},
        current_num_replicas=current,
        target_num_replicas=current,
        capacity_adjusted_min_replicas=lo,
        capacity_adjusted_max_replicas=hi,
        policy_state=state or {},
        current_time=now,
    )


@pytest.mark.parametrize("backlog, want", [(0, 1), (1, 1), (32, 1), (33, 2), (96, 3), (10_000, 4)])
def test_desired_replicas(backlog, want):
    assert desired_replicas(backlog, 32, 1, 4) == want


def test_policy_scales_up_now_and_down_after_delay():
    pol = BacklogPolicy(target_backlog_per_replica=10, downscale_delay_s=30)
    n, state = pol(_ctx({"r1": 35.0, "r2": 34.0}, current=1, now=0.0))
    assert n == 4
    n, state = pol(_ctx({"r1": 0.0}, current=4, now=1.0, state=state))
    assert n == 4 and "below_since" in state  # waits
    n, state = pol(_ctx({"r1": 0.0}, current=4, now=40.0, state=state))
    assert n == 1 and "below_since" in state  # asked for on every tick until reached
    n, state = pol(_ctx({"r1": 0.0}, current=1, now=41.0, state=state))
    assert n == 1 and "below_since" not in state
    n, _ = pol(_ctx({}, current=2, now=50.0))
    assert n == 2  # nothing reported yet: keep the target


def test_policy_scales_down_under_serves_own_delay():
    """Ray Serve wraps a custom policy with its own downscale_delay_s: the target changes only
    after the policy wanted the lower count on consecutive ticks for that long. The policy's
    delay must not reset Serve's (it did: an idle stream never scaled down in bench autoscale)."""
    pol = BacklogPolicy(target_backlog_per_replica=10, downscale_delay_s=8)
    current, state, wanted_since = 2, {}, None
    for tick in range(1, 60):  # one tick per second
        n, state = pol(_ctx({"r1": 0.0}, current=current, now=float(tick), state=state))
        wanted_since = (wanted_since if wanted_since is not None else tick) if n < current else None
        if wanted_since is not None and tick - wanted_since >= 8:  # Serve's delay satisfied
            current, wanted_since = n, None
    assert current == 1


def test_policy_rejects_bad_target():
    with pytest.raises(ValueError):
        BacklogPolicy(target_backlog_per_replica=0)


def test_deploy_files_validate():
    """serve_config.yaml passes Serve's schema and builds the app; ray_cluster.yaml passes
    the cluster launcher's validation; every key of ray_cluster.yaml carries a comment."""
    from pathlib import Path

    import yaml
    from ray.autoscaler._private.util import validate_config
    from ray.serve.schema import ServeDeploySchema

    from patchrank.deploy.serve_app import build_app

    root = Path(__file__).resolve().parents[2]
    serve_cfg = yaml.safe_load((root / "deploy" / "serve_config.yaml").read_text())
    ServeDeploySchema(**serve_cfg)
    app = serve_cfg["applications"][0]
    assert app["import_path"] == "patchrank.deploy.serve_app:build_app"
    build_app(app["args"])
    cluster_text = (root / "ray_cluster.yaml").read_text()
    validate_config(yaml.safe_load(cluster_text))
    for line in cluster_text.splitlines():
        s = line.strip()
        if s and not s.startswith("#") and ":" in s:
            assert "#" in line, f"uncommented key in ray_cluster.yaml: {line}"
