"""The shared training loop: sharded batches, the in-process path (--workers 0) with exact
resume, and gan_step under DDP (2 CPU processes, gloo) matching one process on the full batch."""

from __future__ import annotations

import csv
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist

from patchrank.model.checkpoint import load_checkpoint
from patchrank.pipeline.settings import TrainConfig
from patchrank.pipeline.training.loop import batches, build_mask_generator, build_models, build_optimizers, n_batches

TINY = {
    "batch_size": 8,
    "preprocess": {"image_size": 32},
    "arch": {"base_channels": 4, "depth": 2, "disc_channels": 8, "disc_layers": 2},
    "critic_epochs": 1,
}


def _coded_images(n: int) -> np.ndarray:
    """(n, 1, 2, 2): image i holds [[i+1, -(i+1)], ...] so its id and flip state are readable."""
    x = np.zeros((n, 1, 2, 2), np.float32)
    ids = np.arange(1, n + 1, dtype=np.float32)[:, None]
    x[:, 0, :, 0], x[:, 0, :, 1] = ids, -ids
    return x


def _id_flip(x: torch.Tensor) -> tuple[int, bool]:
    return int(abs(x[0, 0, 0])) - 1, bool(x[0, 0, 0] < 0)


@pytest.mark.parametrize("n,world,bs", [(10, 1, 4), (10, 2, 4), (11, 2, 3), (5, 3, 2), (2, 3, 4)])
def test_sharded_batches_cover_every_image_with_equal_steps(n, world, bs):
    imgs = _coded_images(n)
    full = torch.cat(list(batches(imgs, n, 7, 3)))  # one global batch = the epoch order
    shards = [list(batches(imgs, bs, 7, 3, rank=r, world=world)) for r in range(world)]
    assert {len(s) for s in shards} == {n_batches(n, bs, world)}  # DDP: same step count everywhere
    seen = [_id_flip(x) for s in shards for b in s for x in b]
    assert {i for i, _ in seen} == set(range(n))
    assert len(seen) == -(-n // world) * world  # padded by wrapping around, like DistributedSampler
    flip_of = dict(_id_flip(x) for x in full)  # each image keeps the unsharded epoch's flip decision
    assert all(flip_of[i] == f for i, f in seen)
    assert 0 < sum(flip_of.values()) < n or n < 4


def test_batches_reject_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        next(batches(_coded_images(4), 2, 0, 0, rank=2, world=2))


@pytest.fixture(scope="module")
def tiny_data(phantom_dir):
    from patchrank.pipeline.training.local import prepare_data

    return prepare_data(phantom_dir, TrainConfig(**TINY), show=False)


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_workers0_resume_continues_exactly(tiny_data, tmp_path):
    from patchrank.pipeline.training.local import fit_local

    train, val = tiny_data
    straight = fit_local(
        train, val, TrainConfig(epochs=2, **TINY), tmp_path / "a.pt", show=False
    )  # 2 adversarial + 1 critic
    fit_local(train, val, TrainConfig(**{**TINY, "epochs": 1, "critic_epochs": 0}), tmp_path / "b.pt", show=False)
    resumed = fit_local(train, val, TrainConfig(epochs=2, **TINY), tmp_path / "b.pt", resume=True, show=False)
    assert not dist.is_initialized()  # the in-process path never touches torch.distributed
    assert resumed == straight  # same weights + stats: it continued (epochs 2-3 only), not restarted
    ck = load_checkpoint(tmp_path / "b.pt")
    assert ck.meta["epochs_done"] == 3 and ck.train_state["epoch"] == 2
    assert ck.train_state["gan_epochs"] == 2 and ck.train_state["critic_epochs"] == 1
    rows = list(csv.DictReader((tmp_path / "b.curve.csv").open()))
    assert [(r["epoch"], r["phase"]) for r in rows] == [("1", "gan"), ("2", "gan"), ("3", "critic")]
    assert rows[2]["loss_rec"] == "" and float(rows[2]["loss_d"]) > 0  # columns stay aligned


def test_epoch_plan_adversarial_then_critic_and_resume_rules():
    from patchrank.pipeline.training.state import epoch_plan

    cfg = TrainConfig(epochs=3, critic_epochs=2)
    assert epoch_plan(cfg, None) == ["gan"] * 3 + ["critic"] * 2
    assert epoch_plan(cfg, {"epoch": 0}) == ["gan"] * 2 + ["critic"] * 2  # older checkpoint: every epoch adversarial
    assert epoch_plan(cfg, {"epoch": 3, "gan_epochs": 3, "critic_epochs": 1}) == [
        "critic"
    ]  # stopped inside the critic phase
    assert epoch_plan(cfg, {"epoch": 4, "gan_epochs": 3, "critic_epochs": 2}) == []  # finished
    more = TrainConfig(epochs=5, critic_epochs=2)  # --epochs raised after a finished run: the critic runs again
    assert epoch_plan(more, {"epoch": 4, "gan_epochs": 3, "critic_epochs": 2}) == ["gan"] * 2 + ["critic"] * 2
    assert epoch_plan(TrainConfig(epochs=3, critic_epochs=2, loss={"use_discriminator": False}), None) == ["gan"] * 3


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_critic_epochs_train_the_discriminator_only(tiny_data, tmp_path):
    """The critic phase leaves the reconstructor as the adversarial epochs left it and moves the
    discriminator towards telling real images from their test-time composites."""
    from patchrank.model.method import masked_composite
    from patchrank.model.train_step import critic_step
    from patchrank.pipeline.training.local import fit_local

    train, val = tiny_data
    fit_local(train, val, TrainConfig(**{**TINY, "epochs": 1, "critic_epochs": 0}), tmp_path / "gan.pt", show=False)
    fit_local(train, val, TrainConfig(**{**TINY, "epochs": 1, "critic_epochs": 2}), tmp_path / "critic.pt", show=False)
    gan, critic = load_checkpoint(tmp_path / "gan.pt"), load_checkpoint(tmp_path / "critic.pt")
    for k, v in gan.recon.state_dict().items():
        assert torch.equal(v, critic.recon.state_dict()[k]), k
    assert any(not torch.equal(v, critic.disc.state_dict()[k]) for k, v in gan.disc.state_dict().items())
    # critic_step: gradients reach only the discriminator, and its loss falls on a fixed batch
    cfg = TrainConfig(**TINY)
    recon, disc = gan.recon, gan.disc.train()
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    x = torch.from_numpy(train.images[:8])
    scoring = cfg.saved_scoring()
    assert not torch.equal(masked_composite(recon, x, scoring), x)
    losses = [critic_step(recon, disc, opt_d, x, scoring, cfg.loss)["loss_d"] for _ in range(15)]
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in recon.parameters())


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_cli_workers0_with_labelled_val(phantom_dir, tmp_path, capsys):
    import json

    from patchrank.pipeline.cli import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "epochs": 1}))
    out = tmp_path / "m.pt"
    assert (
        main(
            [
                "train",
                "--data",
                str(phantom_dir),
                "--out",
                str(out),
                "--config",
                str(cfg),
                "--workers",
                "0",
                "--val-data",
                str(phantom_dir),
                "--quiet",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert f"done: checkpoint {out}" in text and "in-process" in text
    row = next(csv.DictReader(out.with_suffix(".curve.csv").open()))
    assert 0.0 <= float(row["val_auroc"]) <= 1.0
    assert load_checkpoint(out).meta["workers"] == 1
    assert main(["train", "--data", str(phantom_dir), "--out", str(out), "--workers", "-1"]) == 2
    assert main(["train", "--data", str(phantom_dir), "--out", str(out), "--address", "auto"]) == 2


def _ddp_step(rank: int, world: int, port: int, tmp: str) -> None:
    """One gan_step per process on its half of a fixed batch, networks wrapped in DDP."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from patchrank.model.train_step import gan_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cfg = TrainConfig(**TINY)
        recon, disc = build_models(cfg)
        recon, disc = DDP(recon), DDP(disc)
        opt_g, opt_d = build_optimizers(recon, disc, cfg)
        x, mask = _fixed_batch(cfg)
        half = len(x) // world
        sl = slice(rank * half, (rank + 1) * half)
        for _ in range(2):
            m = gan_step(recon, disc, opt_g, opt_d, x[sl], mask[sl], cfg.loss)
        if rank == 0:
            torch.save({"recon": recon.module.state_dict(), "disc": disc.module.state_dict(), "m": m}, f"{tmp}/ddp.pt")
        dist.barrier()  # both ranks done with the collectives before rank 0's store goes away
        open(f"{tmp}/done{rank}", "w").close()
    finally:
        dist.destroy_process_group()


def _fixed_batch(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 1, 32, 32, generator=g) * 2 - 1
    return x, build_mask_generator(cfg)(4, 32, 32)


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_gan_step_under_ddp_matches_single_process_full_batch(tmp_path):
    """Two gloo ranks on half batches == one process on the whole batch (gradients averaged by
    DDP); also proves gan_step runs one forward per backward for each DDP module."""
    from torch import multiprocessing as mp

    from patchrank.model.train_step import gan_step

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:  # spawn, not fork: Ray/Serve threads of earlier tests can deadlock a forked child
        mp.start_processes(_ddp_step, args=(2, port, str(tmp_path)), nprocs=2, start_method="spawn")
    except mp.ProcessExitedException:
        # gloo's teardown can abort a rank *after* its work ("terminate called without an active
        # exception", seen once in a full CI run); only a crash before both ranks finished counts
        if not all((tmp_path / f"done{r}").exists() for r in range(2)):
            raise
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    cfg = TrainConfig(**TINY)
    recon, disc = build_models(cfg)
    opt_g, opt_d = build_optimizers(recon, disc, cfg)
    x, mask = _fixed_batch(cfg)
    for _ in range(2):
        gan_step(recon, disc, opt_g, opt_d, x, mask, cfg.loss)
    for name, net in (("recon", recon), ("disc", disc)):
        for k, v in net.state_dict().items():
            torch.testing.assert_close(ddp[name][k], v, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")
    assert dist.is_available() and not dist.is_initialized()


def test_resume_source_is_the_newest_checkpoint(tmp_path):
    """--resume with Ray: a killed run's per-epoch checkpoint under STORAGE beats an older --out."""
    from patchrank.deploy.train_launcher import default_storage, newest_resumable

    out = tmp_path / "model.pt"
    storage = default_storage(out)
    assert storage == tmp_path / "model.ray"
    assert newest_resumable(out, str(storage)) is None
    out.write_bytes(b"x")
    os.utime(out, (100, 100))
    assert newest_resumable(out, str(storage)) == out
    killed = storage / "run-20260101-000000-1" / "checkpoint_epoch_0003" / "model.pt"
    killed.parent.mkdir(parents=True)
    killed.write_bytes(b"y")
    os.utime(killed, (200, 200))
    assert newest_resumable(out, str(storage)) == killed
    os.utime(out, (300, 300))
    assert newest_resumable(out, str(storage)) == out
    assert newest_resumable(out, "s3://bucket/runs") == out  # remote storage: only --out is searched


def test_training_line_counts_images_for_2d_and_slices_for_volumes():
    import numpy as np

    from patchrank.pipeline.commands.train import training_line
    from patchrank.pipeline.data.datasets import SliceSet
    from patchrank.pipeline.settings import TrainConfig

    def slices(n, subjects, position):
        z = np.zeros((n, 1, 4, 4), np.float32)
        return SliceSet(z, z > 0, np.zeros(n), np.array(subjects), np.arange(n), np.zeros(n), np.full(n, position))

    flat, held = slices(3, ["a", "b", "c"], np.nan), slices(2, ["d", "e"], np.nan)
    line = training_line(flat, held, None, TrainConfig(epochs=2, critic_epochs=4))
    assert line.startswith("training on 3 normal images; score statistics from 2 held-out normal images + the ")
    assert line.endswith("; 2 adversarial + 4 critic epochs (6 in all)")
    vol = slices(4, ["a", "a", "b", "b"], 0.5)
    line = training_line(vol, vol, None, TrainConfig(epochs=2, critic_epochs=0))
    assert (
        line
        == "training on 4 normal slices (2 subjects); score statistics from the training ones; 2 adversarial epochs"
    )
