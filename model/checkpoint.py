"""One checkpoint file that alone rebuilds everything the scorer needs.

Contents (plain dicts, lists, numbers, strings and tensors only, so that
`torch.load(..., weights_only=True)` can read it and nothing is ever unpickled):
  format, model_version, arch {recon, disc}, preprocess, scoring, stats,
  recon_state, disc_state, meta, and optionally train_state (optimizers, epoch, mask
  RNG) for resuming. Older formats are upgraded on load (model.upgrade). model_version is
  a content hash of everything that changes scores (weights, architecture, preprocessing,
  scoring config, statistics), so two files score identically exactly when their versions match.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import ScoringConfig
from .discriminator import PatchDiscriminator
from .reconstructor import MaskedReconstructor
from .scoring import ScoreStats
from .upgrade import FORMAT_1, FORMAT_2, UpgradeError, upgrade

CHECKPOINT_FORMAT = FORMAT_2


class CheckpointError(ValueError):
    """The file is not a usable PatchRank checkpoint."""


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if hasattr(m, "module") else m


def build_networks(arch: dict) -> tuple[MaskedReconstructor, PatchDiscriminator]:
    return MaskedReconstructor(**arch["recon"]), PatchDiscriminator(**arch["disc"])


def arch_of(recon: nn.Module, disc: nn.Module) -> dict:
    r, d = _unwrap(recon), _unwrap(disc)
    return {
        "recon": {"in_channels": r.in_channels, "base_channels": r.base_channels, "depth": r.depth},
        "disc": {"in_channels": d.in_channels, "base_channels": d.base_channels, "n_layers": d.n_layers},
    }


def _hash_update(h: hashlib._Hash, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k in sorted(obj):
            h.update(str(k).encode())
            _hash_update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _hash_update(h, v)
    else:
        h.update(json.dumps(obj, sort_keys=True).encode())


def content_version(payload: dict) -> str:
    h = hashlib.sha256()
    for key in ("arch", "preprocess", "scoring", "stats", "recon_state", "disc_state"):
        _hash_update(h, payload[key])
    return h.hexdigest()[:16]


@dataclass
class LoadedModel:
    recon: MaskedReconstructor
    disc: PatchDiscriminator
    preprocess: dict
    scoring: ScoringConfig
    stats: ScoreStats
    model_version: str
    meta: dict
    train_state: dict | None = None


def save_checkpoint(
    path: str | os.PathLike,
    recon: nn.Module,
    disc: nn.Module,
    *,
    preprocess: dict,
    scoring: ScoringConfig,
    stats: ScoreStats,
    meta: dict | None = None,
    train_state: dict | None = None,
) -> str:
    """Write atomically (temp file + rename); returns the model_version."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch_of(recon, disc),
        "preprocess": dict(preprocess),
        "scoring": scoring.to_dict(),
        "stats": stats.to_dict(),
        "recon_state": {k: v.detach().cpu() for k, v in _unwrap(recon).state_dict().items()},
        "disc_state": {k: v.detach().cpu() for k, v in _unwrap(disc).state_dict().items()},
        "meta": dict(meta or {}),
    }
    payload["model_version"] = content_version(payload)
    if train_state is not None:
        payload["train_state"] = train_state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(payload, buf)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return payload["model_version"]


def _load_failure(exc: Exception) -> str:
    """Why torch.load refused a file, in one line."""
    text, unpickling = str(exc), exc.__class__.__name__ == "UnpicklingError"
    if unpickling and "Unsupported global" in text:
        return "it holds Python objects beyond tensors and plain data; those are never unpickled"
    if unpickling or isinstance(exc, KeyError | EOFError) or "PytorchStreamReader" in text:
        return "not a PyTorch file, or a truncated one"
    return f"{exc.__class__.__name__}: {text.splitlines()[0][:160] if text else ''}"


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, validate: bool = True
) -> LoadedModel:
    """Load with weights_only=True; verify format and content hash; eval-mode networks; then (validate) one
    test forward (`validate_loaded`; a caller that swaps the networks first runs it on its own)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file (.pt written by `patchrank train`)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption
        raise CheckpointError(f"refusing to load {path}: not a PatchRank checkpoint ({_load_failure(exc)})") from exc
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT_1, FORMAT_2):
        raise CheckpointError(f"{path} is not a PatchRank checkpoint (format {CHECKPOINT_FORMAT} or older)")
    version = content_version(payload)  # on the payload as saved, before any upgrade
    if version != payload.get("model_version"):
        raise CheckpointError(
            f"{path}: content hash {version} does not match stored model_version {payload.get('model_version')}"
        )
    try:
        payload = upgrade(payload)
        scoring = ScoringConfig.from_dict(payload["scoring"])
        stats = ScoreStats.from_dict(payload["stats"])
    except (UpgradeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot use this checkpoint: {exc}") from exc
    check_payload(payload, path)
    recon, disc = build_networks(payload["arch"])
    recon.load_state_dict(payload["recon_state"])
    disc.load_state_dict(payload["disc_state"])
    recon.to(map_location).eval()
    disc.to(map_location).eval()
    model = LoadedModel(
        recon=recon,
        disc=disc,
        preprocess=payload["preprocess"],
        scoring=scoring,
        stats=stats,
        model_version=version,
        meta=payload.get("meta", {}),
        train_state=payload.get("train_state"),
    )
    if validate:
        validate_loaded(model, path)
    return model


# ---- load-time validation --------------------------------------------------------------
# A content hash only proves the file is what its writer hashed; a writer can hash anything
# (a checkpoint edited to image_size 16 and re-hashed loaded fine and then failed every scan
# at scoring time, retried as an infrastructure fault). So the configuration, the weights'
# shapes and the statistics are checked at load, and one test forward must give finite
# scores: a checkpoint that cannot score is refused with one line, before any scan is read.


def _fail(path, what: str) -> CheckpointError:
    return CheckpointError(f"refusing to load {Path(path).name}: {what}")


def check_payload(payload: dict, path: str | os.PathLike = "checkpoint") -> None:
    """Configuration, weight shapes and statistics of a checkpoint payload, before any network
    is built from it. Raises CheckpointError with one line naming the first problem."""
    pre = payload.get("preprocess")
    if not isinstance(pre, dict):
        raise _fail(path, "no preprocess configuration")
    size, channels = pre.get("image_size"), pre.get("channels")  # channels: absent in hand-made checkpoints
    if not isinstance(size, int) or isinstance(size, bool) or not 16 <= size <= 1024 or size % 16:
        raise _fail(path, f"preprocess.image_size {size!r} is not a multiple of 16 in 16..1024")
    if channels is not None and (not isinstance(channels, int) or not 1 <= channels <= 8):
        raise _fail(path, f"preprocess.channels {channels!r} is not in 1..8")
    try:
        recon, disc = build_networks(payload["arch"])
    except Exception as exc:  # noqa: BLE001 - any malformed architecture
        raise _fail(path, f"invalid architecture ({exc.__class__.__name__}: {str(exc)[:120]})") from None
    channels = recon.in_channels if channels is None else channels
    if recon.in_channels != channels or disc.in_channels != channels:
        raise _fail(path, f"networks take {recon.in_channels}/{disc.in_channels} channels, preprocess gives {channels}")
    if size % (2 ** getattr(recon, "depth", 0)):
        raise _fail(path, f"image_size {size} is not divisible by 2**depth ({2**recon.depth}) of the reconstructor")
    for name, net in (("recon_state", recon), ("disc_state", disc)):
        state = payload.get(name)
        if not isinstance(state, dict):
            raise _fail(path, f"no {name}")
        want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}
        if set(want) != set(got):
            diff = sorted(set(want) ^ set(got))
            raise _fail(path, f"{name} does not match the architecture ({len(diff)} keys differ, e.g. {diff[0]})")
        for k, shape in want.items():
            if got[k] != shape:
                raise _fail(path, f"{name}.{k} has shape {got[k]}, the architecture needs {shape}")
            if not bool(torch.isfinite(state[k].float()).all()):
                raise _fail(path, f"{name}.{k} holds non-finite values")
    try:
        ScoringConfig.from_dict(payload["scoring"])
        stats = ScoreStats.from_dict(payload["stats"])
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"invalid scoring configuration or statistics ({exc.__class__.__name__})") from None
    check_stats(stats, size, channels, path)


def _stat_values(stats: ScoreStats):
    """(name, value) of every statistic: the method's own and each evidence term's state."""
    for f in stats.__dataclass_fields__:
        v = getattr(stats, f)
        if isinstance(v, dict):  # terms: {term name: {statistic: value}}
            for term, state in v.items():
                if not isinstance(state, dict):
                    yield f"{f}.{term}", state
                    continue
                for k, x in state.items():
                    yield f"{term}.{k}", x
        else:
            yield f, v


def check_stats(stats: ScoreStats, image_size: int, channels: int, path: str | os.PathLike = "checkpoint") -> None:
    """Every statistic finite, scalar spreads positive, spatial maps at image_size."""
    for name, v in _stat_values(stats):
        if v is None:
            continue
        if isinstance(v, torch.Tensor):
            if not bool(torch.isfinite(v.float()).all()):
                raise _fail(path, f"statistic {name} holds non-finite values (NaN/inf)")
            if v.dim() == 4 and tuple(v.shape[-2:]) != (image_size, image_size):
                raise _fail(
                    path,
                    f"statistic {name} has shape {tuple(v.shape)}; image_size {image_size} needs "
                    f"{image_size}x{image_size} maps",
                )
            if v.dim() == 4 and name.endswith("app_mean") and v.shape[1] != channels:
                raise _fail(path, f"statistic {name} has {v.shape[1]} channels, preprocess gives {channels}")
        elif isinstance(v, bool):
            continue
        elif isinstance(v, (int, float)):
            if v != v or v in (float("inf"), float("-inf")):
                raise _fail(path, f"statistic {name} is not finite ({v})")
            if name.endswith("_std") and v <= 0:
                raise _fail(path, f"statistic {name} must be positive, is {v}")
        elif not isinstance(v, (str, list, tuple, dict)):
            raise _fail(path, f"statistic {name} has type {type(v).__name__}")


@torch.no_grad()
def validate_loaded(model: LoadedModel, path: str | os.PathLike = "checkpoint") -> None:
    """One forward of two synthetic slices (a volume slice and a 2D image) through the scoring
    function: it must run and give finite image scores. Refuses what check_payload cannot
    see (a scoring configuration that does not fit the networks or statistics)."""
    from .scoring import score_images

    size = int(model.preprocess["image_size"])
    channels = int(model.preprocess.get("channels") or model.recon.in_channels)
    params = getattr(model.recon, "parameters", None)  # networks on another runtime take CPU tensors
    device = next(params()).device if params else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = (yy**2 + xx**2 < 0.6).expand(2, 1, size, size)
    x = torch.where(inside, 0.4 * torch.rand(2, channels, size, size, generator=g) - 0.2, torch.tensor(-1.0))
    try:
        out = score_images(
            model.recon,
            model.disc,
            x.to(device),
            cfg=model.scoring,
            stats=model.stats,
            foreground=inside.to(device),
            position=torch.tensor([0.5, float("nan")]),
        )
    except Exception as exc:  # noqa: BLE001 - whatever breaks here would break every scan
        raise _fail(
            path, f"a test forward fails ({exc.__class__.__name__}: {' '.join(str(exc).split())[:160]})"
        ) from None
    if tuple(out.image_scores.shape) != (2,) or not bool(torch.isfinite(out.image_scores).all()):
        raise _fail(path, "a test forward gives non-finite scores")
