"""What the adversarial run of issue 23 broke, through the real consumer and a real redis-server:
each scan ends as one clear row (or, when even that cannot be written, a dead letter that
`screen` accounts for), never as an `ok` that is wrong or an infrastructure retry loop.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servicekit import LocalScorer, check_exactly_once, drive, enqueue, make_consumer, service_config

from patchrank.pipeline.service.slice_scorer import ChunkResult

pytestmark = pytest.mark.integration


def _run(cfg, local, timeout_s=60):
    consumer = make_consumer(cfg, local)
    asyncio.run(drive([consumer], cfg, timeout_s=timeout_s))
    return consumer


@pytest.mark.timeout(90)
def test_file_replaced_after_enqueue_is_not_scored_under_the_old_id(
    redis_url, tmp_path, tiny_checkpoint, scorer, scans
):
    """Item 6: before, the new content was scored and stored under the old file's scan_id."""
    cfg = service_config(redis_url, tmp_path, tiny_checkpoint)
    msgs = enqueue(cfg, scans[:3])
    time.sleep(0.01)
    victim = Path(scans[0])
    shutil.copy(scans[5], victim)  # replaced in place: new content, new mtime
    moved = Path(scans[1])
    tmp = moved.with_suffix(".new")
    shutil.copy(moved, tmp)
    os.utime(tmp, ns=(moved.stat().st_atime_ns, moved.stat().st_mtime_ns))
    os.replace(tmp, moved)  # same bytes, same size and mtime, another inode (replaced by rename)
    consumer = _run(cfg, LocalScorer(scorer))
    out = check_exactly_once(cfg, [m.scan_id for m in msgs])
    rows = {r["uri"]: r for r in out.rows.values()}
    for p in (victim, moved):
        r = rows[str(p.resolve())]
        assert r["status"] == "failed" and "changed since it was queued" in r["error"], r
    assert rows[str(Path(scans[2]).resolve())]["status"] == "ok"
    assert consumer.stats["infra_errors"] == 0


@pytest.mark.timeout(90)
def test_symlink_loop_swapped_in_is_an_input_error(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    """Item 7: before, Path.resolve's RuntimeError counted as an infrastructure fault (retried)."""
    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_deliveries=2)
    msgs = enqueue(cfg, scans[:2])
    victim = Path(scans[0])
    victim.unlink()
    loop_b = victim.with_name("loop_b.nii.gz")
    victim.symlink_to(loop_b)
    loop_b.symlink_to(victim)
    consumer = _run(cfg, LocalScorer(scorer))
    out = check_exactly_once(cfg, [m.scan_id for m in msgs])
    bad = out.rows[msgs[0].scan_id]
    assert bad["status"] == "failed" and "symlink loop" in bad["error"] and bad["deliveries"] == 1, bad
    assert consumer.stats["infra_errors"] == 0 and not out.dead


@pytest.mark.timeout(120)
def test_scorer_exception_is_stored_as_one_clean_line(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    """Item 7: a scorer-side exception arrives as a Ray traceback with colour codes; before, the
    row held its first 500 characters (the traceback, cut before the cause)."""
    from ray.exceptions import RayTaskError

    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_deliveries=2)
    msgs = enqueue(cfg, scans[:2])
    local = LocalScorer(scorer)

    def remote_failure(_n, _chunk):
        try:
            raise ValueError("stats of 128 px do not fit 16 px slices")
        except ValueError as exc:
            frames = "".join(traceback.format_exception(exc)) * 8  # a deep remote traceback
            raise RayTaskError(
                "ServeReplica:patchrank:Scorer.score", "\x1b[36mray::ServeReplica\x1b[39m (pid=7)\n" + frames, exc
            ).as_instanceof_cause() from None

    local.fail = remote_failure
    _run(cfg, local)
    out = check_exactly_once(cfg, [m.scan_id for m in msgs])
    for r in out.rows.values():
        assert r["error"] == "gave up after 2 deliveries: ValueError: stats of 128 px do not fit 16 px slices", r[
            "error"
        ]
    for d in out.dead:
        assert "\n" not in d["reason"] and "\x1b" not in d["reason"] and "Traceback" not in d["reason"]


class NanScorer(LocalScorer):
    """A model whose statistics are broken: every score is NaN."""

    async def __call__(self, chunk):
        res = await super().__call__(chunk)
        return ChunkResult(
            **{
                k: (np.full_like(v, np.nan) if k in ("patch_scores", "image_scores") else v)
                for k, v in vars(res).items()
            }
        )


@pytest.mark.timeout(90)
def test_non_finite_scores_are_failed_rows_not_ok_with_null(
    redis_url, tmp_path, tiny_checkpoint, scorer, scans, capsys
):
    """Item 5: before, the row was `ok` with a NULL score, ranked least suspicious, and
    `query --scan --png` crashed on it."""
    from patchrank.pipeline.cli import main

    cfg = service_config(redis_url, tmp_path, tiny_checkpoint)
    msgs = enqueue(cfg, scans[:2])
    _run(cfg, NanScorer(scorer))
    out = check_exactly_once(cfg, [m.scan_id for m in msgs])
    for r in out.rows.values():
        assert r["status"] == "failed" and "non-finite score" in r["error"] and r["scan_score"] is None, r
    sid = msgs[0].scan_id
    rc = main(["query", cfg.output_dir, "--scan", sid[:12], "--png", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "status failed" in err and "Traceback" not in err, err


@pytest.mark.timeout(120)
def test_size_limits_and_model_kind_are_failed_rows(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    """Item 4 and a FLAIR model given 2D images: each a failed row with its reason, no retries."""
    import nibabel as nib

    root = Path(scans[0]).parent
    big = np.zeros((256, 256, 256), np.int16)
    big[64:192, 64:192, 64:192] = 400
    nib.save(nib.Nifti1Image(big, np.eye(4)), str(root / "big.nii.gz"))  # 16.8 M voxels, ~270 MB to preprocess
    thin = np.zeros((8, 8, 1000), np.int16)
    thin[2:6, 2:6] = 300
    nib.save(nib.Nifti1Image(thin, np.eye(4)), str(root / "thin.nii.gz"))  # 1.2 kB, 1000 slices
    Image.fromarray((np.indices((48, 40)).sum(0) * 3 % 256).astype(np.uint8)).save(root / "photo.png")
    Image.fromarray(np.full((48, 40), 99, np.uint8)).save(root / "photo.jpg")
    files = [root / "big.nii.gz", root / "thin.nii.gz", root / "photo.png", root / "photo.jpg", Path(scans[0])]
    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_inflight_mb=128)
    msgs = enqueue(cfg, files)
    consumer = _run(cfg, LocalScorer(scorer))
    out = check_exactly_once(cfg, [m.scan_id for m in msgs])
    rows = {Path(r["uri"]).name: r for r in out.rows.values()}
    expect = {
        "big.nii.gz": "in-flight budget of 128 MiB",
        "thin.nii.gz": "implausible shape 8x8x1000",
        "photo.png": "trained on volumes",
        "photo.jpg": "trained on volumes",
    }
    for name, why in expect.items():
        assert rows[name]["status"] == "failed" and why in rows[name]["error"], rows[name]
    assert rows[Path(scans[0]).name]["status"] == "ok"
    assert consumer.stats["infra_errors"] == 0 and all(r["deliveries"] == 1 for r in rows.values())


@pytest.mark.timeout(90)
def test_disk_full_every_scan_accounted_for(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    """Item 1 without a real full disk: the sink's writes fail with ENOSPC after the first. The
    account `screen` makes from Redis and the dataset names every scan without a row."""
    from patchrank.pipeline.service.screening import account, dead_letters_since, result_rows
    from patchrank.pipeline.service.streams import StreamClient

    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_deliveries=2, flush_scans=1)
    msgs = enqueue(cfg, scans)
    consumer = make_consumer(cfg, LocalScorer(scorer))
    real_write, writes = consumer.sink.write, []

    def fill_up(scan_rows, patches):
        writes.append(len(scan_rows))
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(scan_rows, patches)

    consumer.sink.write = fill_up
    asyncio.run(drive([consumer], cfg, timeout_s=60))
    client = StreamClient.from_url(cfg.redis_url, cfg.keys, **cfg.redis_kwargs())
    try:
        dead = dead_letters_since(client, "0-0")
    finally:
        client.close()
    ids = {m.scan_id for m in msgs}
    rows = result_rows(Path(cfg.output_dir), consumer.info.model_version, ids)
    acc = account([(m.scan_id, "", m.uri) for m in msgs], rows, dead)
    assert 1 <= len(rows) < len(msgs) and acc.balanced and not acc.complete
    assert len(acc.rows) + len(acc.dead_only) == len(msgs)
    assert all("No space left on device" in why for _, _, why in acc.dead_only)


@pytest.mark.timeout(30)
def test_memory_budget_waits_for_room():
    from patchrank.pipeline.service.intake import MemoryBudget

    async def main():
        budget, order = MemoryBudget(100), []

        async def scan(name, n, hold):
            await budget.acquire(n)
            order.append(f"+{name}")
            await asyncio.sleep(hold)
            order.append(f"-{name}")
            await budget.release(n)

        await asyncio.gather(scan("a", 70, 0.2), scan("b", 60, 0.0), scan("c", 30, 0.0))
        return order, budget.used

    order, used = asyncio.run(main())
    assert used == 0 and order.index("+b") > order.index("-a")  # b (60) waited until a (70) was done


@pytest.mark.timeout(120)
def test_given_up_scans_are_scored_again_when_queued_again(redis_url, tmp_path, tiny_checkpoint, scorer, scans):
    """Also: a `failed` row that only says the infrastructure gave up is not final (before, the
    re-queued scan was acknowledged as a duplicate of it); `screen --retry-failed` queues them."""
    from patchrank.pipeline.commands.screen import retry_paths
    from patchrank.pipeline.service.results import ResultStore

    cfg = service_config(redis_url, tmp_path, tiny_checkpoint, max_deliveries=1)
    msgs = enqueue(cfg, scans[:3])
    down = LocalScorer(scorer)

    def unreachable(_n, _chunk):
        raise ConnectionError("scorer unreachable")

    down.fail = unreachable
    consumer = _run(cfg, down)
    out = check_exactly_once(cfg, [m.scan_id for m in msgs])
    assert all(r["error"].startswith("gave up after 1 deliveries") for r in out.rows.values())
    mv = consumer.info.model_version
    from patchrank.pipeline.service.screening import result_rows

    ids = {m.scan_id for m in msgs}
    assert result_rows(Path(cfg.output_dir), mv, ids) == dict.fromkeys(ids, "gave up")  # screen exits 1
    assert sorted(retry_paths(cfg.output_dir, mv)) == sorted(m.uri for m in msgs)
    enqueue(cfg, [Path(u) for u in retry_paths(cfg.output_dir, mv)])  # what --retry-failed queues
    _run(cfg, LocalScorer(scorer))
    again = check_exactly_once(cfg, [m.scan_id for m in msgs])
    assert {r["status"] for r in again.rows.values()} == {"ok"}, again.rows
    assert again.physical == 6 and ResultStore(cfg.output_dir).gave_up(mv) == []
    enqueue(cfg, scans[:3])  # an ok result is final: queued again, acknowledged as a duplicate
    dup = make_consumer(cfg, LocalScorer(scorer))
    asyncio.run(drive([dup], cfg, timeout_s=60))
    assert dup.stats["duplicate"] == 3 and check_exactly_once(cfg, [m.scan_id for m in msgs]).physical == 6
