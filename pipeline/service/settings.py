"""Configuration of the streaming scoring service (pydantic, extra="forbid").

Loaded once at the edge (CLI flags, `deploy/serve_config.yaml` args) and handed to the
consumer, the sink and the Serve deployments as one validated object.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from patchrank.pipeline.service.keys import DEFAULT_NAMESPACE, StreamKeys


class ServiceConfig(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True
    )  # errors never echo a URL with its password

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://[:password@]host:port/db, rediss:// for TLS, or unix:///path.sock; "
        "the password may also come from $PATCHRANK_REDIS_PASSWORD",
    )
    redis_ca_certs: str | None = Field(None, description="CA bundle for rediss:// (default: system store)")
    namespace: str = Field(DEFAULT_NAMESPACE, description="prefix of every Redis key (pipeline/keys.py)")
    checkpoint: str = Field(description="model checkpoint the scorer loads once (path or s3://bucket/key)")
    output_dir: str = Field(description="Parquet dataset root (tables scans/, patches/): folder or s3://bucket/prefix")
    allowed_roots: list[str] = Field(
        default_factory=list, description="scan URIs must lie under one of these folders or s3://bucket/prefix roots"
    )
    s3_endpoint_url: str | None = Field(
        None,
        pattern=r"^https?://[^/@\s]+/?$",
        description="S3-compatible endpoint (MinIO, Ceph, moto); default $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL, "
        "else AWS. Credentials always come from the standard AWS environment/config, never from here",
    )
    # Consumer (ingest)
    read_count: int = Field(8, ge=1, le=1000, description="entries fetched per XREADGROUP")
    block_ms: int = Field(200, ge=1, le=60_000, description="XREADGROUP block time")
    max_inflight_scans: int = Field(4, ge=1, le=256, description="scans loaded/scored concurrently per consumer")
    chunk_slices: int = Field(
        8, ge=1, le=512, description="slices per scorer request (batched further by @serve.batch)"
    )
    claim_idle_ms: int = Field(30_000, ge=100, description="pending entries idle this long are reclaimed (XAUTOCLAIM)")
    claim_every_s: float = Field(2.0, gt=0, description="how often a consumer runs XAUTOCLAIM")
    max_deliveries: int = Field(3, ge=1, le=100, description="after this many deliveries an entry is dead-lettered")
    drain_timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="on shutdown, wait this long for in-flight scans (keep below Serve's "
        "graceful_shutdown_timeout_s, 20 s)",
    )
    trim_every_s: float = Field(
        30.0,
        ge=0,
        description="how often a consumer trims acknowledged entries off the stream (XTRIM MINID); 0 = never",
    )
    flush_scans: int = Field(16, ge=1, description="write a Parquet part once this many results are buffered")
    flush_interval_s: float = Field(1.0, gt=0, description="... or once the oldest buffered result is this old")
    top_patches: int = Field(20, ge=1, le=1000, description="patches stored per scan in the patches table")
    write_maps: bool = Field(False, description="write each volume's anomaly map as <output_dir>/maps/<scan_id>.nii.gz")
    # Scorer
    max_batch_size: int = Field(32, ge=1, le=4096, description="@serve.batch max slices per forward")
    batch_wait_timeout_s: float = Field(0.01, ge=0, le=10)
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    torch_threads: int | None = Field(None, ge=1, le=256, description="torch.set_num_threads in the scorer")

    @field_validator("redis_url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme = urlsplit(v).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"redis_url must start with redis://, rediss:// or unix://, got {scheme or v!r}")
        return v

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        StreamKeys(v)
        return v

    @model_validator(mode="after")
    def _chunks_fit_batches(self) -> ServiceConfig:
        if self.chunk_slices > self.max_batch_size:
            raise ValueError(f"chunk_slices ({self.chunk_slices}) must be <= max_batch_size ({self.max_batch_size})")
        return self

    @property
    def keys(self) -> StreamKeys:
        return StreamKeys(self.namespace)

    def redis_kwargs(self) -> dict:
        """Extra arguments for redis.from_url: env password and TLS CA bundle."""
        kw: dict = {}
        if "@" not in self.redis_url and os.environ.get("PATCHRANK_REDIS_PASSWORD"):
            kw["password"] = os.environ["PATCHRANK_REDIS_PASSWORD"]
        if self.redis_url.startswith("rediss://") and self.redis_ca_certs:
            kw["ssl_ca_certs"] = self.redis_ca_certs
        return kw

    def resolved_roots(self) -> list[Path | str]:
        """Local roots resolved to real paths; s3:// roots normalised (validated bucket/key)."""
        from patchrank.pipeline.data.storage import S3Uri, is_s3

        return [str(S3Uri.parse(r)) if is_s3(r) else Path(r).resolve() for r in self.allowed_roots]


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class Placement(BaseModel):
    """Where and how many replicas of one Serve deployment run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0, description="> 0 places the replica on a GPU node (set device: cuda)")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources, e.g. {ingest_node: 0.01} to pin to a node type"
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target: float = Field(
        8.0, gt=0, description="scorer: target ongoing requests per replica; ingest: target backlog entries per replica"
    )
    downscale_delay_s: float = Field(60.0, ge=0)
    upscale_delay_s: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Placement:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        return self


class AppArgs(BaseModel):
    """Arguments of the Serve app builder (deploy/serve_app.py:build_app)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    service: ServiceConfig
    scorer: Placement = Placement(num_cpus=1.0, target=8.0)
    ingest: Placement = Placement(num_cpus=0.25, target=32.0)
