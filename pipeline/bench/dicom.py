"""`patchrank bench dicom`: what loading a DICOM series costs next to the NIfTI of the same volume.

For each of the first N FLAIR volumes under --data (BraTS-style; phantoms when absent) it writes the volume
as .nii.gz and as a single-frame DICOM series (pipeline.data.dicom_export), then times, best of --repeat:
  * nifti:  loaders.load_scan of the .nii.gz;
  * discover: walk_scans over the series folder (header reads, grouping by SeriesInstanceUID);
  * dicom:  load_series_scan of the folder + SeriesInstanceUID (what the consumer does: find the series
            again, read every file, order, rescale, reorient);
and checks the two arrays are identical. Prints a table and writes --out JSON.

With --checkpoint: a trained model on a held-out patient exported as a PACS-like DICOM folder (top patch on the
lesion in world coordinates, same score as the NIfTI; pipeline/bench/dicom_lesion.py).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dicom", help="DICOM series loading cost next to NIfTI", description=__doc__)
    p.add_argument("--data", default="../shared/data/brats2015", help="BraTS-style folder (phantoms if absent)")
    p.add_argument("--n", type=int, default=3, help="volumes")
    p.add_argument("--repeat", type=int, default=3, help="timings per volume (best kept)")
    p.add_argument("--out", help="JSON file for the numbers")
    p.add_argument("--checkpoint", help="instead: check this model's top patch on held-out patients exported as DICOM")
    p.add_argument("--patients", help="with --checkpoint: comma-separated case folders (default: the last one)")
    p.add_argument("--near-mm", type=float, default=5.0, help="with --checkpoint: 'near the tumour' (default 5 mm)")
    p.set_defaults(func=run)


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _volumes(data: Path, n: int, tmp: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    import nibabel as nib

    files = sorted(data.glob("*/*_flair.nii.gz"))[:n] if data.is_dir() else []
    if not files:
        from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset

        write_phantom_dataset(tmp / "phantom", PhantomSpec(shape=(240, 240, 155), n_normal=n, n_abnormal=0))
        files = sorted((tmp / "phantom").glob("*/*_flair.nii.gz"))[:n]
    out = []
    for f in files:
        img = nib.load(str(f))
        out.append((f.parent.name, np.rint(np.asarray(img.dataobj, dtype=np.float32)), img.affine))
    return out


def run(args: argparse.Namespace) -> int:
    if args.checkpoint:
        from patchrank.pipeline.bench import dicom_lesion

        return dicom_lesion.run(args)
    import nibabel as nib

    from patchrank.pipeline.data.dicom import load_series_scan
    from patchrank.pipeline.data.dicom_export import write_series
    from patchrank.pipeline.data.files import walk_scans
    from patchrank.pipeline.data.loaders import load_scan

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, vol, affine in _volumes(Path(args.data), args.n, tmp):
            nii, folder = tmp / f"{name}.nii.gz", tmp / name
            nib.save(nib.Nifti1Image(vol.astype(np.int16), affine), str(nii))
            uid, files = write_series(vol, affine, folder)
            a, b = load_scan(nii).array, load_series_scan(folder, uid).array
            if not np.array_equal(a, b):
                raise RuntimeError(f"{name}: DICOM and NIfTI volumes differ")
            rows.append(
                {
                    "volume": name,
                    "shape": list(vol.shape),
                    "files": len(files),
                    "dicom_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1),
                    "nifti_mb": round(nii.stat().st_size / 2**20, 1),
                    "nifti_s": round(_best(lambda nii=nii: load_scan(nii), args.repeat), 4),
                    "discover_s": round(_best(lambda f=folder: walk_scans([f]), args.repeat), 4),
                    "dicom_s": round(_best(lambda f=folder, u=uid: load_series_scan(f, u), args.repeat), 4),
                }
            )
    print(
        f"{'volume':<18} {'shape':<14} {'files':>5} {'MB dcm/nii':>11} {'nifti s':>8} {'discover s':>10} {'dicom s':>8}"
    )
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        mb = f"{r['dicom_mb']}/{r['nifti_mb']}"
        print(
            f"{r['volume']:<18} {shape:<14} {r['files']:>5} {mb:>11} {r['nifti_s']:>8.3f} "
            f"{r['discover_s']:>10.3f} {r['dicom_s']:>8.3f}"
        )
    med = {k: float(np.median([r[k] for r in rows])) for k in ("nifti_s", "discover_s", "dicom_s")}
    print(
        f"median per volume: NIfTI {med['nifti_s']:.3f} s, DICOM discovery {med['discover_s']:.3f} s, "
        f"DICOM load {med['dicom_s']:.3f} s ({med['dicom_s'] / med['nifti_s']:.1f}x NIfTI)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "median": med}, indent=2))
    return 0
