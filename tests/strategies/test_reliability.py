"""Hostile and broken updates, injected faults, robust aggregation: the round goes on.

Runs in-process (the same server loop and ClientApp as a simulation, no Ray).
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType

from experiments.catalogue import build_config
from experiments.inprocess import run_inprocess
from fedmoe_sim import faults, wire
from fedmoe_sim.aggregation.robust import outliers_above
from fedmoe_sim.config import FaultsConfig
from fedmoe_sim.parts import PartSpec
from strategies._federation import Federation

SMALL = {"federation.num_clients": 10, "federation.rounds": 3, "data.samples_per_client": 20,
         "model.pretrain_steps": 200, "train.local_epochs": 1}
FAULTY = {"faults.crash": 0.15, "faults.hang": 0.1, "faults.corrupt": 0.25, "faults.slow": 0.1, "faults.slow_s": 0.0}


def _cfg(tmp_path=None, **extra):
    values = {**SMALL, "strategy": "fedavg", **extra}
    if tmp_path is not None:
        values["out"] = str(tmp_path)
    return build_config("digits-domains", values)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- screening, no Flower ----
EXPECT = {"expert": PartSpec.of({"w": ((4,), "float32")})}


def _screened(values: dict[int, tuple[float, float]], sent=None, **fed):
    """Federation.screen over clients cid -> (num-examples, fill value of their upload)."""
    cfg = build_config("digits-domains", {**{f"federation.{k}": v for k, v in fed.items()},
                                          "federation.num_clients": 10})
    federation = Federation(cfg, ("a",))
    box = wire.Outbox(wire.TRAIN, sorted(values), expect=dict(EXPECT))
    if sent is not None:
        box.shared["expert"] = {"w": np.full(4, sent, np.float32)}
    got = wire.Unpacked(results=[wire.ClientResult(cid, {wire.NUM_EXAMPLES: n}, {"expert": {"w": np.full(4, v, np.float32)}})
                                 for cid, (n, v) in sorted(values.items())])
    federation.screen(got, box)
    return got


def test_a_client_claiming_a_huge_num_examples_is_rejected_not_weighted():
    got = _screened({0: (10, 1.0), 1: (12, 1.0), 2: (9, 1.0), 3: (1e9, 1.0)})
    assert [r.client_id for r in got.results] == [0, 1, 2]
    assert "num-examples 1e+09 is above 100x the round's median" in got.rejected[3]
    assert _screened({0: (10, 1.0), 1: (12, 1.0), 2: (9, 1.0), 3: (1e9, 1.0)}, max_examples_ratio=0).rejected == {}


def test_an_update_far_longer_than_the_rounds_median_is_rejected():
    clients = {0: (5, 1.1), 1: (5, 0.9), 2: (5, 1.2), 3: (5, 1e6)}
    got = _screened(clients, sent=1.0)              # updates 0.1, 0.1, 0.2 and ~1e6 from what was sent
    assert sorted(got.rejected) == [3] and "expert update norm" in got.rejected[3]
    assert _screened(clients, sent=1.0, norm_bound=0).rejected == {}
    # judged from the sent part, not from zero: a large but common state is not an outlier
    assert _screened({0: (5, 100.0), 1: (5, 100.1), 2: (5, 99.9)}, sent=100.0).rejected == {}


def test_an_honest_gated_round_is_kept_and_scaled_or_non_finite_updates_are_not():
    """pFedMoE's global expert: a client's update is scaled by its gate weight, so when most gates
    ignore the part the median update is tiny. Two honest clients still using it moved it by 0.3
    and 0.4, far above 10x that median but well within the part's own norm (2): kept. An update
    scaled by 1e6, or a non-finite one, is still rejected."""
    gated = {0: (5, 1.0001), 1: (5, 0.9999), 2: (5, 1.0002), 3: (5, 1.0001), 4: (5, 1.2), 5: (5, 0.85)}
    norms = [2 * abs(np.float32(v) - 1) for _, v in gated.values()]
    assert outliers_above(norms, 10) == [4, 5]           # premise: the median test alone drops both
    got = _screened(gated, sent=1.0)
    assert got.rejected == {} and [r.client_id for r in got.results] == list(gated)
    bad = _screened({**gated, 6: (5, 1e6), 7: (5, float("nan"))}, sent=1.0)
    assert sorted(bad.rejected) == [6, 7]
    assert "above the norm of the part it was sent (2)" in bad.rejected[6]
    assert bad.rejected[7] == "expert update norm is not finite (nan)"


# ---------------------------------------------------------------- fault injection ----
def test_fault_draws_are_a_function_of_seed_round_and_client():
    cfg = FaultsConfig(crash=0.1, hang=0.05, corrupt=0.05, slow=0.1)
    first = faults.injected(cfg, 3, 4, range(500))
    assert first == faults.injected(cfg, 3, 4, range(500))
    assert first != faults.injected(cfg, 3, 5, range(500))
    share = {k: len(v) / 500 for k, v in first.items()}
    assert share["crash"] == pytest.approx(0.1, abs=0.04) and share["hang"] == pytest.approx(0.05, abs=0.03)
    assert faults.injected(FaultsConfig(), 3, 4, range(500)) == {}


@pytest.mark.parametrize("mode, reason", [("nan", "non-finite"), ("shape", "shape"), ("scale", None)])
def test_each_corruption_is_what_it_says(mode, reason):
    state = {"w": np.ones((2, 3), np.float32), "n": np.arange(2)}
    bad = faults.spoil(state, mode)
    assert bad["n"] is state["n"]
    problem = EXPECT_W.check(bad)
    if reason is None:
        assert problem is None and np.allclose(bad["w"], faults.SCALE)    # valid in form: the norm bound's job
    else:
        assert reason in problem


EXPECT_W = PartSpec.of({"w": ((2, 3), "float32"), "n": ((2,), "int64")})


def test_a_run_with_injected_faults_finishes_and_its_record_says_what_happened(tmp_path):
    cfg = _cfg(tmp_path, **FAULTY)
    summary = run_inprocess([cfg])[0]
    assert 0 < summary.final["acc-mean"] <= 1
    rows, events = _jsonl(tmp_path / "rounds.jsonl"), _jsonl(tmp_path / "events.jsonl")
    assert [e["round"] for e in events] == [1, 2, 3]
    totals = {"crash": 0, "hang": 0, "corrupt": 0}
    for row, event in zip(rows, events, strict=True):
        rnd = event["round"]
        injected = faults.injected(cfg.faults, cfg.seed, rnd, range(10))
        assert event.get("injected", {}) == {k: v for k, v in injected.items()}
        rejected = event["rejected"].get("train", {})
        for cid in injected.get("crash", []):
            assert rejected[str(cid)] == "client error: injected crash"
        for cid in injected.get("corrupt", []):
            assert str(cid) in rejected                  # NaN, wrong shape, or the norm bound
        assert event["missed"].get("train", {"clients": []})["clients"] == injected.get("hang", [])
        assert row["rejected-updates"] == len(rejected)
        assert row["missed-clients"] == len(injected.get("hang", []))
        for kind in totals:
            assert row.get(f"faults/{kind}", 0) == len(injected.get(kind, []))
            totals[kind] += len(injected.get(kind, []))
    assert all(totals.values()), totals                  # the premise: every kind happened at least once
    ledger = (tmp_path / "ledger.csv").read_text().splitlines()[1:]
    corrupt_r1 = faults.injected(cfg.faults, cfg.seed, 1, range(10)).get("corrupt", [])
    booked = {int(line.split(",")[2]) for line in ledger if line.split(",")[:2] == ["1", "up"]}
    assert set(corrupt_r1) <= booked                     # a rejected upload's bytes are still booked


def test_the_median_survives_scaled_updates_that_wreck_the_mean():
    """With the norm bound off, scaled-by-1e6 uploads reach the average: the mean is ruined,
    the coordinate-wise median is not."""
    hostile = {"faults.corrupt": 0.2, "federation.norm_bound": 0, "federation.rounds": 2}
    clean = run_inprocess([_cfg(**{"federation.rounds": 2})])[0].final["acc-mean"]
    mean = run_inprocess([_cfg(**hostile)])[0].final["acc-mean"]
    median = run_inprocess([_cfg(**hostile, **{"federation.aggregate": "median"})])[0].final["acc-mean"]
    trimmed = run_inprocess([_cfg(**hostile, **{"federation.aggregate": "trimmed-mean",
                                                 "federation.trim_fraction": 0.3})])[0].final["acc-mean"]
    assert not mean >= clean - 0.2                       # NaN or far off
    assert median >= clean - 0.1 and trimmed >= clean - 0.1


# ---------------------------------------------------------------- safe loading ----
class _Bomb:
    def __reduce__(self):
        return (open, ("/tmp/fedmoe-sim-pickle-ran", "w"))


def test_a_pickle_inside_an_array_record_is_refused_and_never_run(tmp_path, task_identity):
    import io
    import os

    marker = "/tmp/fedmoe-sim-pickle-ran"
    if os.path.exists(marker):
        os.remove(marker)
    buf = io.BytesIO()
    np.save(buf, np.array([_Bomb()], dtype=object), allow_pickle=True)
    reply = wire.make_reply([wire.ClientResult(0, {wire.NUM_EXAMPLES: 1.0})])
    reply["up/0/expert"] = ArrayRecord({"w": Array(dtype="object", shape=(1,), stype="numpy.ndarray",
                                                   data=buf.getvalue())})
    raw = ArrayRecord({"w": Array(dtype="float32", shape=(1,), stype="numpy.ndarray", data=pickle.dumps(_Bomb()))})
    reply2 = wire.make_reply([wire.ClientResult(1, {wire.NUM_EXAMPLES: 1.0})])
    reply2["up/1/expert"] = raw
    got = wire.read_replies([Message(reply, 1, MessageType.TRAIN), Message(reply2, 1, MessageType.TRAIN)],
                            {"expert": PartSpec.of({"w": ((1,), "float32")})}, [0, 1])
    assert got.results == [] and sorted(got.rejected) == [0, 1]
    assert not os.path.exists(marker)


# ---------------------------------------------------------------- a node that never answers ----
class _SilentNodeGrid:
    """Answers every message at once except those to node 3, which never replies."""

    def __init__(self):
        self.pending = {}

    def push_messages(self, messages):
        ids = []
        for i, msg in enumerate(messages):
            mid = f"m{i}"
            self.pending[mid] = msg
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        out = []
        for mid in ids:
            msg = self.pending.get(mid)
            if msg is not None and msg.metadata.dst_node_id != 3:
                reply = Message(wire.make_reply([wire.ClientResult(msg.metadata.dst_node_id, {wire.NUM_EXAMPLES: 1.0})]),
                                reply_to=msg)
                out.append(reply)
                del self.pending[mid]
        return out


def _tasks():
    box = wire.Outbox(wire.TRAIN, [1, 2, 3])
    return [Message(wire.make_task("{}", 1, box, [n]), n, MessageType.TRAIN) for n in (1, 2, 3)]


def test_a_quorum_stops_the_wait_for_a_dead_node_after_the_straggler_timeout(task_identity):
    import time

    from strategies._loop import push_pull

    t0 = time.monotonic()
    replies = push_pull(_SilentNodeGrid(), _tasks(), timeout=30, quorum=0.6, straggler_s=0.3)
    assert len(replies) == 2 and time.monotonic() - t0 < 5
    t0 = time.monotonic()
    assert len(push_pull(_SilentNodeGrid(), _tasks(), timeout=1.0)) == 2     # default: the whole timeout
    assert time.monotonic() - t0 >= 1.0


def test_replies_are_polled_every_millisecond_in_simulation_and_every_5_ms_from_a_superlink():
    from flwr.superlink.grid import InMemoryGrid

    from strategies._loop import LOCAL_POLL_SECONDS, POLL_SECONDS, poll_seconds

    assert poll_seconds(InMemoryGrid.__new__(InMemoryGrid)) == LOCAL_POLL_SECONDS == 0.001  # the simulation's
    assert poll_seconds(_SilentNodeGrid()) == POLL_SECONDS == 0.005                        # any other grid
