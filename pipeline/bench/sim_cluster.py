"""A simulated multi-node Ray cluster on this machine, with node types read from ray_cluster.yaml.

Ray's fake multi-node provider (ray.autoscaler._private.fake_multi_node, the provider behind
`ray.cluster_utils.AutoscalingCluster`) launches every "node" as another raylet on this
host, so the real autoscaler adds and removes nodes from the resources that Serve replicas
ask for. Not `AutoscalingCluster` itself: in Ray 2.60 it reads an example.yaml that the
wheel does not ship, and its start/shutdown run `ray stop --force`, which kills every Ray
process of the user on the machine. Here the head runs on a free port in its own temp dir,
the provider is loaded as an `external` provider (no defaults file needed), and teardown
kills only processes whose command line names this cluster's GCS port or temp dir.

Node types: each non-head type of ray_cluster.yaml keeps its name and custom resources; its
CPUs are divided by `cpu_scale` (logical CPUs, not real cores), GPUs stay as logical GPUs, and
max_workers is capped so the sum stays within `max_nodes`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from patchrank.pipeline.service.embedded_redis import free_port

PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
HEAD_TYPE = "ray.head.default"  # the fake provider's name for the head
OBJECT_STORE = 100 * 1024 * 1024  # bytes of object store per simulated node


def node_types_from_yaml(path: str | Path, *, cpu_scale: float, caps: dict[str, int]) -> dict:
    """Worker node types of a cluster-launcher YAML, scaled down for a one-machine simulation.
    caps: max_workers per type name (types absent from caps get 0 and are never launched)."""
    cfg = yaml.safe_load(Path(path).read_text())
    out = {}
    for name, t in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        res = dict(t.get("resources", {}))
        if "CPU" in res:
            res["CPU"] = max(1, int(round(res["CPU"] / cpu_scale)))
        cap = int(caps.get(name, 0))
        res["object_store_memory"] = OBJECT_STORE
        out[name] = {
            "resources": res,
            "node_config": {},
            "min_workers": min(int(t.get("min_workers", 0)), cap),
            "max_workers": min(int(t.get("max_workers", 0)), cap),
        }
    return out


def cluster_config(node_types: dict, *, gcs_address: str, max_nodes: int, idle_timeout_s: float) -> dict:
    return {
        "cluster_name": "patchrank-sim",
        "max_workers": max_nodes,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_s / 60.0,
        "provider": {
            "type": "external",
            "module": PROVIDER,
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            **node_types,
            HEAD_TYPE: {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
        },
        "head_node_type": HEAD_TYPE,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


@dataclass
class SimCluster:
    node_types: dict
    max_nodes: int = 3
    idle_timeout_s: float = 10.0
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prsim-")))

    @property
    def address(self) -> str:
        from ray._private.services import get_node_ip_address

        return f"{get_node_ip_address()}:{self.port}"

    def start(self) -> None:
        cfg = cluster_config(
            self.node_types, gcs_address=self.address, max_nodes=self.max_nodes, idle_timeout_s=self.idle_timeout_s
        )
        conf = self.workdir / "autoscaling.json"
        conf.write_text(json.dumps(cfg))
        env = {
            **os.environ,
            "RAY_FAKE_CLUSTER": "1",
            "RAY_AUTH_MODE": "disabled",  # a throw-away local simulation: no token to hand around
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",  # a killed node is declared dead after 10 s (default 30)
        }
        system = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}
        cmd = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            f"--port={self.port}",
            "--num-cpus=0",
            f"--object-store-memory={OBJECT_STORE}",
            f"--temp-dir={self.workdir / 'ray'}",
            "--include-dashboard=false",
            f"--autoscaling-config={conf}",
            f"--system-config={json.dumps(system, separators=(',', ':'))}",
            "--disable-usage-stats",
        ]
        log = open(self.workdir / "ray-start.log", "wb")  # noqa: SIM115
        try:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True, timeout=120)
        finally:
            log.close()

    def processes(self) -> list[psutil.Process]:
        """Every process of this cluster (head, simulated nodes, their workers), by command line."""
        marks = (self.address, f"--gcs_server_port={self.port}", str(self.workdir))
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info.get("cmdline") or [])
            if p.pid != os.getpid() and any(m in cmd for m in marks):
                found.append(p)
        return found

    def raylet_of(self, node_id: str) -> psutil.Process:
        for p in self.processes():
            cmd = p.info.get("cmdline") or []
            if cmd and Path(cmd[0]).name == "raylet" and f"--node_id={node_id}" in cmd:
                return p
        raise LookupError(f"no raylet of node {node_id}")

    def kill_node(self, node_id: str) -> int:
        """SIGKILL one simulated node's raylet (its workers fate-share with it); returns the pid."""
        p = self.raylet_of(node_id)
        p.send_signal(signal.SIGKILL)
        return p.pid

    def shutdown(self) -> None:
        for _ in range(3):  # the autoscaler may be launching a node while we kill
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=10)
            time.sleep(0.5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def node_type_of(resources: dict, node_types: dict) -> str:
    """Which simulated type a live node is, from the resources it advertises."""
    for name, t in node_types.items():
        want = {k: v for k, v in t["resources"].items() if k != "object_store_memory"}
        if all(abs(float(resources.get(k, 0)) - float(v)) < 1e-6 for k, v in want.items()):
            return name
    return "head" if not resources.get("CPU") else "other"
