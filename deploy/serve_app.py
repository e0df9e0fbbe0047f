"""Serve application builder: Ingest (stream consumer) -> Scorer (@serve.batch).

    serve run deploy/serve_config.yaml             # or: serve deploy deploy/serve_config.yaml
    serve run patchrank.deploy.serve_app:build_app service.checkpoint=... (key=value args)

`build_app(args)` takes the `AppArgs` dict (pipeline/service_settings.py): the
ServiceConfig plus placement/autoscaling for each deployment. Scorer replicas
autoscale on ongoing requests (Serve's default policy); ingest replicas autoscale on
the stream backlog through deploy.autoscaling:BacklogPolicy. Batch size and wait time
are the scorer's `user_config`, changeable at runtime without restarting replicas.
"""

from __future__ import annotations

from ray.serve import Application

from patchrank.actors.ingest import IngestDeployment
from patchrank.actors.scorer import ScorerDeployment
from patchrank.pipeline.service.settings import AppArgs, Placement

APP_NAME = "patchrank"


def _actor_options(p: Placement) -> dict:
    opts: dict = {"num_cpus": p.num_cpus}
    if p.num_gpus:
        opts["num_gpus"] = p.num_gpus
    if p.resources:
        opts["resources"] = dict(p.resources)
    return opts


def _scaling(p: Placement, policy: dict | None) -> dict:
    if p.min_replicas == p.max_replicas:
        return {"num_replicas": p.max_replicas}
    cfg: dict = {
        "min_replicas": p.min_replicas,
        "max_replicas": p.max_replicas,
        "upscale_delay_s": p.upscale_delay_s,
        "downscale_delay_s": p.downscale_delay_s,
    }
    if p.initial_replicas is not None:
        cfg["initial_replicas"] = p.initial_replicas
    if policy is None:
        cfg["target_ongoing_requests"] = p.target
    else:
        cfg["policy"] = policy
        cfg["metrics_interval_s"] = 2.0
    return {"autoscaling_config": cfg}


def _unflatten(args: dict) -> dict:
    """`serve run module:build_app a.b=c` passes flat dotted keys; nest them."""
    out: dict = {}
    for key, value in args.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def build_app(args: dict | AppArgs) -> Application:
    a = args if isinstance(args, AppArgs) else AppArgs(**_unflatten(dict(args)))
    s = a.service
    if a.ingest.min_replicas < 1:
        raise ValueError("ingest.min_replicas must be >= 1: ingest replicas report the backlog the policy scales on")
    scorer = ScorerDeployment.options(
        ray_actor_options=_actor_options(a.scorer),
        user_config={"max_batch_size": s.max_batch_size, "batch_wait_timeout_s": s.batch_wait_timeout_s},
        **_scaling(a.scorer, None),
    ).bind(s.checkpoint, s.device, s.torch_threads, s.s3_endpoint_url)
    policy = {
        "policy_function": "patchrank.deploy.autoscaling:BacklogPolicy",
        "policy_kwargs": {
            "target_backlog_per_replica": a.ingest.target,
            "downscale_delay_s": a.ingest.downscale_delay_s,
        },
    }
    ingest = IngestDeployment.options(ray_actor_options=_actor_options(a.ingest), **_scaling(a.ingest, policy))
    return ingest.bind(scorer, s.model_dump())
