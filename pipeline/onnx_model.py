"""ONNX export of a checkpoint's networks and a model that scores through ONNX Runtime.

`export_onnx(model, out)` writes into the folder `out`:
  reconstructor.onnx   (x: (B, C, H, W), mask: (B, 1, H, W)) -> x_hat: (B, C, H, W)
  encoder.onnx         x: (B, C, H, W) -> the encoder's levels 0..depth (the feature evidence term reads them)
  discriminator.onnx   x: (B, C, H, W) -> logits: (B, 1, H/2**n_layers, W/2**n_layers)
  patchrank.json       model_version, architecture, preprocessing and scoring settings, the scalar score
                       statistics, the file names and input / output names of the graphs
  score_stats.npz      the score statistics' tensors (per-position residual statistics, evidence terms' states)
Batch size is a dynamic axis; H and W are the preprocessing's image_size. An ensemble (format
`patchrank-onnx/2`) writes its first member's graphs and statistics as above and each further member's
into `member1/`, `member2/`, ..., listed under "members" in patchrank.json.

`load_onnx(out)` reads the folder back into a `model.checkpoint.LoadedModel` whose networks are ONNX
Runtime sessions behind the nn.Module call signatures, so `pipeline.scan_scoring` (and through it
`model.scoring.score_members`, the one scoring function) scores with them unchanged.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from patchrank.model.checkpoint import MAX_MEMBERS, LoadedModel
from patchrank.model.config import ScoringConfig
from patchrank.model.scoring import Member, ScoreStats
from patchrank.pipeline.data.modality import model_modality

FORMAT, FORMAT_ENSEMBLE = "patchrank-onnx/1", "patchrank-onnx/2"  # 2: with members (readers of 1 refuse it)
OPSET = 18
MAX_BATCH = 4  # images per ONNX Runtime call (the reconstructor gets B x 4 masked copies per scoring batch)
_SCALARS = ("rec_mean", "rec_std", "disc_mean", "disc_std", "image_mean", "image_std")


class _Encoder(nn.Module):
    def __init__(self, recon: nn.Module) -> None:
        super().__init__()
        self.recon = recon

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.recon.encode(x))


def _export(net: nn.Module, args: tuple, path: Path | io.BytesIO, inputs: list[str], outputs: list[str]) -> None:
    """The TorchScript exporter (dynamo=False: no onnxscript needed), batch as the one dynamic axis; its
    deprecation and tracer warnings (shape checks traced as constants, which they are) are silenced."""
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = path if isinstance(path, io.BytesIO) else str(path)
        torch.onnx.export(
            net, args, target, input_names=inputs, output_names=outputs, dynamic_axes=axes, opset_version=OPSET,
            dynamo=False,
        )  # fmt: skip


def export_graphs(recon: nn.Module, disc: nn.Module, size: int) -> dict[str, bytes]:
    """One training's networks as serialized ONNX graphs: {"reconstructor", "encoder", "discriminator"} -> bytes."""
    recon, disc = recon.eval(), disc.eval()
    c = recon.in_channels
    x = torch.zeros(2, c, size, size)
    mask = torch.zeros(2, 1, size, size)
    graphs = {}
    with torch.no_grad():
        for name, net, args, inputs, outputs in (
            ("reconstructor", recon, (x, mask), ["x", "mask"], ["x_hat"]),
            ("encoder", _Encoder(recon), (x,), ["x"], _levels(recon)),
            ("discriminator", disc, (x,), ["x"], ["logits"]),
        ):
            buf = io.BytesIO()
            _export(net, args, buf, inputs, outputs)
            graphs[name] = buf.getvalue()
    return graphs


def _levels(recon: nn.Module) -> list[str]:
    return [f"level{i}" for i in range(recon.depth + 1)]


def _write_member(m: Member, size: int, folder: Path) -> dict:
    """One member's graphs and statistics' tensors into `folder`; -> its scalar statistics and absent states."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, graph in export_graphs(m.recon, m.disc, size).items():
        (folder / f"{name}.onnx").write_bytes(graph)
    stats = m.stats.to_dict()
    arrays = {"pix_mean": stats["pix_mean"], "pix_std": stats["pix_std"]}
    none_keys = []
    for term, state in stats["terms"].items():
        for key, value in state.items():
            if value is None:
                none_keys.append(f"terms/{term}/{key}")
            else:
                arrays[f"terms/{term}/{key}"] = value
    np.savez(folder / "score_stats.npz", **{k: v.detach().cpu().numpy() for k, v in arrays.items()})
    return {"stats": {k: float(stats[k]) for k in _SCALARS}, "stats_none": none_keys}


def export_onnx(model: LoadedModel, out: str | Path) -> Path:
    """Write the model's networks, settings and statistics into the folder `out` (created); -> out."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recon, disc = model.recon, model.disc
    size, levels = int(model.preprocess["image_size"]), _levels(recon)
    first, *rest = model.members
    meta = {
        "format": FORMAT_ENSEMBLE if rest else FORMAT,
        "model_version": model.model_version,
        "arch": {"recon_depth": recon.depth, "in_channels": recon.in_channels, "disc_patch": disc.patch_size},
        "preprocess": dict(model.preprocess),
        "scoring": model.scoring.to_dict(),
        **_write_member(first, size, out),
        "stats_file": "score_stats.npz",
        "graphs": {
            "reconstructor": {"file": "reconstructor.onnx", "inputs": ["x", "mask"], "outputs": ["x_hat"]},
            "encoder": {"file": "encoder.onnx", "inputs": ["x"], "outputs": levels},
            "discriminator": {"file": "discriminator.onnx", "inputs": ["x"], "outputs": ["logits"]},
        },
        "opset": OPSET,
        "modality": model_modality(model.meta or {}),  # what `score` keeps (pipeline.data.modality)
    }
    if rest:  # the same file names inside each member's folder
        meta["members"] = [
            {"folder": f"member{i}", **_write_member(m, size, out / f"member{i}")} for i, m in enumerate(rest, 1)
        ]
    (out / "patchrank.json").write_text(json.dumps(meta, indent=1))
    return out


class _Session:
    """One ONNX Runtime session called with torch tensors, returning torch tensors."""

    def __init__(self, graph: Path | bytes, threads: int | None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        # Idle intra-op threads sleep instead of spinning: a scorer shares its cores with the ingest's
        # loading, Ray and Redis (docs/decisions.md, "Inference").
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = graph if isinstance(graph, bytes) else str(graph)
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, *args: torch.Tensor) -> list[torch.Tensor]:
        """Inputs (B, ...) -> outputs (B, ...), run MAX_BATCH images at a time (each image's output does not
        depend on the rest of its batch: GroupNorm, not BatchNorm), which bounds the activations' memory."""
        arrays = [np.ascontiguousarray(a.detach().cpu().float().numpy()) for a in args]
        parts = []
        for s in range(0, len(arrays[0]), MAX_BATCH):
            feeds = {n: a[s : s + MAX_BATCH] for n, a in zip(self.inputs, arrays)}
            parts.append(self.session.run(None, feeds))
        return [torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0]) for outs in zip(*parts)]


class OnnxReconstructor:
    """The reconstructor's calls (`recon(x, mask)`, `recon.encode(x)`) on ONNX Runtime sessions."""

    def __init__(self, forward: _Session, encoder: _Session, in_channels: int, depth: int) -> None:
        self._forward, self._encoder = forward, encoder
        self.in_channels, self.depth = in_channels, depth

    def __call__(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._forward.run(x, mask.to(x.dtype))[0]

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        if mask is not None:
            raise ValueError("the exported encoder takes unmasked images only")
        return self._encoder.run(x)


class OnnxDiscriminator:
    def __init__(self, session: _Session, in_channels: int, patch_size: int) -> None:
        self._session, self.in_channels, self.patch_size = session, in_channels, patch_size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._session.run(x)[0]


def onnx_networks(
    graphs: dict[str, Path | bytes], in_channels: int, depth: int, patch_size: int, threads: int | None
) -> tuple[OnnxReconstructor, OnnxDiscriminator]:
    """Graphs (files or bytes) -> the reconstructor and discriminator on ONNX Runtime sessions."""
    recon = OnnxReconstructor(
        _Session(graphs["reconstructor"], threads), _Session(graphs["encoder"], threads), in_channels, depth
    )
    return recon, OnnxDiscriminator(_Session(graphs["discriminator"], threads), in_channels, patch_size)


def _inside(root: Path, folder: Path, name: str) -> Path:
    """folder/name, refused (ValueError) unless it lies inside the export folder root."""
    path = (folder / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"{root}/patchrank.json names a file outside the export: {name!r}")
    return path


def _read_member(root: Path, folder: Path, entry: dict, meta: dict, threads: int | None) -> Member:
    g, arch = meta["graphs"], meta["arch"]
    files = {name: _inside(root, folder, g[name]["file"]) for name in ("reconstructor", "encoder", "discriminator")}
    recon, disc = onnx_networks(files, arch["in_channels"], arch["recon_depth"], arch["disc_patch"], threads)
    with np.load(_inside(root, folder, meta["stats_file"]), allow_pickle=False) as z:
        arrays = {k: torch.from_numpy(z[k]) for k in z.files}
    terms: dict[str, dict] = {}
    for key in list(arrays) + entry["stats_none"]:
        if key.startswith("terms/"):
            _, term, name = key.split("/", 2)
            terms.setdefault(term, {})[name] = arrays.get(key)
    return Member(recon, disc, ScoreStats(arrays["pix_mean"], arrays["pix_std"], **entry["stats"], terms=terms))


def load_onnx(folder: str | Path, *, threads: int | None = None) -> LoadedModel:
    """An exported folder -> LoadedModel with ONNX Runtime networks (threads: intra-op threads per session)."""
    folder = Path(folder)
    meta = json.loads((folder / "patchrank.json").read_text())
    if meta.get("format") not in (FORMAT, FORMAT_ENSEMBLE):
        raise ValueError(f"{folder} is not a PatchRank ONNX export ({FORMAT_ENSEMBLE} or older)")
    first = _read_member(folder, folder, meta, meta, threads)
    entries = meta.get("members", []) if meta["format"] == FORMAT_ENSEMBLE else []
    if len(entries) >= MAX_MEMBERS:
        raise ValueError(f"{folder}/patchrank.json lists {len(entries)} further members; at most {MAX_MEMBERS - 1}")
    extra = [_read_member(folder, _inside(folder, folder, e["folder"]), e, meta, threads) for e in entries]
    return LoadedModel(
        recon=first.recon,
        disc=first.disc,
        preprocess=meta["preprocess"],
        scoring=ScoringConfig.from_dict(meta["scoring"]),
        stats=first.stats,
        model_version=meta["model_version"],
        meta={"onnx": str(folder), "modality": meta.get("modality")},
        extra=tuple(extra),
    )
