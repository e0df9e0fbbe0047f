"""Slice inclusion/labelling on a hand-made volume, dataset discovery in every layout, folds."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from patchrank.pipeline.data.datasets import DatasetError, Record, slice_labels, split_by_subject
from patchrank.pipeline.data.discover import discover, infer_channels
from patchrank.pipeline.data.loaders import Scan
from patchrank.pipeline.data.preprocess import preprocess_scan
from patchrank.pipeline.evaluation.folds import make_folds
from patchrank.pipeline.evaluation.harness import EvalResult, EvalScan, SliceLevel, evaluate_scorer
from patchrank.pipeline.settings import PreprocessConfig


def _hand_made(side: int = 240) -> Scan:
    """8 axial slices of side x side. Brain = square; areas relative to the largest (slice 1):
    slice 0 at 14% (left out), slice 7 at exactly 15% (kept). Tumour voxels (at 240 x 240):
    slice 2: 0, 3: 16 (in between), 4: 20 (abnormal, small), 5: 600 (small), 6: 604 (not small)."""
    f = side / 240
    s = 8
    vol = np.zeros((1, side, side, s), np.float32)
    fg = np.zeros((side, side, s), bool)
    lab = np.zeros((side, side, s), np.int16)
    full = 200 * 200
    for z, frac in enumerate([0.14, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.15]):
        n = int(round(full * frac * f * f))
        fg[..., z].flat[np.flatnonzero(np.ones((side, side)))[:n]] = True  # first n pixels in row order
    fg[..., 1:7] = False
    a = int(200 * f)
    fg[20 : 20 + a, 20 : 20 + a, 1:7] = True
    for z, vox in {3: 16, 4: 20, 5: 600, 6: 604}.items():
        n = int(round(vox * f * f))
        lab[30:130, 30:130, z].flat[:n] = 2
    rng = np.random.default_rng(0)
    vol[0][fg] = rng.normal(1, 0.2, fg.sum())
    return Scan(vol, "volume", fg, lab)


@pytest.mark.parametrize("side", [240, 120])
def test_inclusion_and_labels_follow_the_protocol(side):
    prep = preprocess_scan(_hand_made(side), PreprocessConfig(image_size=32))
    assert list(prep.slice_index) == [1, 2, 3, 4, 5, 6, 7]  # 14% left out, exactly 15% kept
    lab = slice_labels(prep, None)
    assert list(lab) == [0, 0, -1, 1, 1, 1, 0]
    # small-lesion subset, through the evaluation code path (thresholds scale with native area)
    scan = EvalScan(Record("x", "s1"), prep, lab)

    class Dummy(SliceLevel):
        name = "dummy"

        def score(self, images, foreground, position=None):
            return EvalResult(np.arange(len(images), dtype=float), None)

    data = evaluate_scorer(Dummy(), [scan])
    assert list(data.labels) == [0, 0, 1, 1, 1, 0]
    assert list(data.small) == [False, False, True, True, False, False]


def test_image_labels_without_masks():
    prep = preprocess_scan(
        Scan(np.ones((3, 16, 16, 1), np.float32) * 0.5, "image"), PreprocessConfig(image_size=16, channels=3)
    )
    assert list(slice_labels(prep, 1)) == [1] and list(slice_labels(prep, None)) == [-1]


def _png(path, rgb=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 255, (24, 24, 3) if rgb else (24, 24), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_isic_folder_and_official_csvs(tmp_path):
    for i in range(4):
        _png(tmp_path / "isic" / "images" / f"ISIC_000000{i}.jpg")
    (tmp_path / "isic" / "labels.csv").write_text(
        "image_id,label\nISIC_0000000,benign\nISIC_0000001,malignant\nISIC_0000002,benign\nISIC_0000003,malignant\n"
    )
    recs = discover(tmp_path / "isic")
    assert [r.label for r in recs] == [0, 1, 0, 1] and recs[1].subject == "ISIC_0000001"
    assert infer_channels(recs) == 3
    # official 2016 files: no header; training uses words, test uses 0.0/1.0
    off = tmp_path / "official"
    for i in range(3):
        _png(off / "ISBI2016_ISIC_Part3_Test_Data" / f"ISIC_000001{i}.jpg")
    (off / "ISBI2016_ISIC_Part3_Test_GroundTruth.csv").write_text(
        "ISIC_0000010,0.0\nISIC_0000011,1.0\nISIC_0000012,0.0\n"
    )
    assert [r.label for r in discover(off)] == [0, 1, 0]
    (off / "GroundTruth2017.csv").write_text("image_id,melanoma,seborrheic_keratosis\nISIC_0000010,1.0,0.0\n")
    assert [r.label for r in discover(off / "GroundTruth2017.csv")] == [1]


def test_manifest_and_plain_folder(tmp_path):
    _png(tmp_path / "scans" / "a.png", rgb=False)
    _png(tmp_path / "scans" / "b.png", rgb=False)
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), str(tmp_path / "scans" / "c.nii.gz"))
    (tmp_path / "m.csv").write_text(
        "path,subject,label,mask\nscans/a.png,p1,normal,\nscans/b.png,p1,1,scans/a.png\nscans/c.nii.gz,p2,,\n"
    )
    recs = discover(tmp_path / "m.csv")
    assert [(r.subject, r.label) for r in recs] == [("p1", 0), ("p1", 1), ("p2", None)]
    assert recs[1].labels_path.endswith("a.png") and recs[0].labels_path is None
    plain = discover(tmp_path / "scans")
    assert len(plain) == 3 and all(r.label == 0 for r in plain)
    assert infer_channels(plain[:1]) == 1


def test_discovery_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "bad.csv").write_text("path,label\nx.png,maybe\n")
    with pytest.raises(DatasetError, match="unknown label 'maybe'"):
        discover(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("path,label\nx.png,1\n")
    with pytest.raises(DatasetError, match="1 listed file\\(s\\) not found"):
        discover(tmp_path / "missing.csv")
    (tmp_path / "nopath.csv").write_text("file,label\nx.png,0\n")
    with pytest.raises(DatasetError, match="manifest CSV needs a 'path' column"):
        discover(tmp_path / "nopath.csv")
    d = tmp_path / "isic"
    _png(d / "images" / "ISIC_1.png")
    (d / "labels.csv").write_text("image_id,label\nISIC_1,benign\nISIC_2,malignant\n")
    with pytest.raises(DatasetError, match="1 image\\(s\\) listed but not found"):
        discover(d)
    with pytest.raises(DatasetError, match="no scans"):
        (tmp_path / "empty").mkdir()
        discover(tmp_path / "empty")


def test_brats_namings_and_modality(tmp_path):
    from patchrank.pipeline.data.datasets import discover_brats

    vol = nib.Nifti1Image(np.ones((8, 8, 4), np.int16), np.eye(4))
    for case, names in {
        "HGG/BraTS19_A_1": ["BraTS19_A_1_flair", "BraTS19_A_1_t1ce", "BraTS19_A_1_seg"],
        "BraTS-GLI-00002-000": ["BraTS-GLI-00002-000-t2f", "BraTS-GLI-00002-000-t1c", "BraTS-GLI-00002-000-seg"],
    }.items():
        (tmp_path / case).mkdir(parents=True)
        for n in names:
            nib.save(vol, str(tmp_path / case / f"{n}.nii.gz"))
    recs = discover(tmp_path)
    assert sorted(r.subject for r in recs) == ["BraTS-GLI-00002-000", "BraTS19_A_1"]
    assert all(r.path.endswith(("_flair.nii.gz", "-t2f.nii.gz")) and r.labels_path.endswith("seg.nii.gz") for r in recs)
    assert all(r.path.endswith(("t1ce.nii.gz", "t1c.nii.gz")) for r in discover_brats(tmp_path, "t1ce"))
    with pytest.raises(DatasetError, match="unknown modality"):
        discover(tmp_path, modality="pet")


def test_splits_and_folds_are_by_subject():
    recs = [
        Record(f"{s}_{i}.png", s, int(s.startswith("m")))
        for s in [f"b{j}" for j in range(7)] + [f"m{j}" for j in range(5)]
        for i in range(2)
    ]
    tr, va = split_by_subject(recs, 0.25, seed=3)
    assert not {r.subject for r in tr} & {r.subject for r in va} and len({r.subject for r in va}) == 3
    folds = make_folds(recs, 3, seed=0)
    flat = [s for f in folds for s in f]
    assert sorted(flat) == sorted({r.subject for r in recs}) and len(flat) == len(set(flat))
    assert all(any(s.startswith("m") for s in f) and any(s.startswith("b") for s in f) for f in folds)
    assert make_folds(recs, 3, seed=0) == folds and make_folds(recs, 3, seed=1) != folds
    with pytest.raises(DatasetError, match="folds"):
        make_folds(recs, 13, seed=0)


def test_merge_fold_results_and_table(tmp_path):
    import json

    from patchrank.pipeline.evaluation.folds import markdown_table, merge_runs

    def part(fold, auc):
        runs = [
            {"method": m, "fold": fold, "image_auroc": auc + d, "pixel_auroc": None, "fit_seconds": 1.0}
            for m, d in (("patchrank", 0.1), ("cae", 0.0))
        ]
        return {"config": {"seed": 0}, "fold_seed": 0, "folds": [["a"], ["b"]], "runs": runs}

    for i, auc in enumerate((0.5, 0.7)):
        (tmp_path / f"{i}.json").write_text(json.dumps(part(i, auc)))
    res = merge_runs([tmp_path / "0.json", tmp_path / "1.json"])
    mean, std, n = res["summary"]["patchrank"]["image_auroc"]
    assert (round(mean, 6), round(std, 6), n) == (0.7, 0.1, 2)
    assert res["summary"]["cae"]["pixel_auroc"] is None and res["fold_seed"] == 0
    table = markdown_table(res["summary"])
    assert "| patchrank | 0.700 ± 0.100 |" in table and "pixel_auroc" not in table
    other = part(0, 0.5) | {"folds": [["x"], ["y"]]}
    (tmp_path / "x.json").write_text(json.dumps(other))
    with pytest.raises(DatasetError, match="different folds"):
        merge_runs([tmp_path / "0.json", tmp_path / "x.json"])
    (tmp_path / "s.json").write_text(json.dumps(part(1, 0.7) | {"fold_seed": 1}))  # same split, other --seed
    with pytest.raises(DatasetError, match="different folds"):
        merge_runs([tmp_path / "0.json", tmp_path / "s.json"])
    (tmp_path / "g.json").write_text(json.dumps(part(1, 0.7) | {"gpu": True}))  # bf16 GPU weights are not the CPU's
    with pytest.raises(DatasetError, match="device"):
        merge_runs([tmp_path / "0.json", tmp_path / "g.json"])
    (tmp_path / "g0.json").write_text(json.dumps(part(0, 0.5) | {"gpu": True}))
    assert merge_runs([tmp_path / "g0.json", tmp_path / "g.json"])["gpu"] is True


def test_training_key_tells_gpu_from_cpu_weights():
    from patchrank.pipeline.evaluation.folds import _training_key
    from patchrank.pipeline.settings import TrainConfig

    cpu, gpu = _training_key(TrainConfig(), ["a"]), _training_key(TrainConfig(), ["a"], gpu=True)
    assert cpu != gpu and "gpu" not in cpu  # CPU keys as before: kept CPU checkpoints stay reusable
