"""Custom Serve autoscaling policy for the ingest deployment: scale on stream backlog.

Each ingest replica reports {"backlog": lag + pending} (XINFO GROUPS) through
`record_autoscaling_stats`; the backlog is stream-wide, so the policy takes the
freshest maximum over replicas and asks for ceil(backlog / target_backlog_per_replica)
replicas, clamped to the (capacity-adjusted) min/max. Scale-down waits until the lower
count has been wanted for `downscale_delay_s`, so a briefly empty stream does not
churn replicas, and from then on the lower count is asked for on every tick until it is
reached (Serve's own downscale delay needs consecutive decisions). Declared in serve_config.yaml as

    autoscaling_config:
      min_replicas: 1          # >= 1: replicas report the backlog, so one must stay up
      max_replicas: 4
      policy:
        policy_function: deploy.autoscaling:BacklogPolicy
        policy_kwargs: {target_backlog_per_replica: 32, downscale_delay_s: 60}

No Ray import: the policy is plain Python over the AutoscalingContext it is given.
"""

from __future__ import annotations

import math
import time
from typing import Any


def desired_replicas(backlog: float, target_per_replica: float, lo: int, hi: int) -> int:
    """Replicas needed for a backlog (entries), clamped to [lo, hi]."""
    want = math.ceil(max(backlog, 0.0) / target_per_replica) if backlog > 0 else lo
    return int(min(max(want, lo), hi))


class BacklogPolicy:
    def __init__(
        self, target_backlog_per_replica: float = 32.0, downscale_delay_s: float = 60.0, metric: str = "backlog"
    ) -> None:
        if target_backlog_per_replica <= 0:
            raise ValueError("target_backlog_per_replica must be > 0")
        self.target, self.delay, self.metric = float(target_backlog_per_replica), float(downscale_delay_s), metric

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        state = dict(ctx.policy_state or {})
        per_replica = (ctx.aggregated_metrics or {}).get(self.metric) or {}
        current = int(ctx.current_num_replicas)
        lo, hi = int(ctx.capacity_adjusted_min_replicas), int(ctx.capacity_adjusted_max_replicas)
        if not per_replica:  # no replica has reported yet: keep the current target
            return max(min(int(ctx.target_num_replicas), hi), lo), state
        backlog = max(float(v) for v in per_replica.values())
        want = desired_replicas(backlog, self.target, lo, hi)
        now = ctx.current_time if ctx.current_time is not None else time.time()
        if want < current:
            # Keep asking for the lower count every tick once the delay has passed: Ray Serve
            # (2.5x+) applies its own downscale_delay_s on top and acts only after the lower
            # count has been wanted on consecutive ticks for that long.
            since = state.setdefault("below_since", now)
            if now - since < self.delay:
                want = current
        else:
            state.pop("below_since", None)
        state["backlog"] = backlog
        return want, state
