"""Run records: crash-safe writes, the JSONL round log and the run directory."""

import csv
import json
import math
import os

import numpy as np
import pytest

from fedmoe_sim.results import io as rio
from fedmoe_sim.results.io import (RunRecorder, RunSummary, append_jsonl, atomic_write_json, atomic_write_text,
                                   read_jsonl, read_summary, write_csv_atomic)


def _leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------ atomic writes ----
def test_atomic_write_text_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new content")
    assert path.read_text() == "new content"
    assert _leftovers(path.parent) == []


def test_atomic_write_keeps_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")

    def boom(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(rio.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_json_is_strict_json(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"b": np.float32(0.5), "a": [float("nan"), np.int64(3)], "c": float("inf")})
    text = path.read_text()
    assert json.loads(text) == {"a": [None, 3], "b": 0.5, "c": None}
    assert text.index('"a"') < text.index('"b"')          # sorted keys: stable diffs between runs


def test_write_csv_atomic_orders_columns_and_blanks_missing(tmp_path):
    path = tmp_path / "t.csv"
    write_csv_atomic(path, [{"b": 1, "a": 2.5}, {"a": None, "c": [1, 2]}], ["a", "b", "c"])
    rows = list(csv.reader(path.open()))
    assert rows == [["a", "b", "c"], ["2.5", "1", ""], ["", "", "[1, 2]"]]


def test_write_csv_atomic_refuses_to_drop_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="zzz"):
        write_csv_atomic(tmp_path / "t.csv", [{"a": 1, "zzz": 2}], ["a"])
    assert not (tmp_path / "t.csv").exists()


# -------------------------------------------------------------------- JSONL ----
def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    append_jsonl(path, {"round": 1, "acc": 0.5})
    append_jsonl(path, {"round": 2, "acc": float("nan")})
    assert read_jsonl(path) == [{"round": 1, "acc": 0.5}, {"round": 2, "acc": None}]


def test_read_jsonl_ignores_a_record_cut_by_a_crash(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"round": 1}\n{"round": 2, "ac')
    assert read_jsonl(path) == [{"round": 1}]


def test_read_jsonl_raises_on_corruption_before_the_end(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"round": 1}\n{"rou\n{"round": 3}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_jsonl(path)


def test_append_after_a_crash_drops_the_partial_record(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"round": 1}\n{"round": 2, "ac')
    append_jsonl(path, {"round": 2})
    assert path.read_text() == '{"round": 1}\n{"round": 2}\n'


def test_append_keeps_a_complete_record_that_lost_only_its_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"round": 1}')
    append_jsonl(path, {"round": 2})
    assert read_jsonl(path) == [{"round": 1}, {"round": 2}]


# ------------------------------------------------------------------ records ----
def _summary(**kw):
    base = dict(strategy="fedavg", experiment="digits-domains", seed=0, config_hash="abc", rounds=3,
                final={"client-eval/acc-mean": 0.8}, per_domain={"mnist": {"acc": 0.9}},
                per_client=[{"client": 0, "domain": "mnist", "acc-own": 0.9}], bytes_up=10, bytes_down=20)
    base.update(kw)
    return RunSummary(**base)


def test_run_summary_round_trips_and_carries_a_schema_version():
    s = _summary()
    d = s.to_dict()
    assert d["schema_version"] == 1
    assert RunSummary.from_dict(json.loads(json.dumps(d))) == s
    assert RunSummary.from_dict({**d, "status": "complete"}) == s


def test_run_summary_rejects_unknown_keys_and_newer_schemas():
    d = _summary().to_dict()
    with pytest.raises(ValueError, match="typo"):
        RunSummary.from_dict({**d, "typo": 1})
    with pytest.raises(ValueError, match="newer"):
        RunSummary.from_dict({**d, "schema_version": 99})


def test_package_versions_says_unknown_for_missing_packages(monkeypatch):
    monkeypatch.setattr(rio, "_VERSIONED", ("numpy", "surely-not-installed-pkg"))
    v = rio.package_versions()
    assert v["surely-not-installed-pkg"] == "unknown"
    assert v["numpy"] == np.__version__
    assert v["python"].count(".") == 2


# ------------------------------------------------------------- RunRecorder ----
def test_recorder_writes_config_with_hash_seed_versions(tmp_path):
    RunRecorder(tmp_path / "run", {"strategy": "fedavg", "seed": 7}, "h1")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["config"] == {"strategy": "fedavg", "seed": 7}
    assert cfg["config_hash"] == "h1" and cfg["seed"] == 7 and cfg["schema_version"] == 1
    assert {"python", "torch", "flwr", "numpy"} <= set(cfg["versions"])
    assert cfg["started_at"].endswith("+00:00")


def test_recorder_rounds_go_to_jsonl_and_a_stable_csv(tmp_path, monkeypatch):
    monkeypatch.setattr(rio, "CSV_EVERY_S", 0.0)       # the view follows every round
    rec = RunRecorder(tmp_path, {"seed": 0}, "h")
    rec.round({"round": 1, "client-train/loss": 2.0, "bytes-up": 100, "wall_s": 1.5})
    rec.round({"round": np.int64(2), "client-eval/acc/mnist": np.float32(0.75), "bytes-up": 100})
    assert read_jsonl(tmp_path / "rounds.jsonl") == [
        {"round": 1, "client-train/loss": 2.0, "bytes-up": 100, "wall_s": 1.5},
        {"round": 2, "client-eval/acc/mnist": 0.75, "bytes-up": 100}]
    rows = list(csv.reader((tmp_path / "rounds.csv").open()))
    assert rows[0] == ["round", "bytes-up", "client-eval/acc/mnist", "client-train/loss", "wall_s"]
    assert rows[1:] == [["1", "100", "", "2.0", "1.5"], ["2", "100", "0.75", "", ""]]


def test_the_csv_view_is_rewritten_at_most_once_a_second_and_whole_at_the_end(tmp_path, monkeypatch):
    """rounds.jsonl gets every round at once; rounds.csv (rebuilt whole each time) only when
    CSV_EVERY_S has passed since it was last written, and complete when the run finishes."""
    clock = [100.0]
    monkeypatch.setattr(rio.time, "monotonic", lambda: clock[0])
    rec = RunRecorder(tmp_path, {"seed": 0}, "abc")
    for r in (1, 2, 3):
        rec.round({"round": r, "acc": r / 10})
        clock[0] += 0.4
    assert len(read_jsonl(tmp_path / "rounds.jsonl")) == 3
    assert [row[0] for row in csv.reader((tmp_path / "rounds.csv").open())] == ["round", "1"]
    rec.round({"round": 4, "acc": 0.4})                       # 1.2 s after the first write
    assert [row[0] for row in csv.reader((tmp_path / "rounds.csv").open())] == ["round", "1", "2", "3", "4"]
    rec.round({"round": 5, "acc": 0.5})
    rec.finish(_summary())
    assert [row[0] for row in csv.reader((tmp_path / "rounds.csv").open())] == ["round", "1", "2", "3", "4", "5"]


def test_recorder_round_needs_an_integer_round(tmp_path):
    rec = RunRecorder(tmp_path, {}, "h")
    for bad in ({"acc": 1.0}, {"round": "1"}, {"round": True}):
        with pytest.raises(ValueError, match="round"):
            rec.round(bad)


def test_recorder_ledger_keeps_the_given_columns(tmp_path):
    rec = RunRecorder(tmp_path, {}, "h")
    rec.ledger([{"round": 1, "direction": "up", "client": 3, "bytes": 40},
                {"round": 1, "direction": "p2p", "client": 4, "bytes": 8}])
    rows = list(csv.reader((tmp_path / "ledger.csv").open()))
    assert rows == [["round", "direction", "client", "bytes"], ["1", "up", "3", "40"], ["1", "p2p", "4", "8"]]


def test_finish_marks_the_run_complete_with_wall_time(tmp_path):
    rec = RunRecorder(tmp_path, {"seed": 0}, "abc")
    assert not RunRecorder.is_complete(tmp_path, "abc")
    d = rec.finish(_summary())
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == d and d["status"] == "complete" and d["schema_version"] == 1
    assert d["wall_s"] >= 0 and math.isfinite(d["wall_s"])
    assert RunRecorder.is_complete(tmp_path, "abc")
    assert not RunRecorder.is_complete(tmp_path, "other-config")
    assert read_summary(tmp_path)["strategy"] == "fedavg"


def test_finish_keeps_a_given_wall_time_and_rejects_a_foreign_hash(tmp_path):
    rec = RunRecorder(tmp_path, {}, "abc")
    assert rec.finish(_summary(wall_s=12.5))["wall_s"] == 12.5
    with pytest.raises(ValueError, match="config_hash"):
        rec.finish(_summary(config_hash="zzz"))


def test_is_complete_is_false_for_broken_or_unfinished_summaries(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "complete", "config_hash": "abc"')   # torn
    assert not RunRecorder.is_complete(tmp_path, "abc")
    (tmp_path / "summary.json").write_text('{"status": "running", "config_hash": "abc"}')
    assert not RunRecorder.is_complete(tmp_path, "abc")
    assert not RunRecorder.is_complete(tmp_path / "missing", "abc")


def test_restarting_a_run_unmarks_it_and_restarts_the_round_log(tmp_path):
    rec = RunRecorder(tmp_path, {}, "abc")
    rec.round({"round": 1})
    rec.finish(_summary())
    rec2 = RunRecorder(tmp_path, {}, "abc")
    assert not RunRecorder.is_complete(tmp_path, "abc")
    rec2.round({"round": 1, "x": 1})
    assert read_jsonl(tmp_path / "rounds.jsonl") == [{"round": 1, "x": 1}]
    assert _leftovers(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == ["config.json", "rounds.csv", "rounds.jsonl"]
