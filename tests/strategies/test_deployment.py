"""Deployment path: a real SuperLink and two SuperNodes on localhost, `flwr run .` against them.

The same ServerApp/ClientApp as the simulation, over Flower's Fleet API, one logical
client pinned to each node (`placement=partition`), MetaMoE's multi-phase protocol
(training rounds, the upload phase, unification on the server). Flower's home
(connections, installed apps) is a temp dir: the user's ~/.flwr is never touched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early ({proc.returncode}):\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port} after {timeout:.0f} s:\n{log.read_text()[-2000:]}")


@pytest.fixture
def superlink(tmp_path):
    """A SuperLink and two SuperNodes (partition-id 0 and 1); yields (connection name, env)."""
    home = tmp_path / "flwr-home"
    home.mkdir()
    link_port = _free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n')
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": "1"}
    procs = []

    def start(name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=env, cwd=tmp_path, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(proc)
        return proc, log

    try:
        link, log = start("superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port))
        _wait_for_port(link_port, link, log)
        for i in range(2):
            port = _free_port()
            node, log = start(f"node{i}", "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                              "--port", str(port), "--node-config", f"partition-id={i} num-partitions=2")
            _wait_for_port(port, node, log)
        yield "test", env
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_metamoe_runs_on_a_superlink_with_one_client_per_node(superlink, tmp_path):
    connection, env = superlink
    out = tmp_path / "run"
    run_config = " ".join([
        "strategy='metamoe'", "experiment='metamoe-digits'", "federation.num_clients=2",
        "federation.placement='partition'", "federation.rounds=1", "data.samples_per_client=20",
        "model.pretrain_steps=200", "train.local_epochs=1", "metamoe.candidates=60", "metamoe.proxies=15",
        "metamoe.relevance_epochs=5", "metamoe.finetune_epochs=1", f"out='{out}'"])
    proc = subprocess.run([str(BIN / "flwr"), "run", ".", connection, "--run-config", run_config, "--stream"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    deadline = time.monotonic() + 60          # --stream may return just before the summary lands
    while not (out / "summary.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 1
    assert 0 < summary["final"]["acc-mean"] <= 1
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert rows[-1]["server-eval/rejected-uploads"] == 0
    ledger = (out / "ledger.csv").read_text().splitlines()
    uploads = {line.split(",")[2] for line in ledger[1:] if line.split(",")[1] == "up" and int(line.split(",")[3]) > 0}
    assert uploads == {"0", "1"}               # both pinned clients uploaded their expert once
