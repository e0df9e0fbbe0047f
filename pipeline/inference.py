"""The fast inference path: the same scoring function over networks prepared once at load time.

`prepare_for_inference(model)` exports the reconstructor (forward and encoder) and the discriminator to ONNX
in memory (pipeline.onnx_model) and puts ONNX Runtime sessions in their place, behind the same call
signatures, so `model.scoring.score_members` (the one scoring function) runs unchanged over them. Measured
on the 2-core development machine against the eager PyTorch networks, channels_last and torch.compile
(docs/decisions.md, "Inference"): faster than all of them, and closer to the eager scores than channels_last.
`patchrank score`, evaluation, the Python API and the Serve scorer load models through `load_for_inference`.

Threads: one scoring process uses the CPUs it was given (`inference_threads`): a Serve replica its num_cpus,
a command every CPU it may run on; ONNX Runtime's sessions and torch (the scoring around the networks) both.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from patchrank.model.checkpoint import LoadedModel, load_checkpoint, validate_loaded
from patchrank.model.scoring import Member

# The environment of the Ray processes that score (a local Ray started by `screen`/`serve`/`bench serve`
# inherits it; on a cluster `ray start` runs with it, ray_cluster.yaml): OpenMP threads waiting for work
# sleep instead of spinning (docs/decisions.md, "Inference": end to end 0.69-0.81x -> 0.86-0.91x of the bare
# forward on 2 cores).
SCORING_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def inference_threads(cpus: float | None = None) -> int:
    """Threads for one scoring process: the CPUs it was given (floored, at least 1), else every CPU this
    process may run on. Replicas sharing a node thus never ask for more threads than it has cores."""
    if cpus is not None:
        return max(1, int(cpus))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def process_memory() -> dict:
    """This process: {"pid", "rss_mib" (now), "peak_rss_mib" (high-water mark)} from /proc (Linux)."""
    mem = {"pid": os.getpid(), "rss_mib": None, "peak_rss_mib": None}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    mem["rss_mib" if key == "VmRSS" else "peak_rss_mib"] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return mem


def set_inference_threads(cpus: float | None = None) -> int:
    """torch.set_num_threads(inference_threads(cpus)); -> the thread count set."""
    n = inference_threads(cpus)
    torch.set_num_threads(n)
    return n


def prepare_for_inference(model: LoadedModel, threads: int | None = None) -> LoadedModel:
    """-> the model with its networks (every ensemble member's) on ONNX Runtime (CPU; threads per session,
    default torch's thread count). Models on a GPU are returned as they are."""
    from patchrank.pipeline.onnx_model import export_graphs, onnx_networks

    if is_prepared(model) or next(model.recon.parameters()).device.type != "cpu":
        return model
    size, threads = int(model.preprocess["image_size"]), threads or torch.get_num_threads()
    fast = []
    for m in model.members:
        graphs = export_graphs(m.recon, m.disc, size)
        recon, disc = onnx_networks(graphs, m.recon.in_channels, m.recon.depth, m.disc.patch_size, threads)
        fast.append(Member(recon, disc, m.stats))
    return replace(model, recon=fast[0].recon, disc=fast[0].disc, extra=tuple(fast[1:]))


def is_prepared(model: LoadedModel) -> bool:
    from patchrank.pipeline.onnx_model import OnnxReconstructor

    return isinstance(model.recon, OnnxReconstructor)


def load_for_inference(
    path, map_location: str | torch.device = "cpu", *, fast: bool = True, threads: int | None = None
) -> LoadedModel:
    """model.checkpoint.load_checkpoint, then (fast=True) `prepare_for_inference`; the load-time test forward
    runs on the networks that will score. A folder written by `patchrank export --onnx` loads as its ONNX
    Runtime networks (pipeline.onnx_model.load_onnx)."""
    from pathlib import Path

    if Path(path).is_dir() and (Path(path) / "patchrank.json").is_file():
        from patchrank.pipeline.onnx_model import load_onnx

        if torch.device(map_location).type != "cpu":
            raise ValueError(f"{path} is an ONNX export: it scores on the CPU (ONNX Runtime); give the checkpoint")
        model = load_onnx(path, threads=threads)
        validate_loaded(model, path)
        return model
    model = load_checkpoint(path, map_location=map_location, validate=False)
    if fast:
        model = prepare_for_inference(model, threads)
    validate_loaded(model, path)
    return model
