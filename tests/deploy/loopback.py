"""Real Flower processes on 127.0.0.1 for the deployment tests: a SuperLink, SuperNodes, `flwr`.

Shared by `tests/strategies/test_deployment.py` and `tests/deploy/`. Every wait has a
timeout. Every process starts in its own session and is stopped with all its
descendants, also when a test fails: Flower starts its SuperExec (and through it the
ServerApp/ClientApp processes) detached, in sessions of their own, so stopping only
our process groups would leave them running until they notice their parent is gone.
Flower's home (connections, installed apps) is a temp dir: ~/.flwr is never touched.
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

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early ({proc.returncode}):\n{log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port} after {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def wait_until(condition, timeout: float, what: str, poll: float = 0.5):
    """Poll `condition()` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (Linux /proc; elsewhere none are found)."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                children = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _signal_groups(pids: list[int], sig: int) -> None:
    own = os.getpgrp()
    for pid in pids:
        try:
            group = os.getpgid(pid)
            if group != own:
                os.killpg(group, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass


class Loopback:
    """The Flower processes of one test, all on 127.0.0.1, logs and home under `root`.

    Use as a context manager: leaving it stops everything it started (SIGTERM, then
    SIGKILL after at most about 2 x `grace` + 5 seconds), whatever happened inside.
    """

    def __init__(self, root: Path, grace: float = 15.0) -> None:
        self.root = root
        self.grace = grace
        self.home = root / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "FLWR_HOME": str(self.home),
                    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "OMP_NUM_THREADS": "1"}
        self.procs: list[subprocess.Popen] = []
        self.links: list[subprocess.Popen] = []
        self._connections: dict[str, dict[str, object]] = {}

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- processes ----------------------------------------------------------
    def start(self, name: str, *argv: str) -> tuple[subprocess.Popen, Path]:
        """Start `argv` (a command in the venv's bin) in a session of its own, output to `name`.log."""
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen([str(BIN / argv[0]), *argv[1:]], env=self.env, cwd=self.root, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def superlink(self, *tls_args: str) -> str:
        """Start a SuperLink (insecure unless `tls_args` are given); return its address once it listens."""
        port = free_port()
        link, log = self.start("superlink", "flower-superlink", *(tls_args or ("--insecure",)),
                               "--host", HOST, "--port", str(port))
        self.links.append(link)
        wait_for_port(port, link, log)
        return f"{HOST}:{port}"

    def supernode(self, name: str, address: str, node_config: str, *tls_args: str,
                  wait: bool = True) -> tuple[subprocess.Popen, Path, int]:
        """Start a SuperNode for `address`; with `wait`, return once its own Runtime API listens."""
        port = free_port()
        node, log = self.start(name, "flower-supernode", *(tls_args or ("--insecure",)), "--superlink", address,
                               "--port", str(port), "--node-config", node_config)
        if wait:
            wait_for_port(port, node, log)
        return node, log, port

    def supernodes(self, address: str, count: int, tls_args=lambda i: ()) -> None:
        """`count` SuperNodes node0..node<count-1>, node i holding partition-id i of `count`, started
        together (start-up is mostly imports: in parallel it is one node's time)."""
        nodes = [self.supernode(f"node{i}", address, f"partition-id={i} num-partitions={count}", *tls_args(i),
                                wait=False) for i in range(count)]
        for proc, log, port in nodes:
            wait_for_port(port, proc, log)

    def stop(self) -> None:
        """Stop SuperNodes (and anything else) before SuperLinks, so that nodes can still sign off
        (stopped after their link they keep retrying); then every descendant; SIGKILL what is left."""
        tree = [p.pid for p in self.procs]
        tree += [pid for top in list(tree) for pid in descendants(top)]
        for batch in ([p for p in self.procs if p not in self.links], self.links):
            _signal_groups([p.pid for p in batch], signal.SIGTERM)
            deadline = time.monotonic() + self.grace
            for proc in batch:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        _signal_groups([pid for pid in tree if _alive(pid)], signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
            time.sleep(0.2)
        _signal_groups([pid for pid in tree if _alive(pid)], signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    # -- the flwr CLI -------------------------------------------------------
    def connection(self, name: str, address: str, root_certificates: Path | None = None) -> str:
        """Add a SuperLink connection to this home's config.toml (TLS when a CA file is given)."""
        entry: dict[str, object] = {"address": address}
        if root_certificates is None:
            entry["insecure"] = True
        else:
            entry["root-certificates"] = str(root_certificates)
        self._connections[name] = entry
        lines = ["[superlink]", f'default = "{name}"', ""]
        for conn, values in self._connections.items():
            lines.append(f"[superlink.{conn}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
            lines.append("")
        (self.home / "config.toml").write_text("\n".join(lines))
        return name

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flwr"), *args], cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def run_app(self, connection: str, run_config: list[str], out: Path, timeout: float = 480.0) -> dict:
        """`flwr run .` against `connection`; return the run's summary.json once it is written."""
        proc = self.flwr("run", ".", connection, "--run-config", " ".join([*run_config, f"out='{out}'"]),
                         "--stream", timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # --stream may return just before the summary lands
        wait_until(lambda: (out / "summary.json").exists(), 60, f"{out}/summary.json after `flwr run` returned")
        return json.loads((out / "summary.json").read_text())

    def run_app_at(self, app: Path, connection: str, run_config: list[str],
                   timeout: float = 300.0) -> subprocess.CompletedProcess:
        """`flwr run APP connection --stream` for an app directory other than this repository
        (see `write_app`); fails on a non-zero exit with the output's tail."""
        proc = subprocess.run([str(BIN / "flwr"), "run", str(app), connection, "--run-config", " ".join(run_config),
                               "--stream"], cwd=app, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc


def uploads(out: Path) -> set[tuple[int, int]]:
    """(round, client) of every non-empty client -> server upload in a run's ledger.csv."""
    rows = [line.split(",") for line in (out / "ledger.csv").read_text().splitlines()[1:]]
    return {(int(r[0]), int(r[2])) for r in rows if r[1] == "up" and int(r[3]) > 0}


def json_of(stdout: str) -> dict:
    """The JSON object a `flwr ... --format json` call printed (after any status lines)."""
    return json.loads(stdout[stdout.index("{"):])


def write_app(path: Path, serverapp: str, clientapp: str, config: dict[str, object],
              files: dict[str, str] | None = None) -> Path:
    """A Flower app project at `path`: pyproject.toml naming the two components (each from this
    project's `files`, {relative path: source}, or from a package installed in the venv) and
    `config` as its `[tool.flwr.app.config]`, the keys `--run-config` may override.

    `flwr run` ships the directory as a FAB: its .py/.toml/.md/... files, minus test_*.py;
    the SuperLink and SuperNodes unpack it under their Flower home and put it first on the
    app process's sys.path, so `files` shadow nothing only if their names are new."""
    path.mkdir(parents=True, exist_ok=True)
    table = [f"{key} = {json.dumps(value)}" for key, value in config.items()]   # JSON scalars are TOML
    (path / "pyproject.toml").write_text("\n".join([
        "[build-system]", 'requires = ["setuptools>=68"]', 'build-backend = "setuptools.build_meta"', "",
        "[project]", f'name = "{path.name}"', 'version = "1.0.0"', 'description = "a loopback test app"',
        'license = "Apache-2.0"', "dependencies = []", "",
        "[tool.flwr.app]", 'publisher = "loopback"', "",
        "[tool.flwr.app.components]", f'serverapp = "{serverapp}"', f'clientapp = "{clientapp}"', "",
        "[tool.flwr.app.config]", *table, ""]))
    for name, source in (files or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(source)
    return path
