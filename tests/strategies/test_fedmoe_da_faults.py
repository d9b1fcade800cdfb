"""FedMoE-DA when a peer does not answer: the round goes on, the peer is counted, and every
expert whose plan names it stays as it was (docs/protocol.md, "FedMoE-DA: a peer that does
not answer"). In process, with faults injected by `fedmoe_sim.faults`."""

import copy
import json

import numpy as np
import pytest

import clients.fedmoe_da as client
from experiments.catalogue import build_config
from experiments.inprocess import InProcessGrid, run_inprocess
from fedmoe_sim import faults, wire
from fedmoe_sim.aggregation import fedmoe_da as da
from fedmoe_sim.config import FaultsConfig
from fedmoe_sim.sampling import client_schedule

SMALL = {"federation.num_clients": 4, "federation.rounds": 2, "data.samples_per_client": 20,
         "model.pretrain_steps": 200, "train.local_epochs": 1, "strategy": "fedmoe-da"}


def _seed_where(kind: str, p: float, rounds: list[set[int]], clients=range(4)) -> int:
    """The first seed whose draws give exactly `rounds[r-1]` the fault `kind` in round r (and no other fault)."""
    cfg = FaultsConfig(**{kind: p})
    for seed in range(5000):
        if all(faults.injected(cfg, seed, r, clients) == ({kind: sorted(want)} if want else {})
               for r, want in enumerate(rounds, start=1)):
            return seed
    raise AssertionError(f"no seed below 5000 gives {kind} in rounds {rounds}")


def _record(monkeypatch):
    """Every client's personalisation: (round, client, own experts in, plan, peers, experts out, kept)."""
    calls, now = [], {}
    sync, personalise = client.sync, client.personalise

    def sync_spy(ws, task, context):
        now["round"] = task.server_round
        return sync(ws, task, context)

    def personalise_spy(layers, plan, own_id, peers, mix="factors"):
        out, kept = personalise(layers, plan, own_id, peers, mix)
        calls.append({"round": now["round"], "client": own_id, "in": copy.deepcopy([dict(x) for x in layers]),
                      "plan": dict(plan), "peers": dict(peers), "out": out, "kept": kept})
        return out, kept

    monkeypatch.setattr(client, "sync", sync_spy)
    monkeypatch.setattr(client, "personalise", personalise_spy)
    return calls


def _run(tmp_path, monkeypatch, **extra):
    calls = _record(monkeypatch)
    cfg = build_config("digits-domains", {**SMALL, "out": str(tmp_path / "run"), **extra})
    summary = run_inprocess([cfg], InProcessGrid(2))[0]
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    ledger = [line.split(",") for line in (out / "ledger.csv").read_text().splitlines()[1:]]
    p2p = [{"round": int(r[0]), "client": int(r[2]), "peer": int(r[5])} for r in ledger if r[1] == wire.P2P]
    return cfg, summary, rows, events, p2p, calls


def _layers(plan: dict) -> list[int]:
    return sorted(int(k.split("/")[1]) for k in plan if k.startswith("target/"))


def _named(plan: dict, layer: int, m: int) -> list[tuple[int, int]]:
    rows = plan[f"target/{layer}"] == m
    return list(zip(plan[f"client/{layer}"][rows].tolist(), plan[f"expert/{layer}"][rows].tolist(), strict=True))


@pytest.mark.parametrize("kind", ["crash", "hang"])
def test_a_peer_that_fails_a_reused_round_leaves_the_experts_that_name_it_as_they_were(tmp_path, monkeypatch, kind):
    """Round 1 computes the plan while client `early` fails; round 2 reuses it (I = 2) while client
    `late` fails: `late` is a missing peer, `early` answers but has no plan."""
    seed = _seed_where(kind, 0.25, [{0}, {2}])
    early, late = 0, 2
    cfg, summary, rows, events, p2p, calls = _run(tmp_path, monkeypatch, seed=seed, **{f"faults.{kind}": 0.25,
                                                                                        "fedmoe_da.every": 2})
    assert [r["round"] for r in rows] == [1, 2] and 0 < summary.final["acc-mean"] <= 1     # the run went on
    assert rows[0]["plan/refreshed"] == 1 and "plan/refreshed" not in rows[1]             # round 2 reuses it
    second = [c for c in calls if c["round"] == 2]
    assert sorted(c["client"] for c in second) == [1, 3]        # neither the failed peer nor the unplanned client
    assert all(early not in c["plan"][f"client/{layer}"] for c in calls for layer in _layers(c["plan"]))
    expected_kept = 0
    for c in second:
        for layer, (own_in, own_out) in enumerate(zip(c["in"], c["out"], strict=True)):
            for m in range(own_in[sorted(own_in)[0]].shape[0]):
                named = _named(c["plan"], layer, m)
                if any(peer == late for peer, _ in named):       # the rule: exactly as local training left it
                    expected_kept += 1
                    for name in own_in:
                        np.testing.assert_array_equal(own_out[name][m], own_in[name][m])
                elif len(named) > 1:                             # every neighbour answered: the plan's mix
                    sources = [{k: own_in[k][n] for k in own_in} if peer == c["client"]
                               else c["peers"][(peer, layer, n)] for peer, n in named]
                    weights = c["plan"][f"weight/{layer}"][c["plan"][f"target/{layer}"] == m]
                    for name, value in da.mix_expert(weights, sources).items():
                        np.testing.assert_allclose(own_out[name][m], value, rtol=1e-6)
    assert expected_kept > 0, "premise: some plan names the peer that failed"
    assert sum(c["kept"] for c in second) == expected_kept
    row = rows[1]
    assert row["sync/missing-peers"] == 1 and row["sync/kept-experts"] == expected_kept
    assert row["sync/unplanned-clients"] == 1 and row["sync/missing-fetches"] >= 1
    assert events[1]["sync"] == {"missing-peers": [late], "missing-fetches": row["sync/missing-fetches"],
                                 "kept-experts": expected_kept, "unplanned-clients": [early]}
    assert "sync" not in events[0]            # round 1's plan covered exactly the clients that answered
    assert rows[0]["sync/missing-peers"] == 0 and rows[0]["sync/kept-experts"] == 0
    assert not [t for t in p2p if t["round"] == 2 and late in (t["peer"], t["client"])]
    if kind == "crash":
        assert events[1]["rejected"]["train"] == {str(late): "client error: injected crash"}
    else:
        assert events[1]["missed"]["train"]["clients"] == [late]


def test_a_round_in_which_every_client_fails_serves_no_earlier_expert(tmp_path, monkeypatch):
    seed = _seed_where("crash", 0.5, [set(), {0, 1, 2, 3}])
    _, summary, rows, events, p2p, calls = _run(tmp_path, monkeypatch, seed=seed,
                                                **{"faults.crash": 0.5, "fedmoe_da.every": 2})
    assert [r["round"] for r in rows] == [1, 2]
    assert not [c for c in calls if c["round"] == 2] and not [t for t in p2p if t["round"] == 2]
    assert rows[1]["sync/transfers"] == 0 and rows[1]["client-train/rejected"] == 4
    assert {t["round"] for t in p2p} == {1}


def test_partial_participation_plans_only_over_the_rounds_cohort(tmp_path, monkeypatch):
    """fraction_train 0.5 with I = 5: each new cohort gets a fresh plan, so no plan names an
    unsampled client and no expert from an earlier round travels."""
    extra = {"federation.num_clients": 8, "federation.rounds": 3, "federation.fraction_train": 0.5,
             "fedmoe_da.every": 5}
    cfg, summary, rows, events, p2p, calls = _run(tmp_path, monkeypatch, **extra)
    cohorts = client_schedule(8, 3, 0.5, cfg.seed, "train")
    assert len({tuple(c) for c in cohorts}) == 3, "premise: the cohorts differ"
    for rnd, cohort in enumerate(cohorts, start=1):
        assert rows[rnd - 1]["plan/refreshed"] == 1
        assert rows[rnd - 1]["sync/missing-peers"] == 0 and rows[rnd - 1]["sync/kept-experts"] == 0
        mine = [c for c in calls if c["round"] == rnd]
        assert sorted(c["client"] for c in mine) == cohort
        for c in mine:
            named = np.concatenate([c["plan"][f"client/{layer}"] for layer in _layers(c["plan"])])
            assert set(named.tolist()) <= set(cohort)
        assert {t["peer"] for t in p2p if t["round"] == rnd} <= set(cohort)
    assert any(t["round"] == 3 for t in p2p)


def test_a_full_cohort_keeps_reusing_the_plan_between_refreshes(tmp_path, monkeypatch):
    rows = _run(tmp_path, monkeypatch, **{"federation.rounds": 3, "fedmoe_da.every": 2})[2]
    assert [r.get("plan/refreshed", 0) for r in rows] == [1, 0, 1]        # rounds 1 and 3 (I = 2)
