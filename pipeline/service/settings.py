"""Configuration of the streaming scoring service (pydantic, extra="forbid").

Loaded once at the edge (CLI flags, `deploy/serve_config.yaml` args) and handed to the
consumer, the sink and the Serve deployments as one validated object.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from patchrank.pipeline.service.keys import DEFAULT_NAMESPACE, StreamKeys

PASSWORD_ENV = "PATCHRANK_REDIS_PASSWORD"  # the Redis password, instead of putting it in the URL
PASSWORD_FILE_ENV = "PATCHRANK_REDIS_PASSWORD_FILE"  # ... or a file holding it
SCHEMES = ("redis", "rediss", "unix")
MAX_CHUNK = 512  # slices one scorer request may carry
PERCENT_ENCODING_HINT = (
    "percent-encode reserved characters in the URL's user name and password "
    "('/' -> %2F, '?' -> %3F, '#' -> %23, '@' -> %40, ':' -> %3A, '%' -> %25; "
    "python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=\"\"))' PASSWORD), "
    "or better keep the password out of the URL (a URL on the command line is visible in `ps`): "
    f"--redis-password-file FILE, ${PASSWORD_FILE_ENV} or ${PASSWORD_ENV}"
)


def _split(url: str) -> tuple[str, str, str, str] | None:
    """-> (scheme, userinfo or "", host part, rest) by the rule that *redacts*: the user info
    ends at the LAST '@' (a password may hold '/', '?', '#' or '@' that a URL parser would
    take for the end of the host), or None when `url` has no scheme://."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", url, re.S)
    if m is None:
        return None
    scheme, rest = m.groups()
    userinfo = ""
    if "@" in rest:
        userinfo, rest = rest.rsplit("@", 1)
    cut = re.search(r"[/?#]", rest)
    host = rest[: cut.start()] if cut else rest
    return scheme, userinfo, host, rest[len(host) :]


def redact_url(url: str) -> str:
    """The URL with its password (user info and any `password=` query value) replaced by
    ***, for logs and messages. Works on malformed URLs too: everything between :// and
    the last '@' is hidden, so an unencoded '/' or '@' in a password cannot leak a part."""
    url = str(url)
    parts = _split(url)
    if parts is None:
        return "***" if "@" in url else url
    scheme, userinfo, host, rest = parts
    rest = re.sub(r"(?i)((?:^|[?&])password=)[^&#]*", r"\1***", rest)
    if not userinfo:
        return f"{scheme}://{host}{rest}"
    user = userinfo.split(":", 1)[0] if ":" in userinfo and not re.search(r"[/?#]", userinfo) else ""
    return f"{scheme}://{user}:***@{host}{rest}"


def url_secrets(url: str | None) -> list[str]:
    """Strings that must never be printed: the URL's user info, its password, pieces of a
    malformed one (a URL parser error may quote any of them) and their %-decoded forms."""
    if not url:
        return []
    parts = _split(str(url))
    found: set[str] = set()
    if parts is not None and parts[1]:
        userinfo = parts[1]
        found.add(userinfo)
        password = userinfo.split(":", 1)[1] if ":" in userinfo else userinfo
        found.add(password)
        found.update(p for p in re.split(r"[:/?#@]", password) if len(p) >= 3)
    for value in re.findall(r"(?i)(?:^|[?&])password=([^&#]*)", str(url)):
        found.add(value)
    found |= {unquote(s) for s in found} | {quote(s, safe="") for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


_URL_IN_TEXT = re.compile(r"(?i)\b(?:rediss?|unix)://\S+")


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` with every Redis URL redacted and every known secret string replaced by ***."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), str(text))
    for s in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def check_redis_url(url: str) -> None:
    """Refuse a URL redis-py would misparse, with a reason that never quotes the URL
    (a password with an unencoded '/' makes its first part look like a port: redis-py then
    says "Port could not be cast to integer value as '<first part of the password>'")."""
    parts = _split(url)
    scheme = parts[0].lower() if parts else ""
    if scheme not in SCHEMES:
        raise ValueError(
            f"redis_url must start with redis://, rediss:// or unix://, got {scheme + '://' if scheme else 'no scheme'}"
        )
    try:
        sp = urlsplit(url)
    except ValueError:
        raise ValueError(f"redis_url cannot be parsed; {PERCENT_ENCODING_HINT}") from None
    if parts[1] and "@" not in sp.netloc:  # a URL parser ends the host at '/', '?' or '#' in the password
        raise ValueError(f"redis_url: the user name or password contains a reserved character; {PERCENT_ENCODING_HINT}")
    try:
        port = sp.port
    except ValueError:
        raise ValueError(
            "redis_url: the part after the host is not a port number; if the password contains "
            f"reserved characters, {PERCENT_ENCODING_HINT}"
        ) from None
    if scheme != "unix" and not sp.hostname:
        raise ValueError("redis_url has no host (redis://[:password@]host:port/db)")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"redis_url: port {port} is out of range")
    try:
        if scheme != "unix" and sp.path.strip("/"):
            int(unquote(sp.path).strip("/"))
    except ValueError:
        raise ValueError(
            "redis_url: the database after the host must be a number; "
            f"if the password contains reserved characters, {PERCENT_ENCODING_HINT}"
        ) from None


def url_has_password(url: str) -> bool:
    parts = _split(url)
    return bool(parts and parts[1]) or bool(re.search(r"(?i)(?:^|[?&])password=", url))


def read_password_file(path: str | os.PathLike) -> str:
    """The password in `path` (one line; a trailing newline is dropped)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the Redis password file {path} ({exc.__class__.__name__})") from None
    password = text.rstrip("\r\n")
    if not password or "\n" in password:
        raise ValueError(f"the Redis password file {path} must hold exactly one non-empty line")
    return password


def password_from_environment() -> str | None:
    """$PATCHRANK_REDIS_PASSWORD_FILE (a file) or $PATCHRANK_REDIS_PASSWORD, else None."""
    if os.environ.get(PASSWORD_FILE_ENV):
        return read_password_file(os.environ[PASSWORD_FILE_ENV])
    return os.environ.get(PASSWORD_ENV) or None


def cli_password(url: str | None, password_file: str | None) -> SecretStr | None:
    """The password for an existing Redis at `url` from a password file (--redis-password-file,
    $PATCHRANK_REDIS_PASSWORD_FILE) or $PATCHRANK_REDIS_PASSWORD; None for a private Redis or
    when the URL carries one (a password file next to a URL password is an error)."""
    if password_file:
        if not url:
            raise ValueError("--redis-password-file needs --redis-url (a private Redis has its own password)")
        if url_has_password(url):
            raise ValueError("the Redis password is given twice (in the URL and in --redis-password-file)")
        return SecretStr(read_password_file(password_file))
    if url and not url_has_password(url) and os.environ.get(PASSWORD_ENV):
        return SecretStr(os.environ[PASSWORD_ENV])
    return None


class ServiceConfig(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, hide_input_in_errors=True
    )  # errors never echo a URL with its password

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="redis://[:password@]host:port/db, rediss:// for TLS, or unix:///path.sock; better keep the "
        "password out of the URL: redis_password_file, redis_password, $PATCHRANK_REDIS_PASSWORD_FILE or "
        "$PATCHRANK_REDIS_PASSWORD",
    )
    redis_password: SecretStr | None = Field(
        None, description="the Redis password (the CLI fills it from --redis-password-file or the environment)"
    )
    redis_password_file: str | None = Field(
        None, description="file holding the Redis password, read where the client connects (every node)"
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
    max_inflight_mb: int = Field(
        2048,
        ge=64,
        description="memory the scans in flight in one ingest replica may take, estimated from each header "
        "before reading (pipeline.data.preprocess.peak_bytes while loading, the model-ready slices while "
        "scoring); a scan waits for room, and one needing more than all of it is a failed row",
    )
    max_slices: int = Field(1024, ge=1, description="a scan with more slices to score is a failed row")
    max_prepared_mb: int = Field(
        512, ge=1, description="a scan whose model-ready slices take more memory than this is a failed row"
    )
    chunk_slices: int | None = Field(
        None,
        ge=1,
        le=MAX_CHUNK,
        description=f"slices per scorer request, batched further by @serve.batch (default: max_batch_size up to "
        f"{MAX_CHUNK}, so one request fills a forward)",
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

    @property
    def chunk(self) -> int:
        """Slices per scorer request."""
        return self.chunk_slices or min(self.max_batch_size, MAX_CHUNK)

    @field_validator("redis_url")
    @classmethod
    def _url(cls, v: str) -> str:
        check_redis_url(v)
        return v

    @field_validator("namespace")
    @classmethod
    def _ns(cls, v: str) -> str:
        StreamKeys(v)
        return v

    @model_validator(mode="after")
    def _chunks_fit_batches(self) -> ServiceConfig:
        if self.chunk_slices is not None and self.chunk_slices > self.max_batch_size:
            raise ValueError(f"chunk_slices ({self.chunk_slices}) must be <= max_batch_size ({self.max_batch_size})")
        given = [
            n
            for n, v in (("redis_password", self.redis_password), ("redis_password_file", self.redis_password_file))
            if v
        ]
        if len(given) > 1 or (given and url_has_password(self.redis_url)):
            raise ValueError(
                "the Redis password is given more than once (URL, redis_password, redis_password_file); give it once"
            )
        return self

    @property
    def keys(self) -> StreamKeys:
        return StreamKeys(self.namespace)

    def redis_kwargs(self) -> dict:
        """Extra arguments for redis.from_url: the password (redis_password, redis_password_file,
        else, when the URL has none, $PATCHRANK_REDIS_PASSWORD_FILE / $PATCHRANK_REDIS_PASSWORD)
        and the TLS CA bundle."""
        kw: dict = {}
        if self.redis_password is not None:
            kw["password"] = self.redis_password.get_secret_value()
        elif self.redis_password_file:
            kw["password"] = read_password_file(self.redis_password_file)
        elif not url_has_password(self.redis_url):
            env = password_from_environment()
            if env:
                kw["password"] = env
        if self.redis_url.startswith("rediss://") and self.redis_ca_certs:
            kw["ssl_ca_certs"] = self.redis_ca_certs
        return kw

    def resolved_roots(self) -> list[Path | str]:
        """Local roots resolved to real paths; s3:// roots normalised (validated bucket/key)."""
        from patchrank.pipeline.data.storage import S3Uri, is_s3

        return [str(S3Uri.parse(r)) if is_s3(r) else Path(r).resolve() for r in self.allowed_roots]


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
    scorer: Placement = Placement(num_cpus=1.0, target=2.0)  # ongoing requests of up to a batch each (~64 slices)
    ingest: Placement = Placement(num_cpus=0.25, target=32.0)
