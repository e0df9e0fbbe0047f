"""Batched slice scoring behind the Serve scorer deployment (and usable without Serve).

The checkpoint is loaded once; each call scores a list of slice chunks (from one or
many scans) in ONE forward pass through `model.scoring.score_members` (the one scoring
function) and splits the outputs back per chunk. Only numpy arrays cross the wire. The networks are
prepared for inference at load (pipeline.inference); pixel maps are computed only for chunks that ask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from patchrank.model.scoring import ScoreOutput, score_members
from patchrank.pipeline.data.storage import local_checkpoint
from patchrank.pipeline.inference import load_for_inference


@dataclass
class SliceChunk:
    images: np.ndarray  # (n, C, H, W) float32 preprocessed slices
    foreground: np.ndarray  # (n, 1, H, W) bool
    position: np.ndarray | None = None  # (n,) relative axial level in the volume (None / NaN = unknown)
    maps: bool = False  # also return the per-pixel anomaly maps (the service's scan rows do not use them)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class ChunkResult:
    patch_scores: np.ndarray  # (n, h, w) float32
    rec: np.ndarray  # (n, h, w)
    disc: np.ndarray  # (n, h, w)
    valid: np.ndarray  # (n, h, w) bool
    image_scores: np.ndarray  # (n,)
    pixel_map: np.ndarray | None = None  # (n, H, W) float16 when the chunk asked for maps (halves the bytes)


def chunk_size(chunks: list[SliceChunk]) -> int:
    """@serve.batch batch_size_fn: a batch is measured in slices, not requests."""
    return sum(len(c) for c in chunks)


def merge_chunks(parts: list[ChunkResult]) -> ScoreOutput:
    """Per-chunk results of one scan -> one ScoreOutput over all its slices (S = sum n)."""
    cat = {
        f: None
        if any(getattr(p, f) is None for p in parts)
        else torch.from_numpy(np.concatenate([getattr(p, f) for p in parts]))
        for f in ChunkResult.__dataclass_fields__
    }
    pixel = None if cat["pixel_map"] is None else cat["pixel_map"].float()
    return ScoreOutput(
        cat["patch_scores"], cat["rec"], cat["disc"], cat["valid"], cat["image_scores"], pixel, torch.empty(0)
    )


class SliceScorer:
    def __init__(
        self,
        checkpoint: str,
        *,
        device: str = "cpu",
        torch_threads: int | None = None,
        fast: bool = True,
        endpoint: str | None = None,
    ) -> None:
        """checkpoint: a path or an s3:// URI (downloaded once to a local cache, then loaded); torch_threads:
        intra-op threads of this process (None: torch's default); fast=False keeps the eager networks
        (benchmarks and tests compare the two)."""
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = device
        self.model = load_for_inference(
            local_checkpoint(checkpoint, endpoint), map_location=device, fast=fast, threads=torch_threads
        )
        self.model_version = self.model.model_version
        self.preprocess = dict(self.model.preprocess)

    def score_chunks(self, chunks: list[SliceChunk]) -> list[ChunkResult]:
        """One forward over all slices of all chunks: (sum n, C, H, W) -> per-chunk results."""
        if not chunks:
            return []
        x = torch.from_numpy(np.concatenate([c.images for c in chunks])).to(self.device)
        fg = torch.from_numpy(np.concatenate([c.foreground for c in chunks])).to(self.device)
        pos = torch.from_numpy(
            np.concatenate(
                [
                    np.full(len(c), np.nan, np.float32) if c.position is None else np.asarray(c.position, np.float32)
                    for c in chunks
                ]
            )
        )
        m, maps = self.model, any(c.maps for c in chunks)
        out = score_members(m.members, x, cfg=m.scoring, foreground=fg, position=pos, maps=maps)
        arrays = {
            "patch_scores": out.patch_scores.float().cpu().numpy(),
            "rec": out.rec.float().cpu().numpy(),
            "disc": out.disc.float().cpu().numpy(),
            "valid": out.valid.cpu().numpy(),
            "image_scores": out.image_scores.float().cpu().numpy(),
            "pixel_map": out.pixel_map.cpu().numpy().astype(np.float16) if maps else None,
        }
        results, start = [], 0
        for c in chunks:
            sl = slice(start, start + len(c))
            results.append(ChunkResult(**{k: None if v is None else v[sl] for k, v in arrays.items()}))
            start += len(c)
        return results


@dataclass(frozen=True)
class ModelInfo:
    """What the ingest side needs to know about the scorer's model (no weights)."""

    model_version: str
    preprocess: dict
    scoring: dict  # ScoringConfig.to_dict()
    input_kind: str | None = None  # "volume" / "image": what it was trained on (None = unknown)
    modality: str | None = None  # the checkpoint's modality (pipeline.data.modality.model_modality)

    @classmethod
    def of(cls, d: dict) -> ModelInfo:
        """From a scorer replica's `info()` dict; fields this version does not know (a newer replica's) are left out."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def input_kind(stats) -> str | None:
    """What a model was trained on, from statistics only that kind of data produces: the
    anatomy term's per-position intensity / symmetry atlas comes from slices of volumes, the
    appearance and lesion-shape terms' statistics from 2D images. None when neither or both."""
    fitted = {name for name, state in (getattr(stats, "terms", None) or {}).items() if _has_tensor(state)}
    volume, image = "anatomy" in fitted, bool(fitted & {"appearance", "lesion_shape"})
    return "volume" if volume and not image else "image" if image and not volume else None


def _has_tensor(state) -> bool:
    return isinstance(state, dict) and any(isinstance(v, torch.Tensor) for v in state.values())


def model_info(scorer: SliceScorer) -> ModelInfo:
    m = scorer.model
    from patchrank.pipeline.data.modality import model_modality

    info = (scorer.model_version, dict(scorer.preprocess), m.scoring.to_dict(), input_kind(m.stats))
    return ModelInfo(*info, model_modality(m.meta or {}))
