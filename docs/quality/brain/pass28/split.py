"""Pass 28: is brain pixel AUROC lost inside slices or between them? One outer fold of the registered seed-0 split.

Scores the fold's test patients with the fold model kept by `patchrank bench quality --models DIR` (pass 23's path:
the fold's pixel AUROC matches quality.json), then splits 1 - AUROC (mis-ordered (tumour, normal) pixel pairs over
all pairs) into pairs from the same slice, from other slices of the same patient, and from other patients. Pairs
across slices are what a per-slice rescaling of the map could fix; pairs inside a slice are not.

    python docs/quality/brain/pass28/split.py --models DIR --fold N   (N = 1, 2, 3)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pass23"))
from errors import fold_args, fold_scores, slice_pixels  # noqa: E402


def misordered(pos: np.ndarray, neg: np.ndarray) -> float:
    """Number of (pos, neg) pairs with neg above pos (ties: half)."""
    neg = np.sort(neg)
    return float((neg.size - (np.searchsorted(neg, pos, "left") + np.searchsorted(neg, pos, "right")) / 2).sum())


def main() -> None:
    args = fold_args(__doc__)
    _, fold, data = fold_scores(args)
    slices, start = [], 0  # (patient, map, label, signed distance to the label boundary) per labelled slice
    for t in fold.test:
        n = int((t.labels >= 0).sum())
        if not n:
            continue
        for r in slice_pixels(t, data.maps[start : start + n]):
            slices.append((t.record.subject, r["map"], r["y"], r["d"]))
        start += n
    s = np.concatenate([m for _, m, _, _ in slices])
    y = np.concatenate([v for _, _, v, _ in slices])
    total = y.sum() * (~y).sum()
    tumour = [(p, m, v) for p, m, v, _ in slices if v.any()]
    same_slice = sum(misordered(m[v], m[~v]) for _, m, v in tumour)
    pairs = sum(v.sum() * (~v).sum() for _, _, v in tumour)
    patients = sorted({p for p, _, _, _ in slices})
    own = {
        p: (
            np.concatenate([m for q, m, _, _ in slices if q == p]),
            np.concatenate([v for q, _, v, _ in slices if q == p]),
        )
        for p in patients
    }
    same_patient = sum(misordered(m[v], m[~v]) for m, v in own.values())
    print(f"fold {args.fold}: pixel AUROC {roc_auc_score(y, s):.5f}, 1 - AUROC {1 - roc_auc_score(y, s):.5f}")
    print(
        f"  same slice           {same_slice / total:.5f} (AUROC over the pairs inside a slice: "
        f"{1 - same_slice / pairs:.5f}, {pairs / total:.4f} of all pairs)"
    )
    print(f"  same patient, other slices {(same_patient - same_slice) / total:.5f}")
    print(f"  other patients       {(misordered(s[y], s[~y]) - same_patient) / total:.5f}")
    # oracle (reads the labels): each tumour slice's map shifted so that its value on the label boundary (median
    # over pixels within 1 px of it) is the same in every slice; normal slices shifted by the mean of those levels
    levels = {i: np.median(m[np.abs(d) <= 1]) for i, (_, m, v, d) in enumerate(slices) if v.any()}
    mean_level = float(np.mean(list(levels.values())))
    shifted = np.concatenate([m - levels.get(i, mean_level) for i, (_, m, _, _) in enumerate(slices)])
    print(
        f"  oracle, boundary level equalised per tumour slice: {roc_auc_score(y, shifted):.5f} "
        f"(levels {np.percentile(list(levels.values()), [10, 50, 90]).round(2)} at the 10/50/90th percentile)"
    )
    for p in patients:
        m, v = own[p]
        n = v.sum() * (~v).sum()
        inside = sum(misordered(mm[vv], mm[~vv]) for q, mm, vv in tumour if q == p)
        print(
            f"  {p}: own AUROC {roc_auc_score(v, m):.5f}; within its slices {inside / n:.5f} of its pairs, "
            f"across its slices {(misordered(m[v], m[~v]) - inside) / n:.5f}"
        )


if __name__ == "__main__":
    main()
