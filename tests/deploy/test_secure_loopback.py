"""docs/deploy.md on loopback: a SuperLink and three SuperNodes as separate processes on 127.0.0.1.

Insecure (the lab setup; after two rounds one SuperNode is killed and the run must go
on without it), then TLS with SuperNode authentication using the certificates and keys
`deploy/make_certs.sh` makes, then a SuperNode whose public key the SuperLink does not
know, which must be turned away. FedAvg (expert-only upload), one client pinned to each
node, data and pretraining kept tiny.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509 import DNSName, IPAddress, SubjectAlternativeName, load_pem_x509_certificate

from tests.deploy.loopback import BIN, REPO, Loopback, descendants, json_of, uploads, wait_for_port, wait_until

MAKE_CERTS = REPO / "deploy" / "make_certs.sh"
NODES = 3
RUN_CONFIG = [
    "strategy='fedavg'", "experiment='digits-quick'", f"federation.num_clients={NODES}",
    "federation.placement='partition'", "federation.rounds=2", "federation.eval_every=2",
    "federation.round_timeout=300",
    "data.samples_per_client=20", "model.pretrain_steps=200", "train.local_epochs=1"]

needs_tools = pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("ssh-keygen")),
                                 reason="deploy/make_certs.sh needs openssl and ssh-keygen")


def make_certs(out, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(MAKE_CERTS), "-o", str(out), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def certs(tmp_path):
    out = tmp_path / "certs"
    proc = make_certs(out, "-n", str(NODES))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def lab(tmp_path):
    with Loopback(tmp_path) as lab:
        yield lab


def tls_superlink(lab: Loopback, certs) -> tuple[str, str]:
    """A TLS SuperLink that only admits registered SuperNodes; returns (address, connection name)."""
    address = lab.superlink("--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
                            "--ssl-keyfile", str(certs / "server.key"), "--enable-supernode-auth")
    return address, lab.connection("lab-tls", address, certs / "ca.crt")


def register(lab: Loopback, connection: str, public_key) -> str:
    proc = lab.flwr("supernode", "register", str(public_key), connection, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(json_of(proc.stdout)["node-id"])


def node_status(lab: Loopback, connection: str) -> dict[str, str]:
    proc = lab.flwr("supernode", "ls", connection, "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {n["node-id"]: n["status"] for n in json_of(proc.stdout)["nodes"]}


def tls_node_args(certs, key: str) -> tuple[str, ...]:
    return ("--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(certs / key))


def check_two_rounds_from_every_node(summary: dict, out) -> None:
    assert summary["rounds"] == 2
    assert summary["final"]["client-train/rejected"] == 0
    assert 0 < summary["final"]["acc-mean"] <= 1
    assert uploads(out) == {(r, c) for r in (1, 2) for c in range(NODES)}   # every client uploaded every round


@needs_tools
def test_make_certs_writes_a_ca_a_server_certificate_with_sans_and_openssh_ecdsa_keys(tmp_path):
    out = tmp_path / "certs"
    assert make_certs(out, "-n", "2", "-H", "10.0.0.5,superlink.lab").returncode == 0
    cert = load_pem_x509_certificate((out / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(IPAddress)] == ["10.0.0.5"]
    assert sans.get_values_for_type(DNSName) == ["superlink.lab"]
    assert subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.pem")],
                          capture_output=True, timeout=30).returncode == 0
    for i in range(2):      # the formats flower-supernode and `flwr supernode register` load
        private = load_ssh_private_key((out / f"supernode-{i}").read_bytes(), None)
        public = load_ssh_public_key((out / f"supernode-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key() == public
    assert not (out / "supernode-2").exists()
    assert make_certs(out).returncode == 1                    # never overwrites without -f
    for bad in (["-n", "x"], ["-H", ""], ["-q"], ["extra"]):
        proc = make_certs(tmp_path / "other", *bad)
        assert proc.returncode == 2 and "usage:" in proc.stderr


@needs_tools
@pytest.mark.slow
def test_fedavg_runs_two_rounds_over_tls_with_authenticated_supernodes(lab, certs, tmp_path):
    address, connection = tls_superlink(lab, certs)
    registered = {register(lab, connection, certs / f"supernode-{i}.pub") for i in range(NODES)}
    lab.supernodes(address, NODES, lambda i: tls_node_args(certs, f"supernode-{i}"))
    wait_until(lambda: node_status(lab, connection) == dict.fromkeys(registered, "online"), 120,
               "all registered SuperNodes online")
    out = tmp_path / "run"
    check_two_rounds_from_every_node(lab.run_app(connection, RUN_CONFIG, out), out)


@needs_tools
@pytest.mark.slow
def test_a_supernode_whose_key_is_not_registered_is_refused(lab, certs):
    address, connection = tls_superlink(lab, certs)
    known = register(lab, connection, certs / "supernode-0.pub")
    member, _, _ = lab.supernode("member", address, "partition-id=0 num-partitions=2",
                                 *tls_node_args(certs, "supernode-0"))
    stranger, log, _ = lab.supernode("stranger", address, "partition-id=1 num-partitions=2",
                                     *tls_node_args(certs, "supernode-1"), wait=False)
    try:
        code = stranger.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the unregistered SuperNode is still running after 120 s:\n{log.read_text()[-2000:]}")
    assert code != 0
    assert "Exit Code: 305" in log.read_text()       # Flower's SUPERNODE_CONNECTION_ERROR
    # Same CA, same SuperLink: the registered node gets in, and it is the only node there.
    wait_until(lambda: node_status(lab, connection) == {known: "online"}, 120, "the registered SuperNode online")
    assert member.poll() is None


@pytest.mark.slow
def test_three_insecure_supernodes_run_two_rounds_then_one_dies_and_the_run_goes_on(lab, tmp_path):
    """The lab setup of docs/deploy.md: 3 SuperNodes, every client uploads in rounds 1 and 2;
    then node 2 is killed (its whole process tree) and round 3 finishes with the other two
    once the quorum is in (federation.min_replies, then federation.straggler_timeout), not
    after the 300 s round timeout; the record names the missing node and client."""
    address = lab.superlink()
    connection = lab.connection("lab", address)
    nodes = [lab.supernode(f"node{i}", address, f"partition-id={i} num-partitions={NODES}", wait=False)
             for i in range(NODES)]
    for proc, log, port in nodes:
        wait_for_port(port, proc, log)
    out = tmp_path / "run"
    config = [c for c in RUN_CONFIG if not c.startswith(("federation.rounds", "federation.eval_every"))] + [
        "federation.rounds=3", "federation.eval_every=3", "federation.min_replies=0.6",
        "federation.straggler_timeout=5", f"out='{out}'"]
    run = subprocess.Popen([str(BIN / "flwr"), "run", ".", connection, "--run-config", " ".join(config), "--stream"],
                           cwd=REPO, env=lab.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.procs.append(run)
    rounds = out / "rounds.jsonl"
    wait_until(lambda: rounds.exists() and len(rounds.read_text().splitlines()) >= 2, 400, "rounds 1-2's records")
    victim = nodes[2][0]
    for pid in [*descendants(victim.pid), victim.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    started = time.monotonic()
    wait_until(lambda: (out / "summary.json").exists(), 300, "the run's summary after node 2 died")
    assert time.monotonic() - started < 150          # round 3 did not wait out the 300 s timeout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and 0 < summary["final"]["acc-mean"] <= 1
    assert uploads(out) == {(r, c) for r in (1, 2) for c in range(NODES)} | {(3, 0), (3, 1)}
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events[-1]["missed"]["train"]["clients"] == [2] and len(events[-1]["missed"]["train"]["nodes"]) == 1
    rows = [json.loads(line) for line in rounds.read_text().splitlines()]
    assert [r["missed-clients"] for r in rows[:2]] == [0, 0] and rows[-1]["missed-clients"] >= 1
