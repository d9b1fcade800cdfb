"""A simulation attached to a running Ray cluster (`simulation.ray_address`), on loopback.

The test starts its own head node (`ray start --head --block`, its own temp dir and
ports, in a session of its own), runs a 2-round FedAvg through the CLI in a
subprocess (a clean Ray driver) attached to it, and reads the head's own records
(GCS): the ClientApp actors were created there, on that node. The head and every
process it started are stopped by pid, also when the test fails: `ray stop` would
stop every Ray instance on the machine, other tests' included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiments.runner import num_nodes
from fedmoe_sim.config import ConfigError, resolve_config
from tests.deploy.loopback import descendants

BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
TINY = ["--strategy", "fedavg", "--clients", "2", "--rounds", "2", "--quiet",
        "--set", "data.samples_per_client=20", "--set", "model.pretrain_steps=50",
        "--set", "train.local_epochs=1"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _mentioning(text: str) -> list[int]:
    """Pids whose command line names `text` (our cluster's unique temp dir)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(entry))
            except OSError:
                pass
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _stopped(proc: subprocess.Popen, pids: set[int], temp_dir: str) -> bool:
    return proc.poll() is not None and not (set(_mentioning(temp_dir)) | {p for p in pids if _alive(p)})


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _stop_cluster(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM to the head's process group (`ray start --block` then stops what it started),
    SIGKILL after 20 s to whatever is left of it, its descendants and anything naming its
    temp dir (Ray's workers)."""
    pids = set(descendants(proc.pid)) | set(_mentioning(temp_dir))
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL:
            _signal_all(sorted(pids | set(_mentioning(temp_dir))), sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not _stopped(proc, pids, temp_dir):
            time.sleep(0.2)
        if _stopped(proc, pids, temp_dir):
            return


@pytest.fixture
def ray_head():
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs; yields (address, temp dir)."""
    temp_dir = tempfile.mkdtemp(prefix="fmray-", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    gcs, client, dash, agent, agent_grpc, env_agent, metrics, node_mgr, obj_mgr = _free_ports(9)
    argv = [str(BIN / "ray"), "start", "--head", "--block", f"--node-ip-address={HOST}", f"--port={gcs}",
            "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp_dir}", "--disable-usage-stats",
            "--include-dashboard=false", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_mgr}", f"--object-manager-port={obj_mgr}",
            "--object-store-memory=100000000"]
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    log = Path(temp_dir) / "head.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield f"{HOST}:{gcs}", temp_dir
    finally:
        _stop_cluster(proc, temp_dir)
        left = _mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster still running: {left}"


QUERY = """
import json, ray
from ray._private import state
ray.init(address=ADDRESS, logging_level="ERROR", log_to_driver=False)
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
actors = [{"cls": a["ActorClassName"], "node": a["Address"]["NodeID"], "job": a["JobID"]}
          for a in state.actors().values()]
print(json.dumps({"nodes": nodes, "actors": actors}))
ray.shutdown()
"""


@pytest.mark.slow
def test_simulation_runs_on_an_attached_cluster(ray_head, tmp_path):
    address, _ = ray_head
    out = tmp_path / "run"
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run([sys.executable, "-m", "experiments.cli", "run", *TINY, "--out", str(out),
                          "--set", f"simulation.ray_address={address}"],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["strategy"] == "fedavg"
    rounds = [json.loads(line)["round"] for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert rounds[-1] == 2
    assert json.loads((out / "config.json").read_text())["config"]["simulation"]["ray_address"] == address

    query = subprocess.run([sys.executable, "-c", QUERY.replace("ADDRESS", repr(address))],
                           env=env, capture_output=True, text=True, timeout=90)
    assert query.returncode == 0, query.stderr[-3000:]
    seen = json.loads(query.stdout.strip().splitlines()[-1])
    workers = [a for a in seen["actors"] if a["cls"] == "ClientAppActor"]
    # the cluster's 2 CPUs at 1 CPU per worker: Flower's pool made 2 actors, on the head's node
    assert len(workers) == 2 and {a["node"] for a in workers} == set(seen["nodes"]) and len(seen["nodes"]) == 1


def test_attached_run_sizes_nodes_from_the_cluster_not_this_machine():
    cfg = resolve_config({"simulation.ray_address": "auto", "federation.num_clients": 100})
    assert num_nodes(cfg, cluster_slots=12) == 12
    assert num_nodes(resolve_config({"simulation.ray_address": "auto", "federation.num_clients": 5}), 12) == 5
    pinned = resolve_config({"simulation.ray_address": "auto", "simulation.num_workers": 3})
    assert num_nodes(pinned, cluster_slots=12) == 3


@pytest.mark.parametrize("address", ["ray://10.0.0.5:10001", "10.0.0.5", "head:0", "head:port", "a b:6379", "local"])
def test_bad_ray_address_fails_in_one_line(address):
    with pytest.raises(ConfigError) as err:
        resolve_config({"simulation.ray_address": address})
    assert "simulation.ray_address" in str(err.value) and repr(address) in str(err.value)
    assert "\n" not in str(err.value)


def test_attaching_where_no_head_listens_fails_fast_in_one_line():
    from experiments.runner import cluster_actor_slots

    port = _free_ports(1)[0]
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Ray head answers there.*--port={port}"):
        cluster_actor_slots(resolve_config({"simulation.ray_address": f"{HOST}:{port}"}))
    assert time.monotonic() - start < 10
