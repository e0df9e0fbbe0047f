"""`patchrank export`: write a checkpoint's networks as ONNX graphs with their settings beside them."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint's networks to ONNX (reconstructor, encoder, discriminator + settings JSON)",
        description="Writes OUT/reconstructor.onnx, OUT/encoder.onnx, OUT/discriminator.onnx, OUT/patchrank.json "
        "(model version, preprocessing and scoring settings) and OUT/score_stats.npz. Score with them through "
        "ONNX Runtime: `patchrank score SCANS --checkpoint OUT`, or patchrank.api.load(OUT) in Python.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint written by `patchrank train`")
    p.add_argument("--onnx", required=True, metavar="OUT", help="output folder (created)")
    p.add_argument(
        "--no-check", action="store_true", help="skip the check that a few slices score the same in PyTorch and ONNX"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    import torch

    from patchrank.model.checkpoint import load_checkpoint
    from patchrank.model.scoring import score_members
    from patchrank.pipeline.evaluation import operating_point
    from patchrank.pipeline.onnx_model import export_onnx, load_onnx

    model = load_checkpoint(args.checkpoint)
    out = export_onnx(model, args.onnx)
    print(f"exported model {model.model_version} to {out}")
    point = operating_point.sidecar(args.checkpoint)
    if Path(point).is_file():  # `score --checkpoint OUT` flags with the same threshold
        shutil.copy(point, operating_point.sidecar(out))
        print(f"operating point copied to {operating_point.sidecar(out)}")
    if not args.no_check:  # the same random slices through torch and ONNX Runtime
        size, c = int(model.preprocess["image_size"]), model.recon.in_channels
        x = (torch.rand(4, c, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1).clamp(-0.99, 1)
        ort = load_onnx(out)
        got = [score_members(m.members, x, cfg=m.scoring, maps=False) for m in (model, ort)]
        diff = float((got[0].patch_scores - got[1].patch_scores).abs().max())
        print(f"check: max |patch score difference| torch vs ONNX Runtime on 4 random slices = {diff:.2e} z")
        if diff > 1e-3:
            raise ValueError(f"ONNX export does not reproduce the scores (max difference {diff:.2e} z)")
    return 0
