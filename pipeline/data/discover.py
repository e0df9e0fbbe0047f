"""Turn whatever the user points at into a list of `Record`s.

Dispatch (first match wins):
  * a .csv file: a manifest (header with `path`) or an ISIC ground-truth CSV;
  * a folder with `labels.csv` or an ISIC `*GroundTruth*.csv`: ISIC-style;
  * a BIDS root (sub-*/[ses-*/]anat/*_<suffix>.nii[.gz]): the images of the modality (pipeline.data.bids);
  * a folder of case folders holding NIfTI files: BraTS-style (2015-2023 namings, phantoms);
  * any other folder with scans below it: a plain folder of normal images / volumes.
"""

from __future__ import annotations

from pathlib import Path

from patchrank.pipeline.data.datasets import DatasetError, Record, discover_brats
from patchrank.pipeline.data.loaders import NIFTI_SUFFIXES
from patchrank.pipeline.data.manifest import discover_plain, find_label_csv, read_isic_csv, read_manifest


def _has_cases(folder: Path) -> bool:
    for case in folder.iterdir():
        if case.is_dir() and any(f.name.endswith(NIFTI_SUFFIXES) for f in case.rglob("*")):
            return True
    return False


def discover(path: str | Path, modality: str = "flair") -> list[Record]:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data path not found: {path}")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DatasetError(f"don't know how to read {path.name}: expected a folder or a manifest .csv")
        with path.open(encoding="utf-8-sig", errors="replace") as f:
            header = f.readline().lower()
        return read_manifest(path) if "path" in [h.strip() for h in header.split(",")] else read_isic_csv(path)
    labels = find_label_csv(path)
    if labels is not None:
        return read_isic_csv(labels)
    from patchrank.pipeline.data.bids import discover_bids, is_bids

    if is_bids(path):
        return discover_bids(path, modality)
    if _has_cases(path):
        return discover_brats(path, modality)
    return discover_plain(path)


def infer_channels(records: list[Record]) -> int:
    """Channels a model needs for these records: 3 for RGB images, else 1 per modality."""
    from patchrank.pipeline.data.loaders import ScanError, load_image, scan_kind

    first = records[0]
    if scan_kind(first.path) == "image":
        try:
            return int(load_image(first.path).shape[0])
        except ScanError as exc:
            raise DatasetError(str(exc)) from None
    return 1 + len(first.extra_paths)


def choose_preset(records: list[Record]) -> str:
    """The preset for these records: 'dermoscopy' for RGB 2D images, else 'brain-mri'."""
    from patchrank.pipeline.data.loaders import scan_kind

    rgb_images = scan_kind(records[0].path) == "image" and infer_channels(records) == 3
    return "dermoscopy" if rgb_images else "brain-mri"


def config_for(records: list[Record], preset: str | None, *layers: dict):
    """-> (TrainConfig, preset name): the preset (chosen from the data unless given), then each layer,
    with the input channels inferred from the data unless a layer sets them."""
    from patchrank.pipeline.settings import build_config, merge

    name = preset or choose_preset(records)
    over: dict = {}
    for layer in layers:
        over = merge(over, layer)
    if "channels" not in over.get("preprocess", {}):
        over = merge(over, {"preprocess": {"channels": infer_channels(records)}})
    return build_config(name, over), name
