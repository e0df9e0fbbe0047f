"""`patchrank screen` (embedded default) interrupted with Ctrl-C or SIGTERM mid-run: it exits
promptly, stops every process it started (private redis-server, local Ray), and leaves
no half-written files; every visible part is a complete Parquet file."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from servicekit import phantom_archive

from patchrank.pipeline.service.sink import part_files

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_screen_interrupted_stops_everything(tmp_path, phantom_dir, tiny_checkpoint, sig):
    data = phantom_archive(phantom_dir, tmp_path / "data", 3000)  # ~150 s of scoring: the signal lands mid-run
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "patchrank.pipeline.cli",
            "screen",
            str(data),
            "--checkpoint",
            str(tiny_checkpoint),
            "--out",
            str(out),
            "--num-cpus",
            "2",
            "--inflight",
            "2",
            "--chunk",
            "4",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Ctrl-C at a terminal: a test run started in the background (`cmd &` in a script) ignores SIGINT,
        # and a child inherits that, so Python would never raise KeyboardInterrupt in it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while not part_files(out, "scans"):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no results within 120 s"
        time.sleep(0.1)
    started = [p for p in me.children(recursive=True)]
    assert any("redis-server" in p.name() for p in started), "the private redis-server runs under screen"
    proc.send_signal(sig)
    try:
        rc = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("screen did not exit within 60 s of the signal")
    text = proc.stdout.read()
    assert "queued 3000 scans" not in text, "the job finished before the signal; the test proved nothing"
    assert rc != 0 and "Traceback" not in text, text[-3000:]
    gone, alive = psutil.wait_procs(started, timeout=20)
    leftover = [f"{p.pid} {p.name()}" for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftover, f"processes left running after {sig.name}: {leftover}\n{text[-2500:]}"
    assert not list(out.rglob("*.tmp")), "half-written part files left behind"
    for table in ("scans", "patches"):
        for p in part_files(out, table):
            pq.read_table(p)


# ---- issue 23 ---------------------------------------------------------------------------
def _screen(data: Path, out: Path, ckpt: Path, *extra: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "patchrank.pipeline.cli", "screen", str(data), "--checkpoint", str(ckpt)]
    cmd += ["--out", str(out), "--num-cpus", "2", "--inflight", "2", "--chunk", "4", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def full_disk(tmp_path):
    """A 256 KiB tmpfs filled to the last block (skipped where tmpfs cannot be mounted)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, timeout=20)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode(errors='replace').strip()[:80]})")
    try:
        with open(mnt / ".filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=20)


@pytest.mark.timeout(240)
def test_screen_whose_consumer_cannot_start_says_why(tmp_path, phantom_dir, tiny_checkpoint):
    """Before: a result folder the service could not create restarted the ingest replica forever and `screen`
    waited out its 6-hour --timeout. The command's own check on --out is bypassed here, as on a cluster."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results would go")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    bypass = (
        "import sys; import patchrank.pipeline.commands.screen as s; s.output_folder = lambda *a: None; "
        "from patchrank.pipeline.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", bypass, "screen", str(phantom_dir), "--checkpoint", str(tiny_checkpoint)]
    cmd += ["--out", str(blocker), "--num-cpus", "2"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 2, (r.stdout + r.stderr)[-3000:]
    err = [line for line in r.stderr.splitlines() if line.startswith("patchrank screen: error:")]
    assert err == [
        "patchrank screen: error: the scoring service's stream consumer did not start: FileExistsError: "
        f"[Errno 17] File exists: '{blocker}'"
    ], r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.timeout(300)
def test_screen_on_a_full_disk_exits_nonzero_naming_every_scan(tmp_path, phantom_dir, tiny_checkpoint, full_disk):
    """Before: "scored 12 scans ... 1 ok", exit 0, 11 scans without a row, their dead letters
    gone with the private Redis. Now every queued scan is accounted for and named."""
    data = phantom_archive(phantom_dir, tmp_path / "data", 12)
    r = _screen(data, full_disk, tiny_checkpoint, "--max-deliveries", "1", "--retry-after", "1")
    text = r.stdout + r.stderr
    assert r.returncode == 1, text[-3000:]
    assert "queued 12: result rows 0 (none), dead letters without a row 12" in text, text[-3000:]
    named = {line.split()[2] for line in r.stdout.splitlines() if line.strip().startswith("DEAD ")}
    assert named == {str((data / f"scan_{i:02d}_flair.nii.gz").resolve()) + ":" for i in range(12)}, text[-3000:]
    assert "No space left on device" in text and "incomplete: 12 scans have no result row" in r.stderr
    assert "Traceback" not in text
    # Quiet by default (the same shutdown as a clean run): Serve's INFO lines, Ray's token notice and the
    # "(raylet) ... killed by `ray.kill`" lines serve.shutdown() caused are gone.
    for noise in ("(raylet)", "ray.kill", "Started Serve", "Deleting app", "Token authentication"):
        assert noise not in text, text[-3000:]


@pytest.mark.timeout(240)
def test_screen_killed_with_sigkill_leaves_nothing_running(tmp_path, phantom_dir, tiny_checkpoint):
    """Before: kill -9 of `screen` left the private redis-server (and its password file) and
    the Ray processes running. Now redis-server dies with its parent (PR_SET_PDEATHSIG) and
    a watchdog stops the rest."""
    data = phantom_archive(phantom_dir, tmp_path / "data", 200)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    before = set(Path(tempfile.gettempdir()).glob("patchrank-redis-*"))
    cmd = [sys.executable, "-m", "patchrank.pipeline.cli", "screen", str(data), "--checkpoint", str(tiny_checkpoint)]
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--num-cpus", "2", "--inflight", "2", "--chunk", "4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    me = psutil.Process(proc.pid)
    deadline = time.monotonic() + 150
    while not part_files(out, "scans"):
        assert proc.poll() is None and time.monotonic() < deadline, "no results within 150 s"
        time.sleep(0.2)
    started = [p for p in me.children(recursive=True) if "watchdog" not in " ".join(p.cmdline())]
    assert any("redis-server" in p.name() for p in started) and any("raylet" in p.name() for p in started)
    proc.kill()
    proc.wait(10)
    _, alive = psutil.wait_procs(started, timeout=30)
    leftover = [f"{p.pid} {p.name()}" for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftover, f"still running 30 s after kill -9 of screen: {leftover}"
    left = set(Path(tempfile.gettempdir()).glob("patchrank-redis-*")) - before
    assert not left, f"the private Redis left its folder behind: {left}"


@pytest.mark.timeout(300)
def test_two_screens_on_one_ray_cluster_do_not_collide(tmp_path, phantom_dir, tiny_checkpoint, ray_session):
    """Before: both deployed the Serve app "patchrank"; the second replaced the first's and then
    deleted it, and the first hung until its timeout. Now each run has its own app."""
    address = ray_session.get_runtime_context().gcs_address
    data_a = phantom_archive(phantom_dir, tmp_path / "a", 12)
    data_b = phantom_archive(phantom_dir, tmp_path / "b", 12)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = []
    for data, out in ((data_a, tmp_path / "out_a"), (data_b, tmp_path / "out_b")):
        cmd = [sys.executable, "-m", "patchrank.pipeline.cli", "screen", str(data), "--checkpoint"]
        cmd += [str(tiny_checkpoint), "--out", str(out), "--address", address, "--inflight", "2", "--timeout", "200"]
        procs.append(
            subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
        time.sleep(3)  # the second deploys while the first is deploying or scoring
    texts = []
    for p in procs:
        try:
            texts.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a screen run hung: its Serve app was replaced by the other run's")
    from patchrank.pipeline.service.results import ResultStore

    for p, text, out in zip(procs, texts, (tmp_path / "out_a", tmp_path / "out_b")):
        assert p.returncode == 0, text[-3000:]
        counts = ResultStore(out).counts()
        assert counts == {"ok": 12}, f"{out.name}: {counts}\n{text[-2000:]}"  # each run's own scans, all scored
        assert "(raylet)" not in text and "INFO" not in text, text[-2000:]  # quiet by default


@pytest.mark.timeout(120)
def test_service_errors_are_one_line(tmp_path, phantom_dir, tiny_checkpoint, redis_server):
    """Wrong Redis password, unreachable Ray address: one line each, no traceback, no password."""
    from redisproc import RedisServer

    data = phantom_archive(phantom_dir, tmp_path / "data", 2)
    server = RedisServer(tmp_path, password="right-Pa55")
    server.start()
    try:
        wrong = server.url.replace("right-Pa55", "wrong-Pa55")
        for extra, expect in (
            (["--redis-url", wrong], "AuthenticationError"),
            (["--address", "127.0.0.1:1"], "cannot reach the Ray cluster at --address 127.0.0.1:1"),
            (["--redis-url", "redis://:AbC/dEf+gh=@127.0.0.1:1/0"], "percent-encode"),
        ):
            t0 = time.monotonic()
            r = _screen(data, tmp_path / "out", tiny_checkpoint, *extra, timeout=60)
            lines = [ln for ln in r.stderr.splitlines() if "error:" in ln]
            assert r.returncode != 0 and len(lines) == 1 and expect in lines[0], r.stderr[-2000:]
            assert "Traceback" not in r.stdout + r.stderr
            assert not any(s in r.stdout + r.stderr for s in ("wrong-Pa55", "AbC", "dEf+gh"))
            assert time.monotonic() - t0 < 45, "the error came only after services were started"
    finally:
        server.stop()
