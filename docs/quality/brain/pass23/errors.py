"""Where brain pixel AUROC is lost (pass 23, docs/experiments.md): one outer fold of the registered seed-0 split.

Scores the fold's test patients with the fold model kept by `patchrank bench quality --models DIR` (the same
harness path, so the fold's pixel AUROC matches quality.json), then over the same pixels (foreground of the
labelled slices plus any tumour pixel, native grid) reports:
 - pixel AUROC per patient, of the map and of the model input's FLAIR alone (upsampled like the map);
 - pixel AUROC with the pixels within 1-8 px of the label boundary left out, and inside that band alone;
 - 1 - AUROC split into mis-ordered pairs charged to each side (tumour rim / interior; normal pixels by their
   distance to the tumour, normal slices) and to each patient;
 - pixel AUROC per tumour sub-region (BraTS labels 1-4) against the patient's normal pixels, and the fold's with
   each patient's label 1 (necrosis) left out;
 - probes on the map (outer folds, so optimistic bounds, not selections): a grey-scale hole filling (reconstruction
   by erosion from the image border; parameter-free), and FLAIR's local contrast added (map + lam x (FLAIR minus
   its k x k mean over the foreground)).

    python docs/quality/brain/pass23/errors.py --models DIR --fold N   (N = 1, 2, 3)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from patchrank.model.pixelmap import box_mean
from patchrank.pipeline.data.discover import config_for, discover
from patchrank.pipeline.data.preprocess import to_native
from patchrank.pipeline.evaluation.folds import build_fold, fit_method, make_folds, with_target
from patchrank.pipeline.evaluation.harness import evaluate_scorer, report

CONTRAST = [(k, lam) for k in (3, 9, 15) for lam in (0.5, 1.0, 2.0)]


def fill_holes(p: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> every basin not connected to the image border raised to its lowest rim."""
    border = torch.ones_like(p, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    s = torch.where(border, p, p.amax(dim=(2, 3), keepdim=True).expand_as(p))
    while True:
        nxt = torch.maximum(-F.max_pool2d(-s, 3, 1, 1), p)
        if torch.equal(nxt, s):
            return s
        s = nxt


def sub_labels(t, keep: np.ndarray) -> np.ndarray:
    """The scan's BraTS sub-region labels (S, H0, W0) on the labelled slices, in the orientation of its tumour mask."""
    seg = np.asanyarray(nib.load(t.record.labels_path).dataobj)[:, :, t.prep.slice_index[keep]].transpose(2, 0, 1)
    gt = t.prep.labels[keep]
    for view in (seg, seg.transpose(0, 2, 1)):
        for flip in ((), (1,), (2,), (1, 2)):
            v = np.flip(view, flip) if flip else view
            if v.shape == gt.shape and np.array_equal(v > 0, gt):
                return np.ascontiguousarray(v)
    raise SystemExit(f"{t.record.subject}: no in-plane orientation of the label file matches its tumour mask")


def contrast(flair: np.ndarray, fg: np.ndarray, k: int) -> np.ndarray:
    """(S, H, W) FLAIR minus its k x k mean over the foreground."""
    f = torch.from_numpy(np.where(fg, flair, 0).astype(np.float32))[:, None]
    w = box_mean(torch.from_numpy(fg.astype(np.float32))[:, None], k)
    return (f - box_mean(f, k) / w.clamp_min(1e-3))[:, 0].numpy()


def slice_pixels(t, scan_maps: np.ndarray) -> list[dict]:
    """One test scan and the harness's maps of its labelled slices (model resolution) -> per labelled slice: map,
    FLAIR, signed distance to the label boundary, over the region."""
    p, keep = t.prep, np.flatnonzero(t.labels >= 0)
    maps = to_native(scan_maps, p.native_shape)
    lo = maps.min(axis=(1, 2), keepdims=True)
    fg = to_native(p.foreground[keep, 0].astype(np.float32), p.native_shape) > 0.5
    filled = fill_holes(torch.from_numpy(np.where(fg, maps, lo))[:, None])[:, 0].numpy()
    flair = to_native(p.images[keep, 0], p.native_shape)
    local = {k: contrast(flair, fg, k) for k in {k for k, _ in CONTRAST}}
    sub = sub_labels(t, keep)
    out = []
    for i, gt in enumerate(p.labels[keep]):
        r = fg[i] | gt
        dist = ndimage.distance_transform_edt(gt) - ndimage.distance_transform_edt(~gt) if gt.any() else None
        out.append(
            dict(
                map=maps[i][r],
                filled=filled[i][r],
                flair=flair[i][r],
                y=gt[r],
                sub=sub[i][r],
                **{f"c{k}": local[k][i][r] for k in local},
                d=np.full(r.sum(), -1e3) if dist is None else dist[r],
                tumour_slice=t.labels[keep][i] == 1,
            )
        )
    return out


def errors(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, its share of the mis-ordered (tumour, normal) pairs; each side sums to 1 - AUROC (ties: half)."""
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    n = pos.size * neg.size
    above = neg.size - (np.searchsorted(neg, s[y], "left") + np.searchsorted(neg, s[y], "right")) / 2
    below = (np.searchsorted(pos, s[~y], "left") + np.searchsorted(pos, s[~y], "right")) / 2
    return above / n, below / n


def fold_args(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, type=Path, help="the --models folder of the bench quality run")
    ap.add_argument("--fold", required=True, type=int, choices=(1, 2, 3))
    ap.add_argument("--data", default="../shared/data/brats2015")
    return ap.parse_args()


def fold_scores(args: argparse.Namespace) -> tuple:
    """The outer fold's test patients scored by its kept model -> (test subjects, Fold, the harness's scores: the
    maps of every labelled slice, scan by scan, in fold.test order)."""
    records = discover(args.data)
    cfg, _ = config_for(records, None, {"seed": 0})
    test = make_folds(records, 3, 0)[args.fold - 1]
    fcfg = with_target(cfg, [r for r in records if r.subject not in test and r.label in (None, 0)])
    fold = build_fold(records, test, fcfg, args.fold - 1)
    scorer = fit_method("patchrank", fold, fcfg, args.models, reuse=True)
    return test, fold, evaluate_scorer(scorer, fold.test)


def main() -> None:
    args = fold_args(__doc__)
    test, fold, data = fold_scores(args)
    print(f"fold {args.fold}, test {test}: harness pixel AUROC {report(data)['pixel_auroc']:.4f}")
    cols: dict[str, list] = {}
    start = 0
    for t in fold.test:
        n = int((t.labels >= 0).sum())
        if not n:  # the harness skips scans without labelled slices
            continue
        rows = slice_pixels(t, data.maps[start : start + n])
        start += n
        c = {k: np.concatenate([r[k] for r in rows]) for k in rows[0] if k != "tumour_slice"}
        c["tumour_slice"] = np.concatenate([np.full(r["y"].size, r["tumour_slice"]) for r in rows])
        c["patient"] = np.full(c["y"].size, t.record.subject)
        y = c["y"]
        print(
            f"{t.record.subject}: {y.size} pixels, {y.sum()} tumour; AUROC map {roc_auc_score(y, c['map']):.4f}, "
            f"FLAIR {roc_auc_score(y, c['flair']):.4f}, map hole-filled {roc_auc_score(y, c['filled']):.4f}"
        )
        normal = c["sub"] == 0
        print(
            f"  by sub-region vs its normal pixels (FLAIR {c['flair'][normal].mean():+.2f}): "
            + ", ".join(
                f"label {lab} ({(c['sub'] == lab).sum()} px, FLAIR {c['flair'][c['sub'] == lab].mean():+.2f}) "
                f"{roc_auc_score(c['sub'][normal | (c['sub'] == lab)] > 0, c['map'][normal | (c['sub'] == lab)]):.4f}"
                for lab in (1, 2, 3, 4)
                if (c["sub"] == lab).any()
            )
        )
        for k, v in c.items():
            cols.setdefault(k, []).append(v)
    c = {k: np.concatenate(v) for k, v in cols.items()}
    y, s, d = c["y"], c["map"], c["d"]
    print(
        f"fold: AUROC map {roc_auc_score(y, s):.4f}, FLAIR {roc_auc_score(y, c['flair']):.4f}, "
        f"map hole-filled {roc_auc_score(y, c['filled']):.4f}"
    )
    keep = c["sub"] != 1
    print(f"  every patient's label 1 (necrosis) left out: map {roc_auc_score(y[keep], s[keep]):.4f}")
    print(
        "  map + lam x FLAIR local contrast (k px): "
        + ", ".join(f"k {k} lam {lam} {roc_auc_score(y, s + lam * c[f'c{k}']):.4f}" for k, lam in CONTRAST)
    )
    for band in (1, 2, 3, 5, 8):
        out, near = np.abs(d) > band, np.abs(d) <= band
        print(
            f"  pixels within {band} px of the label boundary ({near.mean():.3f} of all) left out: map "
            f"{roc_auc_score(y[out], s[out]):.4f}, FLAIR {roc_auc_score(y[out], c['flair'][out]):.4f}; "
            f"inside that band alone: map {roc_auc_score(y[near], s[near]):.4f}, "
            f"FLAIR {roc_auc_score(y[near], c['flair'][near]):.4f}"
        )
    pos, neg = errors(y, s)
    print(f"  1 - AUROC {pos.sum():.5f}, charged to")
    dp, dn, ts = d[y], d[~y], c["tumour_slice"][~y]
    for name, part in (("tumour rim (<= 3 px inside)", pos[dp <= 3]), ("tumour interior", pos[dp > 3])):
        print(f"    {name:<40} {part.sum():.5f}")
    for name, sel in (
        ("normal, <= 4 px outside the tumour", ts & (dn >= -4)),
        ("normal, 4-10 px outside", ts & (dn < -4) & (dn >= -10)),
        ("normal, > 10 px away in a tumour slice", ts & (dn < -10)),
        ("normal slices", ~ts),
    ):
        print(f"    {name:<40} {neg[sel].sum():.5f}")
    for p in np.unique(c["patient"]):
        tumour_side, normal_side = pos[c["patient"][y] == p].sum(), neg[c["patient"][~y] == p].sum()
        print(f"    {p}: tumour side {tumour_side:.5f}, normal side {normal_side:.5f}")


if __name__ == "__main__":
    main()
