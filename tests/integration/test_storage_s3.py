"""Object storage end to end against a real S3-compatible server (moto's standalone server on
127.0.0.1, tests/s3server.py): scans, checkpoint and Parquet results all under s3://, the
consumer writing before it acknowledges, readers ignoring uncommitted patch parts, allowed
roots as bucket/prefix, and the server killed and restarted mid-run."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "unit"))

from s3server import TEST_BUCKET as BUCKET  # noqa: E402
from s3server import MotoS3  # noqa: E402
from servicekit import LocalScorer, backlog, drive, make_consumer, service_config  # noqa: E402
from test_sink import _result as result  # noqa: E402 - the unit tests' row factory

from patchrank.model.checkpoint import load_checkpoint  # noqa: E402
from patchrank.pipeline.commands.enqueue import enqueue_paths  # noqa: E402
from patchrank.pipeline.data.loaders import ScanError  # noqa: E402
from patchrank.pipeline.data.storage import local_checkpoint  # noqa: E402
from patchrank.pipeline.evaluation import operating_point  # noqa: E402
from patchrank.pipeline.service.intake import check_uri  # noqa: E402
from patchrank.pipeline.service.messages import message_for  # noqa: E402
from patchrank.pipeline.service.results import ResultStore  # noqa: E402
from patchrank.pipeline.service.sink import ParquetSink, part_files, read_part, write_object_part  # noqa: E402
from patchrank.pipeline.service.slice_scorer import SliceScorer  # noqa: E402
from patchrank.pipeline.service.streams import StreamClient  # noqa: E402
from patchrank.pipeline.service.tables import to_arrow  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def _upload(server: MotoS3, files: list[Path], prefix: str) -> list[str]:
    c = server.client()
    out = []
    for f in files:
        key = f"{prefix}/{f.name}"
        c.upload_file(str(f), BUCKET, key)
        out.append(f"s3://{BUCKET}/{key}")
    return out


def _check(cfg, scan_ids: list[str]) -> dict:
    """Every scan exactly one logical result on S3, every visible part a complete Parquet file."""
    b = backlog(cfg)
    assert b.lag == 0 and b.pending == 0, f"stream not drained: {b}"
    for table in ("scans", "patches"):
        for p in part_files(cfg.output_dir, table, cfg.s3_endpoint_url):
            read_part(p, endpoint=cfg.s3_endpoint_url)
    store = ResultStore(cfg.output_dir, endpoint=cfg.s3_endpoint_url)
    cols, rows = store.sql("SELECT * FROM scans")
    by_id = {r[cols.index("scan_id")]: dict(zip(cols, r)) for r in rows}
    assert len(by_id) == len(rows), "two logical results for one key"
    assert sorted(by_id) == sorted(set(scan_ids))
    return by_id


def test_request_log_replay_reads_records_sharing_a_line_and_skips_a_cut_one():
    """moto's recorder appends a record and its newline in two writes: concurrent requests' records can share a
    line, and the SIGKILL can cut the last one (the restart replayed none of them before; CI 2026-12-04)."""
    from s3server import _records

    a, b, c = (json.dumps({"method": "PUT", "url": f"/b/{k}", "body": "x" * 9000}) for k in "abc")
    text = a + b + "\n\n" + c + "\n" + c[:5000]
    assert [r["url"] for r in _records(text)] == ["/b/a", "/b/b", "/b/c"]
    assert list(_records("")) == [] and [r["url"] for r in _records(a + "\n")] == ["/b/a"]


def test_sink_and_reader_on_s3(s3, tmp_path):
    """Parts land under unique keys; scans last is the commit; a patches part whose scans part
    never landed is invisible; a new sink re-learns what is written from the bucket."""
    root = f"s3://{BUCKET}/results"
    sink = ParquetSink(root, endpoint=s3.endpoint)
    a, ap = result("a" * 16, 5.0)
    b, bp = result("b" * 16, 1.0)
    written = sink.write([a, b], ap + bp)
    assert [w.split("/")[4] for w in written] == ["patches", "scans"]  # bucket/results/<table>/...
    orphan, orphan_p = result("c" * 16, 9.0)  # a writer that died between its two parts
    write_object_part(
        sink.fs, f"{BUCKET}/results/patches/model_version=v1/date=2026-01-02", to_arrow("patches", orphan_p)
    )
    store = ResultStore(root, endpoint=s3.endpoint)
    assert store.counts() == {"ok": 2}
    assert store.sql("SELECT count(*) FROM patches_all")[1] == [(9,)]
    assert store.sql("SELECT count(DISTINCT scan_id) FROM patches")[1] == [(2,)]
    assert [r["scan_id"] for r in store.top_scans(5)] == ["a" * 16, "b" * 16]
    again = ParquetSink(root, endpoint=s3.endpoint)
    assert again.is_written("a" * 16, "v1") and not again.is_written("c" * 16, "v1")
    assert again.write([a], ap) == []  # a redelivered result is not written twice
    with pytest.raises(FileNotFoundError):
        ResultStore(f"s3://{BUCKET}/nothing-here", endpoint=s3.endpoint)


def test_query_command_reads_s3(s3, capsys):
    """`patchrank query s3://...` (endpoint from $AWS_ENDPOINT_URL, credentials from the AWS env)."""
    from patchrank.pipeline.cli import main

    a, ap = result("a" * 16, 5.0)
    ParquetSink(f"s3://{BUCKET}/q", endpoint=s3.endpoint).write([a], ap)
    assert main(["query", f"s3://{BUCKET}/q", "--sql", "SELECT scan_id, scan_score FROM scans"]) == 0
    out = capsys.readouterr().out
    assert "a" * 16 in out and "5" in out and "testing" not in out  # no credential is echoed


def test_allowed_roots_are_bucket_and_prefix(s3):
    roots = [f"s3://{BUCKET}/scans"]
    assert check_uri(f"s3://{BUCKET}/scans/sub/a.nii.gz", roots) == f"s3://{BUCKET}/scans/sub/a.nii.gz"
    for uri, why in [
        (f"s3://{BUCKET}/scans2/a.nii.gz", "outside"),  # a sibling prefix sharing the name's start
        ("s3://other-bucket/scans/a.nii.gz", "outside"),
        (f"s3://{BUCKET}/scans/../private/a.nii.gz", "'..'"),
        (f"s3://{BUCKET}/scans//a.nii.gz", "empty"),
        ("s3://UPPER/scans/a.nii.gz", "bucket"),
    ]:
        with pytest.raises(ScanError, match=why):
            check_uri(uri, roots)
    with pytest.raises(ScanError, match="outside"):  # a local root never admits an s3 object
        check_uri(f"s3://{BUCKET}/scans/a.nii.gz", [Path("/")])
    with pytest.raises(ScanError, match="outside"):  # nor an s3 root a local file
        check_uri("/etc/passwd", roots)


def test_scans_checkpoint_and_results_on_s3(s3, tmp_path, redis_url, phantom_dir, tiny_checkpoint):
    """enqueue walks an s3:// prefix, the scorer loads an s3:// checkpoint, results go to s3://;
    an object outside the roots and a vanished object become `failed` rows."""
    flair = sorted(phantom_dir.rglob("*_flair.nii.gz"))[:4]
    seg = sorted(phantom_dir.rglob("*_seg.nii.gz"))[:1]
    uris = _upload(s3, flair + seg, "archive/scans")
    _upload(s3, flair[:1], "archive/private")
    (ckpt,) = _upload(s3, [tiny_checkpoint], "models")
    local = local_checkpoint(ckpt, s3.endpoint)
    assert Path(local).read_bytes() == tiny_checkpoint.read_bytes()
    assert local_checkpoint(ckpt, s3.endpoint) == local  # cached: not downloaded twice
    operating_point.save(ckpt, load_checkpoint(local).model_version, {"threshold": 0.0}, s3.endpoint)  # beside it
    cfg = service_config(
        redis_url,
        tmp_path,
        ckpt,
        output_dir=f"s3://{BUCKET}/results",
        allowed_roots=[f"s3://{BUCKET}/archive/scans"],
        s3_endpoint_url=s3.endpoint,
    )
    client = StreamClient.from_url(cfg.redis_url, cfg.keys)
    report = enqueue_paths(client, [f"s3://{BUCKET}/archive/scans/"], show=False, endpoint=s3.endpoint)
    assert len(report.queued) == 4 and report.skipped == [(uris[-1], "label/mask file, not a scan")]
    outside = message_for(f"s3://{BUCKET}/archive/private/{flair[0].name}", endpoint=s3.endpoint)
    gone = message_for(uris[1], endpoint=s3.endpoint).model_copy(update={"scan_id": "f" * 32})
    client.add_many([outside, gone])
    client.close()
    s3.client().delete_object(Bucket=BUCKET, Key=f"archive/scans/{flair[1].name}")  # gone before scoring
    scorer = LocalScorer(SliceScorer(ckpt, torch_threads=1, endpoint=s3.endpoint))
    asyncio.run(drive([make_consumer(cfg, scorer)], cfg, timeout_s=120))
    rows = _check(cfg, [sid for sid, _ in report.queued] + [outside.scan_id, gone.scan_id])
    status = {sid: (r["status"], r["error"]) for sid, r in rows.items()}
    assert status[outside.scan_id] == ("failed", f"{flair[0].name}: object is outside the allowed input roots")
    assert status[gone.scan_id] == ("failed", f"{flair[1].name}: object not found")
    assert sorted(s for s, _ in status.values()) == ["failed"] * 3 + ["ok"] * 3, status
    assert all(r["uri"].startswith(f"s3://{BUCKET}/archive/") for r in rows.values())
    ok_rows = [r for r in rows.values() if r["status"] == "ok"]
    assert all(r["flagged"] is (r["scan_score"] >= 0.0) for r in ok_rows)  # the s3 sidecar was read
    from patchrank.pipeline.service.heatmap import render_scan_png

    ok = next(sid for sid, r in rows.items() if r["status"] == "ok")
    png = render_scan_png(ResultStore(cfg.output_dir, endpoint=s3.endpoint), ok, tmp_path / "h.png")
    assert png.stat().st_size > 1000  # the heatmap reads the scan back from the bucket


def test_operating_point_beside_an_s3_checkpoint(s3, phantom_dir, tiny_checkpoint, capsys):
    """`evaluate` stores the threshold beside the checkpoint; for an s3:// checkpoint that is an object
    beside it, which `score` (and the consumer, above) read back."""
    from patchrank.pipeline.cli import main

    (ckpt,) = _upload(s3, [tiny_checkpoint], "op")
    mv = load_checkpoint(tiny_checkpoint).model_version
    assert operating_point.load(ckpt, mv) is None  # none stored yet
    scans = sorted(phantom_dir.rglob("*_flair.nii.gz"))[:4]
    assert main(["score", *map(str, scans), "--checkpoint", ckpt]) == 0
    ranked = [line for line in capsys.readouterr().out.splitlines() if "_flair.nii.gz" in line]
    assert len(ranked) == 4 and not any("FLAGGED" in line for line in ranked)
    second, third = (float(line.split()[1]) for line in ranked[1:3])
    threshold = (second + third) / 2  # between the 2nd and 3rd scores: the top two are flagged
    where = operating_point.save(ckpt, mv, {"threshold": threshold})
    assert where == f"{ckpt}.operating_point.json"
    assert s3.client().head_object(Bucket=BUCKET, Key="op/tiny.pt.operating_point.json")["ContentLength"] > 0
    assert operating_point.load(ckpt, mv) == threshold and operating_point.load(ckpt, "another-model") is None
    assert main(["score", *map(str, scans), "--checkpoint", ckpt]) == 0
    ranked = [line for line in capsys.readouterr().out.splitlines() if "_flair.nii.gz" in line]
    assert ["FLAGGED" in line for line in ranked] == [True, True, False, False]


def test_s3_server_killed_and_restarted_mid_run(s3, tmp_path, redis_url, phantom_dir, tiny_checkpoint):
    """The store dies (SIGKILL) while results are being written: nothing is acknowledged
    without its result; after the restart (request log replayed, tests/s3server.py) the
    pending entries are written and every scan has exactly one result."""
    files = sorted(phantom_dir.rglob("*_flair.nii.gz"))
    _upload(s3, files, "scans")
    cfg = service_config(
        redis_url,
        tmp_path,
        tiny_checkpoint,
        output_dir=f"s3://{BUCKET}/results",
        allowed_roots=[f"s3://{BUCKET}/scans"],
        s3_endpoint_url=s3.endpoint,
        max_inflight_scans=2,
        flush_scans=1,
        max_deliveries=50,
    )
    client = StreamClient.from_url(cfg.redis_url, cfg.keys)
    report = enqueue_paths(client, [f"s3://{BUCKET}/scans"], show=False, endpoint=s3.endpoint)
    client.close()
    assert len(report.queued) == 8
    scorer = LocalScorer(SliceScorer(str(tiny_checkpoint), torch_threads=1))
    scorer.fail = lambda _n, _c: __import__("time").sleep(0.15)  # keep scans in flight across the outage
    consumer = make_consumer(cfg, scorer)
    state: dict = {"killed": None, "restarted": False}

    async def outage(elapsed: float) -> None:
        if state["killed"] is None and consumer.stats["acked"] >= 2:
            s3.kill()
            state["killed"] = elapsed
        elif state["killed"] is None or state["restarted"]:
            return
        elif "acked_at_1s" not in state and elapsed - state["killed"] > 1.0:  # a flush already past its PUT is done
            state["acked_at_1s"], state["infra_at_1s"] = consumer.stats["acked"], consumer.stats["infra_errors"]
        elif "acked_at_1s" in state and elapsed - state["killed"] > 4.0:
            state["acked_while_down"] = consumer.stats["acked"] - state["acked_at_1s"]
            state["infra_while_down"] = consumer.stats["infra_errors"] - state["infra_at_1s"]
            state["replayed"] = await asyncio.to_thread(s3.restart)
            state["restarted"] = True

    asyncio.run(drive([consumer], cfg, timeout_s=180, during=outage))
    print(f"outage: {state}, consumer {consumer.stats}")
    assert state["restarted"], f"the outage never happened: {consumer.stats}"
    assert state["acked_while_down"] == 0, "an entry was acknowledged while its result could not be written"
    assert state["infra_while_down"] > 0  # writes (and reads) failed and were retried, not dropped
    rows = _check(cfg, [sid for sid, _ in report.queued])
    assert {r["status"] for r in rows.values()} == {"ok"}, {r["error"] for r in rows.values()}
    assert max(r["deliveries"] for r in rows.values()) > 1  # some entries were redelivered after the outage
