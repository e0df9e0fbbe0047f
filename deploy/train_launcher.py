"""Launch `patchrank train --workers N`: a Ray Train TorchTrainer running
actors.train_worker.train_loop_per_worker on N CPU or GPU workers.

Data: the driver builds the in-memory SliceSets once (pipeline.training.local.prepare_data)
and `ray.put`s them; workers `ray.get` the object ref (numpy arrays are zero-copy from the
object store on the same node), instead of shipping arrays inside train_loop_config.

Checkpoints: rank 0 reports one directory per epoch (model.pt + curve.csv) into
RunConfig(storage_path=STORAGE, name=run-<UTC time>). A worker crash restarts the worker
group from the latest reported checkpoint (FailureConfig(max_failures)). When the run
ends, the final model.pt is copied (atomically) to --out and its curve to <out>.curve.csv,
so --out has exactly the format of in-process training.

Resume (--resume): start from the newest of --out and every run's reported model.pt
under STORAGE (a killed run leaves its per-epoch checkpoints there), passed to the
workers through the object store, so any worker on any node can read it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from patchrank.pipeline.data.datasets import SliceSet
from patchrank.pipeline.settings import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LaunchResult:
    model_version: str
    out: Path
    metrics: dict  # rank 0's metrics of the last epoch
    run_path: str  # the Ray Train run directory (all reported checkpoints)


def default_storage(out: str | Path) -> Path:
    return Path(out).resolve().with_suffix(".ray")


def newest_resumable(out: Path, storage: str) -> Path | None:
    """The most recently written checkpoint among --out and the runs under a local STORAGE."""
    cands = [out] if out.is_file() else []
    if "://" not in storage and Path(storage).is_dir():
        cands += list(Path(storage).glob("run-*/checkpoint_*/model.pt"))
    return max(cands, key=lambda p: p.stat().st_mtime, default=None)


def _connect(address: str | None):
    """-> True if this call started Ray (and must shut it down). Ray's and Ray Train's routine INFO
    lines stay off the output (they show with -v); the workers' progress lines still print,
    without colour codes when stdout is not a terminal."""
    import ray

    from patchrank.pipeline.service.screening import quiet_ray_logs

    if ray.is_initialized():
        return False
    quiet_ray_logs()
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    kw = {"log_to_driver": True, "logging_level": logging.INFO if _debug() else logging.WARNING}
    if address:
        ray.init(address=address, **kw)
    else:  # one machine, nothing to be preempted (its watcher only logs a Ray-internal error line)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}}, **kw)
    return True


def _debug() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


def _check_resources(workers: int, gpu: bool, cpus_per_worker: float, local: bool) -> None:
    import ray

    have = ray.cluster_resources()
    need = {"CPU": workers * cpus_per_worker, **({"GPU": workers} if gpu else {})}
    short = {k: (v, have.get(k, 0)) for k, v in need.items() if have.get(k, 0) < v}
    if short and local:
        what = ", ".join(f"{k}: need {v:g}, have {h:g}" for k, (v, h) in short.items())
        raise ValueError(
            f"not enough resources for {workers} worker(s) on this machine ({what}); "
            "lower --workers/--cpus-per-worker or pass --address of a cluster"
        )
    if short:
        print(f"note: cluster has {dict(have)} now; waiting for the autoscaler to add {need}")


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def launch(
    train: SliceSet,
    val: SliceSet,
    cfg: TrainConfig,
    out: str | Path,
    *,
    workers: int,
    gpu: bool = False,
    address: str | None = None,
    resume: bool = False,
    storage: str | None = None,
    max_failures: int = 2,
    cpus_per_worker: float = 1.0,
    labelled: SliceSet | None = None,
    progress_s: float = 10.0,
    fail_after_epoch: int | None = None,
) -> LaunchResult:
    """Run TorchTrainer with `workers` workers; write the final checkpoint to `out`.

    fail_after_epoch: fault injection for tests (the last rank raises once after that epoch).
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from patchrank.actors.train_worker import CKPT_FILE, CURVE_FILE, train_loop_per_worker
    from patchrank.model.checkpoint import load_checkpoint

    if workers < 1:
        raise ValueError("launch() needs workers >= 1 (workers=0 is pipeline.training.local.fit_local)")
    out = Path(out).resolve()
    storage = str(storage or default_storage(out))
    started = _connect(address)
    try:
        _check_resources(workers, gpu, cpus_per_worker, local=started and not address)
        resume_ref, src = None, None
        if resume:
            src = newest_resumable(out, storage)
            if src is None:
                print(f"nothing to resume at {out} or under {storage}; starting from scratch")
            else:
                ck = load_checkpoint(src)  # validate before shipping it to the workers
                if not ck.train_state:
                    raise ValueError(f"{src} has no training state to resume from")
                curve = (
                    src.with_name(CURVE_FILE) if src.name == CKPT_FILE and src != out else out.with_suffix(".curve.csv")
                )
                print(f"resuming from {src} (after epoch {int(ck.train_state['epoch']) + 1})")
                resume_ref = ray.put({"model": src.read_bytes(), "curve": curve.read_text() if curve.is_file() else ""})
        config = {
            "cfg": cfg.model_dump_json(),
            "data": ray.put((train, val, labelled)),
            "threads": max(1, int(cpus_per_worker)),
            "amp": gpu,
            "resume": resume_ref,
            "progress_s": progress_s,
            "fail_after_epoch": fail_after_epoch,
            "debug": _debug(),
        }
        name = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": cpus_per_worker}
            ),
            run_config=RunConfig(
                name=name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                logging_config=LoggingConfig(log_level="INFO" if _debug() else "WARNING"),
            ),
        )
        print(f"Ray Train: {workers} {'GPU' if gpu else 'CPU'} worker(s), run {storage}/{name}")
        result = trainer.fit()
        if result.checkpoint is None:  # nothing left to train: --resume of a finished run
            if src is None:
                raise RuntimeError(f"Ray Train run {result.path} reported no checkpoint")
            from patchrank.pipeline.training.state import critic_epochs, total_epochs

            print(
                f"{src} has already trained {total_epochs(cfg)} epoch(s) ({cfg.epochs} adversarial + "
                f"{critic_epochs(cfg)} critic); raise --epochs to train more"
            )
            if src != out:
                _copy_atomic(src, out)
            return LaunchResult(load_checkpoint(out).model_version, out, {}, str(result.path))
        with result.checkpoint.as_directory() as d:
            _copy_atomic(Path(d) / CKPT_FILE, out)
            if (Path(d) / CURVE_FILE).is_file():
                _copy_atomic(Path(d) / CURVE_FILE, out.with_suffix(".curve.csv"))
        version = load_checkpoint(out).model_version
        return LaunchResult(version, out, dict(result.metrics or {}), str(result.path))
    finally:
        if started:
            ray.shutdown()
