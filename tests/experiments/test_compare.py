"""compare: resume after a kill, refusal of a foreign directory, fairness check."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.compare import check_identical_partitions

SMALL = ["--set", "federation.num_clients=4", "--set", "federation.rounds=2", "--set", "data.samples_per_client=20",
         "--set", "model.pretrain_steps=200", "--set", "train.local_epochs=1", "--set", "simulation.num_workers=2"]


GRID = ["--grid", "train.lr=0.05,0.1", "--grid", "train.batch_size=8,16"]
VARIANTS = [f"{s}[lr={lr},batch_size={b}]" for s in ("fedavg", "local") for lr in ("0.05", "0.1") for b in (8, 16)]


def _compare(out: Path, seeds: str = "0,1") -> list[str]:
    return [sys.executable, "-m", "experiments.cli", "compare", "--experiment", "digits-domains",
            "--strategies", "fedavg,local", "--seeds", seeds, *GRID, "--out", str(out), "--quiet", *SMALL]


@pytest.mark.slow
def test_a_killed_grid_sweep_resumes_without_redoing_finished_runs(tmp_path):
    """2x2 grid x 2 strategies x 2 seeds: killed mid-sweep, rerun, every variant in the table."""
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_compare(out), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = out / "runs"
    deadline = time.monotonic() + 240
    while len(list(runs.glob("*/summary.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert len(list(runs.glob("*/summary.json"))) >= 3, "the sweep never finished three runs"
    os.killpg(proc.pid, signal.SIGKILL)             # the whole tree, Ray included, mid-sweep
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/summary.json")}
    assert 3 <= len(done_before) < 16

    rerun = subprocess.run(_compare(out), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"16 runs of 8 variants ({len(done_before)} already complete" in rerun.stdout
    for name, mtime in done_before.items():       # finished runs were kept, not redone
        assert (runs / name / "summary.json").stat().st_mtime_ns == mtime
    assert len(list(runs.glob("*/summary.json"))) == 16
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "strategy" not in line]
    assert sorted(r.split(" | ")[0][2:].removesuffix(" (baseline)") for r in rows) == sorted(VARIANTS)
    assert "±" in table
    for png in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "per_domain.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "diff_acc_mean" in (out / "table.csv").read_text()
    tidy = (out / "runs.csv").read_text().splitlines()
    assert len(tidy) == 1 + 16 and tidy[0].startswith("variant,strategy,seed,train.lr,train.batch_size,")


def test_a_directory_of_another_config_is_refused(tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"base_config_hash": "somethingelse"}))
    assert main(["compare", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "holds a sweep of another config" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--strategies", "fedavg,nope"], "unknown strategy 'nope'"),
        (["--seeds", "0,x"], "--seeds must be a comma list of integers"),
        (["--seeds", "1,1"], "--seeds must list distinct integers"),
        (["--baseline", "fedprox"], "--baseline 'fedprox' is not one of the compared variants"),
        (["--set", "seed=3"], "--set seed=... is chosen by compare itself"),
        (["--set", "train.lr=-1"], "train.lr must be > 0"),
        (["--experiment", "cifar99"], "unknown experiment 'cifar99'"),
    ],
)
def test_bad_compare_input_is_one_line_exit_2(argv, fragment, tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1


def test_runs_of_one_seed_with_different_partitions_are_refused():
    ok = [{"seed": 0, "data_fingerprint": "a"}, {"seed": 0, "data_fingerprint": "a"}, {"seed": 1, "data_fingerprint": "b"}]
    check_identical_partitions(ok)
    with pytest.raises(RuntimeError, match="different partitions"):
        check_identical_partitions(ok + [{"seed": 1, "data_fingerprint": "c"}])


def test_unfinished_runs_continue_from_their_checkpoints(tmp_path, monkeypatch):
    """compare hands every run it still has to do to the runner with resume on: a run killed
    mid-way continues from its checkpoint (tests/strategies/test_resume.py: to the same numbers)."""
    import experiments.runner as runner

    seen = []

    def fake_run_many(cfgs, sweep=None):
        seen.extend(cfgs)
        raise KeyboardInterrupt        # stop before tables: only the hand-over is under test

    monkeypatch.setattr(runner, "run_many", fake_run_many)
    assert main(["compare", "--strategies", "fedavg,local", "--seeds", "0", "--out", str(tmp_path / "s"), *SMALL]) == 130
    assert [c.strategy for c in seen] == ["fedavg", "local"] and all(c.resume for c in seen)


def test_runs_csv_has_every_runs_columns_when_a_domain_is_missing_from_some_runs():
    """Under label skew a seed may leave a domain without clients: that run has no acc/<domain>.
    runs.csv still gets one column set for all rows (empty where a run has no value), not a
    crash on the first row's keys."""
    from types import SimpleNamespace

    from experiments.compare import tidy_runs

    def summary(seed, domains):
        return {"strategy": "fedavg", "seed": seed, "final": {"acc-mean": 0.5}, "per_client": [],
                "per_domain": {d: {"acc": 0.5} for d in domains}, "bytes_up": 1, "bytes_down": 2, "bytes_p2p": 0,
                "wall_s": 1.0}

    runs = [SimpleNamespace(variant="fedavg", strategy="fedavg", seed=s, point={}, cfg=SimpleNamespace(out=f"r{s}"))
            for s in (0, 1)]
    rows = tidy_runs(SimpleNamespace(runs=runs), [summary(0, ["gamma"]), summary(1, ["blur", "gamma"])])
    assert list(rows[0]) == list(rows[1]) and rows[0]["acc/blur"] is None and rows[1]["acc/blur"] == 0.5
    assert list(rows[0])[-1] == "run_dir"
