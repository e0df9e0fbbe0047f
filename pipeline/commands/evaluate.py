"""`patchrank evaluate`: score a labelled dataset with a checkpoint and report metrics + figures."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from patchrank.pipeline.commands.options import number, output_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a labelled dataset and write report.json, roc.png and montage.png",
        description="Evaluate a checkpoint on labelled data (BraTS-style folder with _seg masks, ISIC-style "
        "folder with labels.csv, or a manifest CSV). Slice inclusion and labels follow the protocol in "
        "docs/experiments.md. Writes OUT/report.json, OUT/roc.png, OUT/montage.png.",
    )
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint written by `patchrank train` (path or s3://bucket/key)"
    )
    p.add_argument("--data", required=True, help="dataset folder or manifest CSV")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--modality", default="flair", help="MRI modality for BraTS-style folders (default flair)")
    p.add_argument("--subjects", help="comma-separated subjects to evaluate (default: all)")
    p.add_argument("--top", type=number(), default=8, help="slices in the montage (default 8)")
    p.add_argument("--gpu", action="store_true", help="score on the CUDA device")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--fpr",
        type=number(float, 0, 1, open_high=True),
        default=0.05,
        help="fit the scan-score threshold at this false-positive rate on normal scans and store it beside the "
        "checkpoint (<checkpoint>.operating_point.json; default 0.05; 0 = do not fit); not fitted when the data "
        "has no normal scans or includes the checkpoint's training scans",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.pipeline.data.datasets import DatasetError
    from patchrank.pipeline.data.discover import discover
    from patchrank.pipeline.data.preprocess import as_config
    from patchrank.pipeline.data.storage import local_checkpoint
    from patchrank.pipeline.evaluation.harness import PatchRankScorer, evaluate_scorer, load_test_scans, report
    from patchrank.pipeline.evaluation.plots import montage_png, roc_png
    from patchrank.pipeline.training.local import pick_device

    output_folder(args.out, "--out")
    t0 = time.perf_counter()
    device = pick_device(args.gpu).type  # a clear error for --gpu without CUDA
    model = load_checkpoint(local_checkpoint(args.checkpoint), map_location=device)  # s3://: fetched once
    cfg = as_config(model.preprocess)
    records = discover(args.data, modality=args.modality)
    if args.subjects:
        wanted = set(args.subjects.split(","))
        records = [r for r in records if r.subject in wanted]
        if not records:
            raise DatasetError(f"none of the subjects {sorted(wanted)} are in {args.data}")
    bar = None if args.quiet else (lambda it: tqdm(it, desc="loading", unit="scan", leave=False, disable=None))
    scans = load_test_scans(records, cfg, progress=bar)
    data = evaluate_scorer(PatchRankScorer(model, device=device), scans)
    rep = report(data)
    if not rep["n_normal"] or not rep["n_abnormal"]:
        raise DatasetError(
            f"evaluation needs normal and abnormal examples; {args.data} gave "
            f"{rep['n_normal']} normal and {rep['n_abnormal']} abnormal (labels from _seg masks, labels.csv or "
            f"a manifest)"
        )
    rep.update(
        checkpoint=str(args.checkpoint),
        model_version=model.model_version,
        data=str(args.data),
        n_scans=len(scans),
        seconds=round(time.perf_counter() - t0, 2),
    )
    seen = seen_scans(scans, model.meta)
    rep["n_scans_seen_in_training"] = None if seen is None else len(seen)
    if seen is None:
        print(
            "note: this checkpoint records no training slices (trained before they were recorded): "
            "cannot check whether these scans were used to train it"
        )
    elif seen:
        print(
            f"WARNING: {len(seen)} of {len(scans)} scans in {args.data} were used to train this checkpoint "
            "(its training or score-statistics slices): the metrics below overstate what it does on new scans"
        )
    if args.fpr > 0:
        fit_operating_point(args.checkpoint, model.model_version, data, rep, args.fpr, seen=bool(seen))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    roc_png(data, out / "roc.png", title=f"PatchRank {model.model_version[:8]}")
    montage_png(data, out / "montage.png", top=args.top)
    for k, v in rep.items():
        if isinstance(v, float):
            print(f"{k:>20}: {v:.4f}")
        elif isinstance(v, int):
            print(f"{k:>20}: {v}")
    print(f"wrote {out / 'report.json'}, {out / 'roc.png'}, {out / 'montage.png'}")
    return 0


def seen_scans(scans: list, meta: dict) -> list | None:
    """The evaluated scans with a slice among the checkpoint's training / score-statistics slices
    (meta["seen_slices"]); None for checkpoints that record none. The digests are of preprocessed
    pixels: the same scan preprocessed with other library versions may not be recognised."""
    from patchrank.pipeline.data.datasets import slice_digests

    if "seen_slices" not in meta:
        return None
    seen = set(meta["seen_slices"])
    return [s for s in scans if not seen.isdisjoint(slice_digests(s.prep.images))]


def fit_operating_point(checkpoint: str, model_version: str, data, rep: dict, fpr: float, *, seen: bool) -> None:
    """Fit the scan-score threshold at `fpr` on the normal scans and store it beside the checkpoint,
    or say why not: no scan-level scores, no normal scans, or scans the model was trained on."""
    from patchrank.pipeline.evaluation import operating_point

    why = (
        "these scans include training scans (a threshold fitted on them flags too much on new ones)"
        if seen
        else "no scan-level scores"
        if "scan_scores" not in data.extra
        else "no normal scans among these (the threshold is fitted on normal scans' scores)"
        if not rep.get("n_normal_scans")
        else None
    )
    if why:
        print(f"operating point not fitted: {why}; {operating_point.sidecar(checkpoint)} left as it was")
        return
    point = operating_point.fit_threshold(data.extra["scan_scores"], data.extra["scan_labels"], fpr)
    rep["operating_point"] = point
    where = operating_point.save(checkpoint, model_version, point)
    tpr = "" if point.get("tpr") is None else f" and {point['tpr']:.0%} of the abnormal ones (TPR {point['tpr']:.3f})"
    print(
        f"operating point: threshold {point['threshold']:.4f} flags {point['fpr']:.0%} of the normal scans "
        f"(FPR {point['fpr']:.3f}){tpr}; stored in {where}"
    )
    if point.get("tpr") is not None and point["tpr"] < 0.5:
        print(f"WARNING: at this operating point only {point['tpr']:.0%} of the abnormal scans are flagged")
