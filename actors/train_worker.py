"""The Ray Train per-worker loop: `pipeline.training.loop.fit_loop` on one rank of a TorchTrainer.

Everything that is training logic lives in pipeline/training.py (fit_loop -> run_epoch ->
model.train_step.gan_step); this module only plugs Ray Train in:
  * rank / world size / device from `ray.train`, networks wrapped by
    `ray.train.torch.prepare_model` (DDP when world > 1), data sharded by rank,
  * epoch metrics all-reduced over ranks (mean losses, summed images / slowest rank's time),
  * rank 0 writes the checkpoint file (same format as local training) plus the learning
    curve into a directory and reports it with `ray.train.report` every epoch; the other
    ranks report metrics only (report is a barrier: every rank calls it once per epoch),
  * start state: `ray.train.get_checkpoint()` (restart after a worker failure) or else the
    checkpoint bytes the launcher put in the object store for `--resume`.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from patchrank.model.checkpoint import load_checkpoint
from patchrank.pipeline.settings import TrainConfig
from patchrank.pipeline.training.loop import Place, fit_loop
from patchrank.pipeline.training.report import Reporter, append_curve_row, epoch_line

CKPT_FILE = "model.pt"
CURVE_FILE = "curve.csv"


def _reduce(m: dict, *, device: torch.device, world: int) -> dict:
    """Per-rank epoch metrics -> mean losses, total images and CPU seconds, slowest rank's
    seconds, the group's images/s and images per CPU-second."""
    if world == 1:
        return m
    import torch.distributed as dist

    keys = sorted(k for k in m if k.startswith("loss"))
    sums = torch.tensor([m[k] for k in keys] + [m["images"], m["cpu_seconds"]], dtype=torch.float64, device=device)
    secs = torch.tensor([m["seconds"]], dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    out = {k: float(v) / world for k, v in zip(keys, sums[:-2].tolist())}
    images, cpu, seconds = float(sums[-2]), float(sums[-1]), float(secs[0])
    out.update(
        images=images,
        seconds=seconds,
        images_per_s=images / max(seconds, 1e-9),
        cpu_seconds=cpu,
        images_per_cpu_s=images / max(cpu, 1e-9),
    )
    return out


def _gather(state: dict, *, device: torch.device, world: int) -> list[dict]:
    """A dict of same-shape tensors per rank (the mask RNG state) -> one dict per rank, on CPU.
    Tensor all_gather on the training device works for gloo and NCCL alike (no pickling)."""
    if world == 1:
        return [state]
    import torch.distributed as dist

    out: list[dict] = [{} for _ in range(world)]
    for key, t in state.items():
        parts = [torch.empty_like(t, device=device) for _ in range(world)]
        dist.all_gather(parts, t.to(device))
        for r, part in enumerate(parts):
            out[r][key] = part.cpu()
    return out


class RayReporter(Reporter):
    """Rank 0: progress lines, checkpoint directory + ray.train.report. Other ranks: report only."""

    def __init__(
        self,
        rank: int,
        world: int,
        cfg: TrainConfig,
        curve: str,
        *,
        progress_s: float,
        fail_after_epoch: int | None,
        attempt: dict,
    ) -> None:
        self.rank, self.world, self.cfg = rank, world, cfg
        self.attempt = (
            attempt  # {"epochs_before": epochs done when this worker group started, "restarted": after a failure}
        )
        self.curve = curve  # CSV text of the epochs before this run
        self.progress_s = progress_s
        self.fail_after_epoch = fail_after_epoch
        self.epoch, self.n_steps, self.done, self.t0, self.last = 0, 0, 0, 0.0, 0.0

    def start_epoch(self, epoch: int, n_steps: int) -> None:
        self.epoch, self.n_steps, self.done = epoch, n_steps, 0
        self.t0 = self.last = time.perf_counter()

    def step(self, m: dict) -> None:
        self.done += 1
        now = time.perf_counter()
        if self.rank == 0 and self.progress_s > 0 and now - self.last >= self.progress_s:
            self.last = now
            rate = self.done * self.cfg.batch_size * self.world / (now - self.t0)
            loss = f"loss_rec {m['loss_rec']:.4f}" if "loss_rec" in m else f"critic loss_d {m['loss_d']:.4f}"
            _say(
                f"epoch {self.epoch + 1}/{self.total}  step {self.done}/{self.n_steps}  "
                f"{loss}  ~{rate:.1f} img/s (all workers)"
            )

    def end_epoch(self, epoch: int, row: dict, save) -> None:
        import ray.train

        name = f"checkpoint_epoch_{epoch + 1:04d}"
        metrics = {**row, **self.attempt}
        if save is None:
            ray.train.report(metrics, checkpoint_dir_name=name)
        else:
            self.curve = append_curve_row(self.curve, row)
            tmp = Path(tempfile.mkdtemp(prefix="patchrank-ckpt-"))
            try:
                save(tmp / CKPT_FILE)
                (tmp / CURVE_FILE).write_text(self.curve)
                _say(epoch_line(row, self.total))
                ray.train.report(
                    metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)), checkpoint_dir_name=name
                )
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if self.fail_after_epoch == epoch + 1:
            # Every rank waits until rank 0's report (with the checkpoint) is queued; the failing
            # rank then waits out a few controller polls (every 2 s), so the controller has
            # registered that checkpoint before it sees the injected failure.
            if self.world > 1:
                import torch.distributed as dist

                dist.barrier()
            if self.rank == self.world - 1:
                time.sleep(6.0)
                raise RuntimeError(
                    f"injected failure of rank {self.rank} after epoch {epoch + 1} (fault-tolerance test)"
                )


def _say(line: str) -> None:
    """One progress line to the worker's stdout (Ray forwards it to the driver). Not print():
    Ray Train patches print() in workers to also log, which shows every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _start_state(config: dict, scratch: Path):
    """-> (LoadedModel or None, curve CSV text, resumed_from_ray_checkpoint)."""
    import ray
    import ray.train

    ck = ray.train.get_checkpoint()
    if ck is not None:
        with ck.as_directory() as d:
            shutil.copy(Path(d) / CKPT_FILE, scratch / CKPT_FILE)
            curve = (Path(d) / CURVE_FILE).read_text() if (Path(d) / CURVE_FILE).exists() else ""
        return load_checkpoint(scratch / CKPT_FILE), curve, True
    if config.get("resume") is not None:
        blob = ray.get(config["resume"])
        (scratch / CKPT_FILE).write_bytes(blob["model"])
        return load_checkpoint(scratch / CKPT_FILE), blob.get("curve", ""), False
    return None, "", False


def train_loop_per_worker(config: dict) -> None:
    """TorchTrainer entry point. config: cfg (TrainConfig JSON), data (ObjectRef of
    (train, val, labelled) SliceSets), threads, amp, resume (ObjectRef or None),
    progress_s, fail_after_epoch (fault injection for tests, None normally), debug (Ray Train's
    per-report INFO lines printed)."""
    import ray
    import ray.train
    from ray.train.torch import get_device, prepare_model

    if not config.get("debug"):  # "Reporting training result N: <every metric>" after each epoch (Ray Train v2)
        try:
            from ray.train.v2._internal.execution import context as v2_context
        except ImportError:
            pass
        else:
            logging.getLogger(v2_context.__file__).setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    cfg = TrainConfig.model_validate_json(config["cfg"])
    train, val, labelled = ray.get(config["data"])
    device = get_device()
    with tempfile.TemporaryDirectory(prefix="patchrank-train-") as scratch:
        state, curve, restarted = _start_state(config, Path(scratch))
    if rank == 0 and state is not None:
        src = "the run's latest checkpoint (restart)" if restarted else "the --resume checkpoint"
        _say(f"resuming from {src} after epoch {int(state.train_state['epoch']) + 1}")
    # Fault injection happens only in an attempt that did not itself restart from a checkpoint.
    fail = config.get("fail_after_epoch") if not restarted else None
    attempt = {
        "epochs_before": int(state.train_state["epoch"]) + 1 if state is not None else 0,
        "restarted": int(restarted),
    }
    reporter = RayReporter(
        rank,
        world,
        cfg,
        curve,
        progress_s=float(config.get("progress_s", 10.0)),
        fail_after_epoch=fail,
        attempt=attempt,
    )
    place = Place(
        rank=rank,
        world=world,
        device=device,
        amp=bool(config.get("amp")) and device.type == "cuda",
        wrap=prepare_model,
        reduce=partial(_reduce, device=device, world=world),
        gather=partial(_gather, device=device, world=world),
    )
    fit_loop(train, val, cfg, reporter, place=place, state=state, labelled=labelled)
