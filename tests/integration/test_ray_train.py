"""Ray Train (TorchTrainer, 2 CPU workers, DDP over gloo) on tiny phantom data:
a worker crash is survived from the latest checkpoint, the checkpoint loads and scores
like the workers' in-memory model, and --resume continues from the saved epoch."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest
import torch

from patchrank.model.checkpoint import load_checkpoint
from patchrank.pipeline.settings import TrainConfig
from patchrank.pipeline.training.loop import score_stats

HALF_CPU = 0.5  # per worker: 2 workers fit even if another test's actor still holds a CPU
TINY = {
    "batch_size": 8,
    "preprocess": {"image_size": 32},
    "arch": {"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2},
    "critic_epochs": 0,
}  # the resume test adds a critic phase (DDP discriminator-only epochs)


def _wait_for_cpus(ray, n: float, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while ray.available_resources().get("CPU", 0) < n:
        if time.time() > deadline:
            pytest.fail(f"Ray Train test needs {n} free CPUs; available: {ray.available_resources()}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def data(phantom_dir):
    from patchrank.pipeline.training.local import prepare_data, prepare_labelled

    cfg = TrainConfig(**TINY)
    train, val = prepare_data(phantom_dir, cfg, show=False)
    return train, val, prepare_labelled(phantom_dir, cfg, show=False)


@pytest.fixture(scope="module")
def two_worker_run(ray_session, data, tmp_path_factory):
    """2 epochs on 2 workers; rank 1 crashes once after epoch 1 (FailureConfig restarts it)."""
    from patchrank.deploy.train_launcher import launch

    _wait_for_cpus(ray_session, 2 * HALF_CPU)
    train, val, labelled = data
    out = tmp_path_factory.mktemp("raytrain") / "model.pt"
    res = launch(
        train,
        val,
        TrainConfig(epochs=2, **TINY),
        out,
        workers=2,
        cpus_per_worker=HALF_CPU,
        max_failures=1,
        labelled=labelled,
        progress_s=0,
        fail_after_epoch=1,
    )
    return out, res


@pytest.mark.timeout(420)
def test_two_workers_survive_a_crash_and_checkpoint_scores_like_memory(two_worker_run, data):
    out, res = two_worker_run
    train, val, _ = data
    ck = load_checkpoint(out)
    assert ck.meta["epochs_done"] == 2 and ck.meta["workers"] == 2
    assert ck.train_state["epoch"] == 1 and len(ck.train_state["masks_by_rank"]) == 2
    assert not any(k.startswith("module.") for k in ck.recon.state_dict())  # unwrapped, not DDP keys
    # The metrics rank 0 reported were computed by the in-memory (DDP-trained) networks; the loaded
    # networks must reproduce them exactly on the same validation slices.
    assert res.metrics["epoch"] == 2
    assert res.metrics["restarted"] == 1 and res.metrics["epochs_before"] == 1  # epoch 2 ran after the restart
    refit = score_stats(ck.recon, ck.disc, val, TrainConfig(**TINY), train=train)  # stats_from="train+val"
    assert refit.image_mean == pytest.approx(res.metrics["val_image_mean"], rel=1e-5, abs=1e-6)
    assert refit.image_std == pytest.approx(res.metrics["val_image_std"], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(refit.pix_mean, ck.stats.pix_mean)
    assert 0.0 <= res.metrics["val_auroc"] <= 1.0
    assert res.metrics["images"] == len(train) + len(train) % 2  # both shards, padded to equal size
    # The crash after epoch 1 restarted the worker group from checkpoint 1; the curve is continuous.
    rows = list(csv.DictReader(out.with_suffix(".curve.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    run = Path(res.run_path)
    assert sorted(p.name for p in run.glob("checkpoint_epoch_*")) == ["checkpoint_epoch_0001", "checkpoint_epoch_0002"]


@pytest.mark.timeout(420)
def test_resume_continues_from_saved_epoch(two_worker_run, data):
    from patchrank.deploy.train_launcher import launch

    out, first = two_worker_run
    train, val, _ = data
    before = load_checkpoint(out)
    more = TrainConfig(**{**TINY, "epochs": 3, "critic_epochs": 1})  # one more adversarial epoch, then a critic epoch
    res = launch(train, val, more, out, workers=2, cpus_per_worker=HALF_CPU, resume=True, progress_s=0)
    ck = load_checkpoint(out)
    assert ck.meta["epochs_done"] == 4 and ck.train_state["epoch"] == 3
    assert ck.train_state["gan_epochs"] == 3 and ck.train_state["critic_epochs"] == 1
    assert res.metrics["epoch"] == 4 and ck.model_version != before.model_version
    assert res.metrics["epochs_before"] == 2 and res.metrics["restarted"] == 0
    # Only epochs 3-4 ran in the resumed run (a restart would have reported epochs 1..4).
    assert sorted(p.name for p in Path(res.run_path).glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_0003",
        "checkpoint_epoch_0004",
    ]
    rows = list(csv.DictReader(out.with_suffix(".curve.csv").open()))
    assert [(r["epoch"], r["phase"]) for r in rows] == [("1", "gan"), ("2", "gan"), ("3", "gan"), ("4", "critic")]
    # Resuming with nothing left to train keeps the checkpoint as it is.
    again = launch(train, val, more, out, workers=2, cpus_per_worker=HALF_CPU, resume=True, progress_s=0)
    assert again.model_version == ck.model_version


@pytest.mark.timeout(420)
def test_crash_restart_is_bitwise_the_uninterrupted_run(two_worker_run, data, tmp_path):
    """Restarting from checkpoint 1 restores weights, both optimizers and every rank's mask RNG:
    the crashed-and-restarted run ends with the same model as a run that never failed."""
    from patchrank.deploy.train_launcher import launch

    _, crashed = two_worker_run
    train, val, labelled = data
    clean = launch(
        train,
        val,
        TrainConfig(epochs=2, **TINY),
        tmp_path / "clean.pt",
        workers=2,
        cpus_per_worker=HALF_CPU,
        labelled=labelled,
        progress_s=0,
    )
    assert clean.metrics["restarted"] == 0
    assert clean.model_version == crashed.model_version


@pytest.mark.timeout(420)
def test_cli_with_workers_prints_only_its_own_lines(phantom_dir, tmp_path):
    """`train --workers 1 --quiet` on its own local Ray: the epoch lines and the summary, no Ray
    INFO lines, no per-report metric dicts, no colour codes in a pipe. Then an ensemble of 2 through
    Ray Train: each member its own run under --storage, one checkpoint of both."""
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    over = tmp_path / "tiny.json"
    over.write_text(json.dumps({"arch": TINY["arch"], "critic_epochs": 1}))
    out = tmp_path / "m.pt"
    cmd = [sys.executable, "-m", "patchrank.pipeline.cli", "train", "--data", str(phantom_dir), "--out", str(out)]
    cmd += ["--epochs", "1", "--image-size", "32", "--workers", "1", "--quiet", "--config", str(over)]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=220)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    assert "epoch 1/2  loss_rec" in text and "epoch 2/2 (critic)" in text and "done: checkpoint" in text
    for noise in ("\x1b[", "Reporting training result", " INFO ", "core_worker", "Started a local Ray"):
        assert noise not in text, text[-3000:]
    over.write_text(json.dumps({"arch": TINY["arch"], "critic_epochs": 1, "ensemble": 2}))
    storage = tmp_path / "runs"
    cmd[cmd.index(str(out))] = str(tmp_path / "e.pt")
    cmd += ["--storage", str(storage)]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    text = r.stdout + r.stderr
    assert r.returncode == 0, text[-3000:]
    assert "ensemble member 2/2 (seed 1)" in text and "done: ensemble of 2 trainings" in text
    runs = {p.parent.parent.parent.name for p in storage.glob("member*/run-*/checkpoint_*/model.pt")}
    assert runs == {"member0", "member1"}
    from patchrank.model import load_checkpoint

    ens = load_checkpoint(tmp_path / "e.pt")
    assert len(ens.members) == 2 and ens.meta["train_config"]["ensemble"] == 2
