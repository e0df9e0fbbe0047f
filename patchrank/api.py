"""The Python API: `load` a checkpoint, `score` scans in-process, `train` a model as `patchrank train` does."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class ScanResult:
    """One scored scan: the scan score (z units against normal scans), per-slice scores after through-plane
    context, the ranked patches (boxes in the RAS-reoriented slice, centres also in the input's own voxel
    indices i, j, k) and, when asked, per-pixel maps."""

    path: str
    scan_score: float
    slice_scores: np.ndarray  # (S,)
    slice_index: np.ndarray  # (S,) slice numbers in the input
    patches: list  # ranked PatchHit (pipeline.scan_scoring)
    maps: np.ndarray | None = None  # (S, H, W) model-grid anomaly maps, gated per scan
    map_volume: np.ndarray | None = None  # volumes with maps=True: the map on the input's own voxel grid
    affine: np.ndarray | None = None  # volumes: the input's own affine (voxel -> RAS mm)
    geometry: object | None = None  # volumes: pipeline.data.geometry.Geometry

    def save_map(self, path: str | os.PathLike) -> Path:
        """Write the anomaly map as NIfTI on the input's grid and affine (overlay it on the original in 3D
        Slicer / ITK-SNAP). Needs a volume scored with maps=True."""
        from patchrank.pipeline.data.geometry import write_map

        if self.map_volume is None or self.geometry is None:
            raise ValueError("no map: score a volume with maps=True")
        write_map(path, self.map_volume, self.geometry)
        return Path(path)

    def to_frame(self):
        """The ranked patches as a pandas DataFrame (one row per patch, with the scan's path and score)."""
        import dataclasses

        import pandas as pd

        from patchrank.pipeline.scan_scoring import PatchHit

        rows = [{"path": self.path, "scan_score": self.scan_score, **vars(p)} for p in self.patches]
        columns = ["path", "scan_score", *(f.name for f in dataclasses.fields(PatchHit))]
        return pd.DataFrame(rows, columns=columns)


class Detector:
    """A trained checkpoint, ready to score scan files (NIfTI volumes, 2D images) through the one scoring path."""

    def __init__(self, model) -> None:
        from patchrank.pipeline.data.preprocess import as_config

        self.model = model
        self.preprocess = as_config(model.preprocess)

    @property
    def model_version(self) -> str:
        return self.model.model_version

    def score(
        self, path: str | os.PathLike, *, maps: bool = False, top: int = 10, series_uid: str | None = None
    ) -> ScanResult:
        """Score one scan file or DICOM series (a folder, + its SeriesInstanceUID when it holds several, or a
        `pipeline.data.dicom.SeriesRef`); raises pipeline.data.loaders.ScanError for unreadable or unusable input."""
        from patchrank.pipeline.data.dicom import SeriesRef
        from patchrank.pipeline.data.preprocess import load_prepared

        src = path if isinstance(path, SeriesRef) else Path(path)
        return self._result(path, load_prepared(src, self.preprocess, series_uid), maps=maps, top=top)

    def _result(self, path, prep, *, maps: bool = False, top: int = 10) -> ScanResult:
        from patchrank.pipeline.data.geometry import canonical_to_native
        from patchrank.pipeline.scan_scoring import score_prepared

        s = score_prepared(self.model, prep, top_n=top, keep_maps=maps)
        canon, geo = s.extras.get("map_volume"), prep.geometry
        res = ScanResult(str(path), s.scan_score, s.slice_scores, s.slice_index, s.patches, s.pixel_maps)
        if geo is not None:
            res.affine, res.geometry = geo.native, geo
            if canon is not None:
                res.map_volume = canonical_to_native(canon, geo)
        return res

    def score_many(self, paths: Iterable[str | os.PathLike], **kwargs) -> Iterator[ScanResult]:
        """Score each file in turn (same options as `score`), reading the next file while one is scored."""
        from patchrank.pipeline.data.dicom import SeriesRef
        from patchrank.pipeline.data.prefetch import prefetched
        from patchrank.pipeline.data.preprocess import load_prepared

        def load(p):
            return load_prepared(p if isinstance(p, SeriesRef) else Path(p), self.preprocess)

        for path, loading in prefetched(paths, load):
            yield self._result(path, loading.result(), **kwargs)


def load(checkpoint: str | os.PathLike, *, device: str = "cpu") -> Detector:
    """Load a checkpoint (weights_only, verified against its content hash; older formats upgraded) and
    prepare its networks for inference (pipeline.inference)."""
    from patchrank.pipeline.inference import load_for_inference

    return Detector(load_for_inference(checkpoint, map_location=device))


def train(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str | None = None,
    config: dict | None = None,
    epochs: int | None = None,
    workers: int = 0,
    modality: str = "flair",
    quiet: bool = True,
) -> Path:
    """Train on the normal scans under `data` and write the checkpoint `out`, as `patchrank train` does:
    the preset is chosen from the data unless given, `config` (a partial TrainConfig dict) layers on top.
    workers > 0 trains with Ray Train. Returns the checkpoint path."""
    from patchrank.pipeline.commands.train import fit
    from patchrank.pipeline.data.discover import config_for, discover

    over = dict(config or {})
    if epochs is not None:
        over["epochs"] = epochs
    cfg, _ = config_for(discover(data, modality=modality), preset, over)
    fit(data, Path(out), cfg, modality=modality, workers=workers, show=not quiet)
    return Path(out)
