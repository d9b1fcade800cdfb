"""On Ray, as users run it: SIGKILL a run mid-way and resume it; 1 vs 2 workers.

The whole process tree (driver, Ray, workers) is killed, so nothing gets to clean
up: the resumed run must find the server checkpoint and the clients' state
versions it names, and end with the numbers of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.catalogue import build_config
from experiments.runner import run_simulation

SMALL = ["--clients", "4", "--rounds", "6", "--set", "data.samples_per_client=20", "--set", "model.pretrain_steps=200",
         "--set", "train.local_epochs=2", "--workers", "2", "--quiet"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _run(*args: str) -> list[str]:
    return [sys.executable, "-m", "experiments.cli", "run", *args]


def _numbers(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    rows = [{k: v for k, v in json.loads(line).items() if k != "wall-s"}
            for line in (out / "rounds.jsonl").read_text().splitlines()]
    return {"final": summary["final"], "per_client": summary["per_client"], "per_domain": summary["per_domain"],
            "bytes": (summary["bytes_up"], summary["bytes_down"], summary["bytes_p2p"]), "rounds": rows,
            "ledger": (out / "ledger.csv").read_text()}


@pytest.mark.slow
def test_a_sigkilled_run_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    base = ["--strategy", "local", *SMALL]
    done = subprocess.run(_run(*base, "--out", str(whole)), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    proc = subprocess.Popen(_run(*base, "--out", str(cut)), env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rounds = cut / "rounds.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if rounds.exists() and len(rounds.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    assert (cut / "checkpoint.npz").exists()

    refused = subprocess.run(_run(*base, "--out", str(cut)), env=ENV, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr   # no silent restart from round 0

    resumed = subprocess.run(_run("--resume", str(cut), "--quiet"), env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _numbers(cut) == _numbers(whole)
    assert not (cut / "checkpoint.npz").exists()
    again = subprocess.run(_run("--resume", str(cut)), env=ENV, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_one_and_two_workers_give_the_same_numbers(tmp_path):
    """Per-client seeds and state that follows the client: the worker count and which worker
    trains which client never change a result (here a stateful personalised method)."""
    values = {"strategy": "fedmoe-da", "model.backbone": "mixer-moe", "federation.num_clients": 6,
              "federation.rounds": 3, "federation.fraction_train": 0.5, "data.samples_per_client": 20,
              "model.pretrain_steps": 200, "train.local_epochs": 1, "fedmoe_da.every": 1, "fedmoe_da.top_p": 2,
              "simulation.vectorise": False}   # bit for bit one by one; vectorised (default): to ~1e-8, the
    # grouping of a message's clients then changes float reduction order (tests/strategies/test_vectorised_runs.py)
    one = run_simulation(build_config("digits-domains", {**values, "simulation.num_workers": 1}), show_progress=False)
    two = run_simulation(build_config("digits-domains", {**values, "simulation.num_workers": 2}), show_progress=False)
    assert one.final == two.final
    assert one.per_client == two.per_client
    assert (one.bytes_up, one.bytes_down, one.bytes_p2p) == (two.bytes_up, two.bytes_down, two.bytes_p2p)
