"""One checkpoint file that alone rebuilds everything the scorer needs.

Contents (plain dicts, lists, numbers, strings and tensors only, so that
`torch.load(..., weights_only=True)` can read it and nothing is ever unpickled):
  format, model_version, arch {recon, disc}, preprocess, scoring, stats,
  recon_state, disc_state, meta, and optionally train_state (optimizers, epoch, mask
  RNG) for resuming. An ensemble (format 3, `save_ensemble`) adds `members`: each further
  training's {recon_state, disc_state, stats}, with the first training's as above; its scores
  are the members' mean (model.scoring.score_members). Older formats are upgraded on load
  (model.upgrade). model_version is a content hash of everything that changes scores (weights,
  architecture, preprocessing, scoring config, statistics, members), so two files score
  identically exactly when their versions match.
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
from .scoring import Member, ScoreStats
from .upgrade import FORMAT_1, FORMAT_2, FORMAT_3, UpgradeError, upgrade

CHECKPOINT_FORMAT = FORMAT_2  # one training; an ensemble is written as FORMAT_3
MAX_MEMBERS = 16


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
    if "members" in payload:  # absent from single trainings, whose versions stay as format 2 made them
        _hash_update(h, payload["members"])
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
    extra: tuple[Member, ...] = ()  # an ensemble's members after the first (whose are recon, disc, stats)

    @property
    def members(self) -> list[Member]:
        """Every training whose scores are averaged: one, or an ensemble's k."""
        return [Member(self.recon, self.disc, self.stats), *self.extra]


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
    extra: tuple[Member, ...] | list[Member] = (),
) -> str:
    """Write atomically (temp file + rename); returns the model_version. `extra`: an ensemble's further
    members (format 3)."""
    payload = {
        "format": FORMAT_3 if extra else CHECKPOINT_FORMAT,
        "arch": arch_of(recon, disc),
        "preprocess": dict(preprocess),
        "scoring": scoring.to_dict(),
        **_member_payload(Member(recon, disc, stats)),  # stats, recon_state, disc_state
        "meta": dict(meta or {}),
    }
    if extra:
        if len(extra) + 1 > MAX_MEMBERS:
            raise ValueError(f"an ensemble holds at most {MAX_MEMBERS} members, got {len(extra) + 1}")
        payload["members"] = [_member_payload(m) for m in extra]
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


def _member_payload(m: Member) -> dict:
    """One training's weights (CPU, unwrapped) and statistics, as a checkpoint stores them."""
    return {
        "recon_state": {k: v.detach().cpu() for k, v in _unwrap(m.recon).state_dict().items()},
        "disc_state": {k: v.detach().cpu() for k, v in _unwrap(m.disc).state_dict().items()},
        "stats": m.stats.to_dict(),
    }


def save_ensemble(path: str | os.PathLike, parts: list[str | os.PathLike], meta: dict | None = None) -> str:
    """Checkpoints of one configuration trained with different seeds -> one checkpoint scoring with their mean
    (format 3; no training state). Their preprocessing, scoring settings and architecture must agree. meta: the
    first's, `meta` over it, and `ensemble`: the members' model versions."""
    if len(parts) < 2:
        raise ValueError("an ensemble needs at least two trained checkpoints")
    models = [load_checkpoint(p) for p in parts]
    first = models[0]

    def training(m: LoadedModel) -> dict:  # the settings it was trained with, but for the seed
        return {k: v for k, v in m.meta.get("train_config", {}).items() if k not in ("seed", "ensemble")}

    for p, m in zip(parts, models):
        same = (m.preprocess, m.scoring.to_dict(), arch_of(m.recon, m.disc), training(m)) == (
            first.preprocess, first.scoring.to_dict(), arch_of(first.recon, first.disc), training(first))  # fmt: skip
        if not same:
            raise ValueError(f"{p} differs from {parts[0]} in preprocessing, scoring, architecture or training")
        if m.extra:
            raise ValueError(f"{p} is an ensemble already; give single trainings")
    if len({m.model_version for m in models}) < len(models):
        raise ValueError("the same training is given twice: an ensemble's members are different trainings")
    meta = {**first.meta, **(meta or {}), "ensemble": [m.model_version for m in models]}
    extra = [Member(m.recon, m.disc, m.stats) for m in models[1:]]
    return save_checkpoint(path, first.recon, first.disc, preprocess=first.preprocess, scoring=first.scoring,
                           stats=first.stats, meta=meta, extra=extra)  # fmt: skip


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
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT_1, FORMAT_2, FORMAT_3):
        raise CheckpointError(f"{path} is not a PatchRank checkpoint (format {FORMAT_3} or older)")
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
    recon, disc = _networks(payload["arch"], payload, map_location)
    extra = []
    for m in payload.get("members", []):
        r, d = _networks(payload["arch"], m, map_location)
        extra.append(Member(r, d, ScoreStats.from_dict(m["stats"])))
    model = LoadedModel(
        recon=recon,
        disc=disc,
        preprocess=payload["preprocess"],
        scoring=scoring,
        stats=stats,
        model_version=version,
        meta=payload.get("meta", {}),
        train_state=payload.get("train_state"),
        extra=tuple(extra),
    )
    if validate:
        validate_loaded(model, path)
    return model


def _networks(arch: dict, states: dict, map_location) -> tuple[MaskedReconstructor, PatchDiscriminator]:
    recon, disc = build_networks(arch)
    recon.load_state_dict(states["recon_state"])
    disc.load_state_dict(states["disc_state"])
    return recon.to(map_location).eval(), disc.to(map_location).eval()


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
    members = payload.get("members", [])
    if (payload.get("format") == FORMAT_3) != ("members" in payload):
        raise _fail(path, f"ensemble members belong in format {FORMAT_3} only, and it needs them")
    if not isinstance(members, list) or len(members) >= MAX_MEMBERS or ("members" in payload and not members):
        raise _fail(path, f"an ensemble checkpoint holds 1..{MAX_MEMBERS - 1} further members")
    try:
        ScoringConfig.from_dict(payload["scoring"])
    except Exception as exc:  # noqa: BLE001
        raise _fail(path, f"invalid scoring configuration ({type(exc).__name__})") from None
    for i, part in enumerate([payload, *members]):
        label = "" if i == 0 else f"members[{i - 1}]."
        if not isinstance(part, dict):
            raise _fail(path, f"{label[:-1]} is not a dict")
        _check_states(part, recon, disc, label, path)
        try:
            stats = ScoreStats.from_dict(part["stats"])
        except Exception as exc:  # noqa: BLE001
            raise _fail(path, f"invalid {label}statistics ({type(exc).__name__})") from None
        check_stats(stats, size, channels, path, label)


def _check_states(part: dict, recon: nn.Module, disc: nn.Module, label: str, path) -> None:
    """A training's weights: the architecture's keys and shapes, finite values."""
    for name, net in (("recon_state", recon), ("disc_state", disc)):
        state = part.get(name)
        if not isinstance(state, dict):
            raise _fail(path, f"no {label}{name}")
        want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state.items()}
        if set(want) != set(got):
            diff = sorted(set(want) ^ set(got))
            raise _fail(
                path, f"{label}{name} does not match the architecture ({len(diff)} keys differ, e.g. {diff[0]})"
            )
        for k, shape in want.items():
            if got[k] != shape:
                raise _fail(path, f"{label}{name}.{k} has shape {got[k]}, the architecture needs {shape}")
            if not bool(torch.isfinite(state[k].float()).all()):
                raise _fail(path, f"{label}{name}.{k} holds non-finite values")


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


def check_stats(
    stats: ScoreStats, image_size: int, channels: int, path: str | os.PathLike = "checkpoint", label: str = ""
) -> None:
    """Every statistic finite, scalar spreads positive, spatial maps at image_size (label: the member's, in errors)."""
    for name, v in _stat_values(stats):
        name = label + name
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
    from .scoring import score_members

    size = int(model.preprocess["image_size"])
    channels = int(model.preprocess.get("channels") or model.recon.in_channels)
    params = getattr(model.recon, "parameters", None)  # networks on another runtime take CPU tensors
    device = next(params()).device if params else torch.device("cpu")
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = (yy**2 + xx**2 < 0.6).expand(2, 1, size, size)
    x = torch.where(inside, 0.4 * torch.rand(2, channels, size, size, generator=g) - 0.2, torch.tensor(-1.0))
    try:
        out = score_members(
            model.members,
            x.to(device),
            cfg=model.scoring,
            foreground=inside.to(device),
            position=torch.tensor([0.5, float("nan")]),
        )
    except Exception as exc:  # noqa: BLE001 - whatever breaks here would break every scan
        raise _fail(
            path, f"a test forward fails ({exc.__class__.__name__}: {' '.join(str(exc).split())[:160]})"
        ) from None
    if tuple(out.image_scores.shape) != (2,) or not bool(torch.isfinite(out.image_scores).all()):
        raise _fail(path, "a test forward gives non-finite scores")
