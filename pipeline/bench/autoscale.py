"""`patchrank bench autoscale`: the real Serve app on a simulated multi-node autoscaling cluster.

Cluster: pipeline.bench.sim_cluster (Ray's fake multi-node provider; node types from
ray_cluster.yaml with CPUs divided by --cpu-scale; at most --max-nodes worker nodes). Head
CPU 0 as in the YAML, so every replica runs on a worker node. The scorer asks for one logical
GPU per replica (so each replica needs its own gpu_scorer node) and scores on CPU; ingest
replicas ask for half an `ingest_node` (two per ingest_cpu node). A private redis-server.

Run: deploy (min replicas) -> wait for the baseline nodes -> enqueue --scans phantom volumes
at once -> sample every second: backlog (lag + pending), running replicas per deployment,
alive nodes per type -> with --kill, SIGKILL the raylet of a gpu_scorer node that hosts a
scorer replica once a third of the backlog is scored with the cluster at its largest, or five
sixths whatever its size (its in-flight slices fail, the entries stay pending and are
reclaimed by XAUTOCLAIM and scored by the surviving or a restarted replica) -> after the
drain, wait until replicas and nodes are back to the baseline (Serve downscale delay, then the
autoscaler's idle timeout). Then count results in the Parquet dataset.

JSON: max_worker_nodes, end_worker_nodes, baseline_worker_nodes, scans, results, lost,
duplicates (scan ids with more than one physical row), failed, redelivered, scale_up_s
(enqueue -> the cluster at its largest), scale_down_s (drained -> back at the baseline),
killed, timeline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

TYPES = ("ingest_cpu", "gpu_scorer")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("autoscale", help="Serve app on a simulated autoscaling multi-node cluster", description=__doc__)
    p.add_argument("--scans", type=int, default=60, help="phantom volumes enqueued at once (default 60)")
    p.add_argument("--cluster-yaml", default=None, help="node types from this file (default: ./ray_cluster.yaml)")
    p.add_argument("--cpu-scale", type=float, default=4.0, help="divide each node type's CPUs by this (default 4)")
    p.add_argument("--max-nodes", type=int, default=3, help="worker nodes at most (default 3)")
    p.add_argument("--idle-timeout", type=float, default=8.0, help="autoscaler idle timeout, seconds (default 8)")
    p.add_argument("--downscale-delay", type=float, default=8.0, help="Serve downscale delay, seconds (default 8)")
    p.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True, help="kill a scorer node mid-run")
    p.add_argument("--timeout", type=float, default=420.0, help="give up after this many seconds (default 420)")
    p.add_argument("--json", dest="json_out", help="write the summary + timeline here")
    p.add_argument("--png", help="write the timeline plot here")
    p.set_defaults(func=run)


def _yaml(path: str | None) -> Path:
    if path:
        return Path(path)
    for cand in (Path.cwd() / "ray_cluster.yaml", Path(__file__).resolve().parents[2] / "ray_cluster.yaml"):
        if cand.is_file():
            return cand
    raise FileNotFoundError("ray_cluster.yaml not found; pass --cluster-yaml")


def _scans(work: Path, n: int) -> Path:
    from patchrank.pipeline.data.phantom import PhantomSpec, write_phantom_dataset

    write_phantom_dataset(
        work / "phantom",
        PhantomSpec(shape=(64, 64, 24), n_normal=4, n_abnormal=4, min_radius=3, max_radius=6, seed=1),
    )
    src = sorted((work / "phantom").rglob("*_flair.nii.gz"))
    root = work / "scans"
    root.mkdir()
    for i in range(n):
        shutil.copy(src[i % len(src)], root / f"scan_{i:03d}_flair.nii.gz")
    return root


def _sample(t0: float, client, node_types: dict) -> dict:
    import ray
    from ray import serve

    from patchrank.pipeline.bench.sim_cluster import node_type_of

    b = client.backlog()
    replicas = {"Ingest": 0, "Scorer": 0}
    app = serve.status().applications.get("patchrank")
    if app is not None:
        for name, d in app.deployments.items():
            replicas[name] = int(d.replica_states.get("RUNNING", 0))
    nodes = {t: 0 for t in TYPES}
    for n in ray.nodes():
        if n["Alive"]:
            kind = node_type_of(n["Resources"], node_types)
            if kind in nodes:
                nodes[kind] += 1
    return {
        "t": round(time.monotonic() - t0, 1),
        "backlog": b.total,
        "ingest": replicas["Ingest"],
        "scorer": replicas["Scorer"],
        **nodes,
        "workers": sum(nodes.values()),
    }


def _scorer_replica_nodes() -> list[str]:
    """Node ids hosting a live Scorer replica actor (GCS actor table: this cluster runs no dashboard)."""
    from ray._private.state import actors

    live = actors(actor_state_name="ALIVE").values()
    return sorted({a["Address"]["NodeID"] for a in live if a["ActorClassName"].endswith(":Scorer")})


def _plot(timeline: list[dict], killed: dict | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in timeline]
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    a.plot(t, [r["backlog"] for r in timeline], color="black", label="backlog (lag + pending)")
    a.set_ylabel("stream entries")
    a.legend(loc="upper right")
    for key, style in (("ingest", "-"), ("scorer", "-"), ("ingest_cpu", "--"), ("gpu_scorer", "--")):
        label = f"{key} replicas" if key in ("ingest", "scorer") else f"{key} nodes"
        b.step(t, [r[key] for r in timeline], style, where="post", label=label)
    b.set_ylabel("count")
    b.set_ylim(bottom=0)
    b.set_xlabel("seconds since enqueue")
    b.legend(loc="upper right")
    if killed:
        for ax in (a, b):
            ax.axvline(killed["at_s"], color="red", lw=1)
        a.text(killed["at_s"], a.get_ylim()[1] * 0.9, " gpu_scorer node killed", color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _counts(out: Path, scan_ids: list[str]) -> dict:
    from patchrank.pipeline.service.results import ResultStore

    store = ResultStore(out)
    rows = store.sql("SELECT scan_id, status, deliveries FROM scans")[1]
    physical = store.sql("SELECT scan_id, count(*) FROM scans_all GROUP BY 1 HAVING count(*) > 1")[1]
    got = {r[0] for r in rows}
    return {
        "scans": len(scan_ids),
        "results": len(rows),
        "lost": len(set(scan_ids) - got),
        "duplicates": len(physical),
        "failed": sum(r[1] != "ok" for r in rows),
        "redelivered": sum(r[2] > 1 for r in rows),
    }


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from patchrank.pipeline.bench.serve import fresh_checkpoint
    from patchrank.pipeline.bench.sim_cluster import SimCluster, node_types_from_yaml
    from patchrank.pipeline.commands.enqueue import enqueue_paths
    from patchrank.pipeline.service.embedded_redis import EmbeddedRedis
    from patchrank.pipeline.service.screening import deploy
    from patchrank.pipeline.service.settings import AppArgs, Placement, ServiceConfig
    from patchrank.pipeline.service.streams import StreamClient

    scorer_nodes = args.max_nodes - 1
    node_types = node_types_from_yaml(
        _yaml(args.cluster_yaml), cpu_scale=args.cpu_scale, caps={"ingest_cpu": 1, "gpu_scorer": scorer_nodes}
    )
    work = Path(tempfile.mkdtemp(prefix="bench-autoscale-"))
    root, ckpt = _scans(work, args.scans), fresh_checkpoint(work / "model.pt", 32)
    cluster = SimCluster(node_types, max_nodes=args.max_nodes, idle_timeout_s=args.idle_timeout)
    timeline: list[dict] = []
    killed = None
    print(f"bench autoscale: {args.scans} scans, node types {json.dumps(node_types)}", flush=True)
    try:
        with EmbeddedRedis() as url:
            cluster.start()
            ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
            serve.start(proxy_location="Disabled")
            service = ServiceConfig(
                redis_url=url,
                namespace="bench-autoscale",
                checkpoint=str(ckpt),
                output_dir=str(work / "out"),
                allowed_roots=[str(root)],
                max_inflight_scans=2,
                chunk_slices=8,
                max_batch_size=16,
                claim_idle_ms=6000,
                claim_every_s=1.0,
                max_deliveries=10,
                flush_scans=4,
                flush_interval_s=0.5,
                trim_every_s=5.0,
                torch_threads=1,
            )
            down = args.downscale_delay
            app = AppArgs(
                service=service,
                scorer=Placement(
                    num_cpus=1,
                    num_gpus=1,
                    min_replicas=1,
                    max_replicas=scorer_nodes,
                    target=1.0,
                    upscale_delay_s=2.0,
                    downscale_delay_s=down,
                ),
                ingest=Placement(
                    num_cpus=1,
                    resources={"ingest_node": 0.5},
                    min_replicas=1,
                    max_replicas=2,
                    target=16.0,
                    upscale_delay_s=2.0,
                    downscale_delay_s=down,
                ),
            )
            client = StreamClient.from_url(url, service.keys)
            deploy(app)
            t0 = time.monotonic()
            baseline = _sample(t0, client, node_types)
            report = enqueue_paths(client, [root], show=False)
            scan_ids = [sid for sid, _ in report.queued]
            t0 = time.monotonic()
            drained_at = peak_at = None
            peak = baseline["workers"]
            while time.monotonic() - t0 < args.timeout:
                row = _sample(t0, client, node_types)
                timeline.append(row)
                print(" ".join(f"{k} {v}" for k, v in row.items()), flush=True)
                if row["workers"] > peak:
                    peak, peak_at = row["workers"], row["t"]
                # Kill once a third of the backlog is scored, with every scorer replica up; by the time five
                # sixths are scored, kill whatever scorer node runs, so that every run loses one mid-drain.
                largest = row["gpu_scorer"] == scorer_nodes and row["scorer"] == scorer_nodes
                due = row["backlog"] <= (args.scans * 2 // 3 if largest else args.scans // 6)
                if args.kill and killed is None and row["scorer"] > 0 and 0 < row["backlog"] and due:
                    hosts = _scorer_replica_nodes()
                    if hosts:
                        pid = cluster.kill_node(hosts[0])
                        killed = {"type": "gpu_scorer", "at_s": row["t"], "raylet_pid": pid, "at_largest": largest}
                        print(f"killed a gpu_scorer node (raylet pid {pid}) at {row['t']}s", flush=True)
                if drained_at is None and row["backlog"] == 0:
                    drained_at = row["t"]
                if drained_at is not None and (
                    row["workers"] <= baseline["workers"]
                    and row["scorer"] <= 1
                    and row["ingest"] <= 1
                    and row["t"] > drained_at
                ):
                    break
                time.sleep(1.0)
            client.close()
            counts = _counts(work / "out", scan_ids)
            ended = timeline[-1] if timeline else baseline
            summary = {
                **counts,
                "baseline_worker_nodes": baseline["workers"],
                "max_worker_nodes": max(r["workers"] for r in timeline) if timeline else baseline["workers"],
                "end_worker_nodes": ended["workers"],
                "end_replicas": {"ingest": ended["ingest"], "scorer": ended["scorer"]},
                "scale_up_s": peak_at,
                "scale_down_s": None if drained_at is None else round(ended["t"] - drained_at, 1),
                "drained_s": drained_at,
                "killed": killed,
                "node_types": {k: v["resources"] for k, v in node_types.items() if v["max_workers"] > 0},
                "idle_timeout_s": args.idle_timeout,
                "downscale_delay_s": down,
            }
            serve.shutdown()
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    cols = ["t", "backlog", "ingest", "scorer", "ingest_cpu", "gpu_scorer"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in timeline:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(json.dumps(summary, indent=2))
    if args.png:
        _plot(timeline, killed, args.png)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**summary, "timeline": timeline}, indent=2))
    ok = (
        summary["lost"] == 0
        and summary["duplicates"] == 0
        and summary["end_worker_nodes"] <= summary["baseline_worker_nodes"] < summary["max_worker_nodes"]
    )
    return 0 if ok else 1
