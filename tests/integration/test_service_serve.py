"""The scoring service end to end: Redis stream -> Ray Serve (ingest + batched scorer) -> Parquet.

One Serve app is deployed for the module (real redis-server, local Ray from ray_session).
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from service_data import EXPECTED_BAD, missing_message, write_archive

from patchrank.pipeline.service.messages import scan_id_for
from patchrank.pipeline.service.results import ResultStore
from patchrank.pipeline.service.settings import AppArgs, Placement, ServiceConfig
from patchrank.pipeline.service.sink import part_files
from patchrank.pipeline.service.streams import StreamClient
from patchrank.pipeline.service.tables import SCANS_SCHEMA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(ray_session, redis_server, phantom_dir, tiny_checkpoint, tmp_path_factory):
    from patchrank.pipeline.service import screening

    base = tmp_path_factory.mktemp("service")
    root, out = base / "archive", base / "results"
    expected = write_archive(root, phantom_dir, base / "outside")
    cfg = ServiceConfig(
        redis_url=redis_server.url,
        namespace="t-serve",
        checkpoint=str(tiny_checkpoint),
        output_dir=str(out),
        allowed_roots=[str(root)],
        max_batch_size=16,
        chunk_slices=4,
        flush_scans=4,
        flush_interval_s=0.3,
        claim_idle_ms=5000,
        torch_threads=1,
    )
    client = StreamClient.from_url(cfg.redis_url, cfg.keys)
    for k in (cfg.keys.stream, cfg.keys.dead_letter, cfg.keys.errors):
        client.r.delete(k)
    screening.deploy(AppArgs(service=cfg, scorer=Placement(num_cpus=0.5), ingest=Placement(num_cpus=0.1)))
    ids = {name: scan_id_for(root / name) for name in expected if name != "missing.nii.gz"}
    ids["missing.nii.gz"] = missing_message(root).scan_id
    yield {"cfg": cfg, "client": client, "root": root, "out": out, "expected": expected, "ids": ids}
    client.close()
    screening.undeploy()


def _enqueue_all(svc) -> int:
    from patchrank.pipeline.commands.enqueue import enqueue_paths

    files = sorted(p for p in svc["root"].iterdir() if p.name != "missing.nii.gz")
    report = enqueue_paths(svc["client"], files, show=False)
    svc["client"].add(missing_message(svc["root"]))
    return len(report.queued) + 1


@pytest.fixture(scope="module")
def screened(service):
    from patchrank.pipeline.service.screening import wait_drained

    assert _enqueue_all(service) == 20
    wait_drained(service["client"], timeout_s=120, show=False)
    return service


@pytest.mark.timeout(240)
def test_twenty_scans_one_row_each_with_right_status(screened):
    svc = screened
    store = ResultStore(svc["out"])
    rows = {r[0]: r[1:] for r in store.sql("SELECT scan_id, status, error, n_slices, scan_score FROM scans_all")[1]}
    assert len(rows) == store.sql("SELECT count(*) FROM scans_all")[1][0][0] == 20, "exactly one physical row per scan"
    for name, status in svc["expected"].items():
        got_status, error, n_slices, score = rows[svc["ids"][name]]
        assert got_status == status, (name, error)
        if status == "failed":
            assert EXPECTED_BAD[name].lower() in error.lower(), (name, error)
        else:
            assert error is None and n_slices >= 1 and score is not None
    b = svc["client"].backlog()
    assert (b.lag, b.pending) == (0, 0)
    assert svc["client"].dead_letters() == []
    for p in part_files(svc["out"], "scans"):
        assert pq.read_schema(p).equals(SCANS_SCHEMA)
    assert not list(svc["out"].rglob(".*.tmp"))
    n_patches = store.sql("SELECT count(*) FROM patches p JOIN scans s USING (result_id) WHERE s.status = 'ok'")[1][0][
        0
    ]
    assert n_patches > 0


@pytest.mark.timeout(240)
def test_reenqueue_adds_no_duplicate_results(screened):
    from patchrank.pipeline.service.screening import wait_drained

    svc = screened
    before = ResultStore(svc["out"]).sql("SELECT count(*) FROM scans_all")[1][0][0]
    assert _enqueue_all(svc) == 20
    wait_drained(svc["client"], timeout_s=120, show=False)
    store = ResultStore(svc["out"])
    assert store.sql("SELECT count(*) FROM scans_all")[1][0][0] == before == 20
    assert store.sql("SELECT count(*), count(DISTINCT scan_id) FROM scans")[1] == [(20, 20)]
    assert svc["client"].backlog().pending == 0


@pytest.mark.timeout(240)
def test_service_scores_match_in_process_scoring_and_query_ranks_top(screened):
    """The known answer: the same checkpoint scored in-process (pipeline.scan_scoring)."""
    from patchrank.pipeline.data.loaders import load_scan
    from patchrank.pipeline.data.preprocess import preprocess_scan
    from patchrank.pipeline.inference import load_for_inference
    from patchrank.pipeline.scan_scoring import score_prepared

    svc = screened
    model = load_for_inference(svc["cfg"].checkpoint)  # the fast path, as the scorer replicas load it
    direct = {}
    for name, status in svc["expected"].items():
        if status == "ok":
            prep = preprocess_scan(load_scan(svc["root"] / name), model.preprocess)
            direct[svc["ids"][name]] = score_prepared(model, prep, top_n=1)
    store = ResultStore(svc["out"])
    served = dict(store.sql("SELECT scan_id, scan_score FROM scans WHERE status = 'ok'")[1])
    for sid, s in direct.items():
        assert served[sid] == pytest.approx(s.scan_score, rel=1e-4, abs=1e-4)
    top = store.top_scans(1, patches=1)[0]
    best = max(direct, key=lambda k: direct[k].scan_score)
    assert top["scan_id"] == best
    hit = direct[best].patches[0]
    assert (top["patches"][0]["slice_index"], top["patches"][0]["row"], top["patches"][0]["col"]) == (
        hit.slice_index,
        hit.row,
        hit.col,
    )


@pytest.mark.timeout(240)
def test_query_cli_and_heatmap(screened, tmp_path, capsys):
    from patchrank.pipeline.cli import main

    svc = screened
    assert main(["query", str(svc["out"]), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "20 results: 12 failed, 8 ok" in text
    assert (
        main(["query", str(svc["out"]), "--sql", "SELECT status, count(*) AS n FROM scans GROUP BY 1 ORDER BY 1"]) == 0
    )
    assert "failed" in capsys.readouterr().out
    top = ResultStore(svc["out"]).top_scans(1)[0]["scan_id"]
    png = tmp_path / "top.png"
    assert main(["query", str(svc["out"]), "--scan", top[:10], "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["query", str(svc["out"]), "--sql", "SELECT nope FROM scans"]) == 2


@pytest.mark.timeout(300)
def test_screen_command_embedded_redis(service, phantom_dir, tiny_checkpoint, tmp_path, capsys):
    """`patchrank screen` with no --redis-url: private redis-server, started and stopped. The scans
    are given as a folder of symlinks to files elsewhere (the service may read their targets)."""
    import psutil

    from patchrank.pipeline.cli import main

    links = tmp_path / "links"
    links.mkdir()
    for scan in phantom_dir.rglob("*_flair.nii.gz"):
        (links / scan.name).symlink_to(scan)
    out = tmp_path / "screen"
    redis_before = {p.pid for p in psutil.Process().children(recursive=True) if "redis-server" in p.name()}
    assert (
        main(
            [
                "screen",
                str(links),
                "--checkpoint",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--top",
                "3",
                "--chunk",
                "4",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "8 ok" in text and "private redis-server" in text
    assert ResultStore(out).counts() == {"ok": 8}
    assert main(["query", str(out), "--flagged"]) == 0  # the session checkpoint has no operating point
    assert capsys.readouterr().out.startswith(
        "no operating point: the checkpoint these scans were scored with had none"
    )
    left = [
        p
        for p in psutil.Process().children(recursive=True)
        if "redis-server" in p.name() and p.pid not in redis_before and p.status() != psutil.STATUS_ZOMBIE
    ]  # (the private server gets its config on stdin: its command line is just "redis-server -")
    assert left == [], "the embedded redis-server was left running"
