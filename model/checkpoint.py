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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load with weights_only=True; verify format and content hash; eval-mode networks."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal or corruption
        raise CheckpointError(
            f"refusing to load {path}: not a safe PatchRank checkpoint ({exc.__class__.__name__}: {str(exc)[:200]})"
        ) from exc
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
    recon, disc = build_networks(payload["arch"])
    recon.load_state_dict(payload["recon_state"])
    disc.load_state_dict(payload["disc_state"])
    recon.to(map_location).eval()
    disc.to(map_location).eval()
    return LoadedModel(
        recon=recon,
        disc=disc,
        preprocess=payload["preprocess"],
        scoring=scoring,
        stats=stats,
        model_version=version,
        meta=payload.get("meta", {}),
        train_state=payload.get("train_state"),
    )
