"""MetaMoE end to end in a Flower simulation (small): one-shot upload, what leaves a client, unification."""

import json

import numpy as np
import pytest

from experiments.catalogue import build_config
from fedmoe_sim import unification as uni
from fedmoe_sim import wire
from fedmoe_sim.workspace import get_workspace

SMALL = {"federation.rounds": 2, "data.samples_per_client": 20, "model.pretrain_steps": 200,
         "train.local_epochs": 1, "simulation.num_workers": 2, "metamoe.candidates": 80, "metamoe.proxies": 20,
         "metamoe.relevance_epochs": 5, "metamoe.finetune_epochs": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, simulate):
    tmp = tmp_path_factory.mktemp("metamoe")
    cfgs = [build_config("metamoe-digits", {**SMALL, "strategy": "metamoe", "out": str(tmp / "one-shot")}),
            build_config("metamoe-digits", {**SMALL, "strategy": "metamoe", "federation.num_clients": 8,
                                            "metamoe.expert_per": "domain", "out": str(tmp / "per-domain")}),
            build_config("metamoe-digits", {**SMALL, "strategy": "zeroshot"}),
            build_config("metamoe-digits", {**SMALL, "strategy": "metamoe", "metamoe.late_domains": "invert",
                                            # experts that learn their domain, so joining can show
                                            "federation.rounds": 1, "train.local_epochs": 10,
                                            "data.samples_per_client": 60, "out": str(tmp / "late")}),
            build_config("metamoe-digits", {**SMALL, "strategy": "btm", "out": str(tmp / "btm")})]
    summaries, captured = simulate(cfgs)
    return {"cfgs": cfgs, "summaries": summaries, "replies": captured, "tmp": tmp}


def test_only_proxies_experts_and_routing_vectors_leave_a_client(runs):
    ws = get_workspace(runs["cfgs"][0])
    spec, backbone = ws.model.expert_spec(), ws.model.backbone_state()
    uploads = 0
    for msg in runs["replies"]:
        assert all(name.startswith((wire.UP_PREFIX, wire.PACK_PREFIX)) for name in msg.content.array_records)
        for part, arrays in (item for parts in wire.unpack_reply(msg.content)[0].values() for item in parts.items()):
            assert not set(arrays) & set(backbone)
            if part == "expert":
                assert set(arrays) == set(spec)
            elif part == uni.ROUTING:
                assert set(arrays) == {"0", "1", "2"}
            else:
                assert part == uni.PROXIES
                assert arrays[uni.PROXIES].dtype == np.int64 and len(arrays[uni.PROXIES]) == 20
                uploads += 1
    assert uploads == 4 + 8 + 4      # one upload per client of the MetaMoE runs, nothing from zero-shot


def test_one_shot_mode_uploads_once_and_unifies(runs):
    rows = [json.loads(line) for line in (runs["tmp"] / "one-shot" / "rounds.jsonl").read_text().splitlines()]
    assert rows[0]["bytes-up"] == 0                     # round 1: experts stay on the clients
    assert rows[-1]["bytes-up"] > 0                     # the one-shot upload
    last = rows[-1]
    assert 0 <= last["server-eval/acc-mean"] <= 1
    assert last["acc-mean"] == last["server-eval/acc-mean"]
    lambdas = [last[f"server-eval/lambda/{i}"] for i in range(3)]
    assert all(0 <= v <= 1 for v in lambdas) and any(abs(v - 0.3) > 1e-4 for v in lambdas)   # lambda trained
    assert last["server-eval/finetune-examples"] > 20


def test_per_domain_mode_trains_domain_experts_federatedly(runs):
    rows = [json.loads(line) for line in (runs["tmp"] / "per-domain" / "rounds.jsonl").read_text().splitlines()]
    assert all(r["bytes-up"] > 0 for r in rows)         # FedAvg within each domain every round
    assert "server-eval/acc/rot90" in rows[-1]


def test_zero_shot_trains_nothing_and_sends_nothing(runs):
    zs = runs["summaries"][2]
    assert zs.rounds == 0 and zs.bytes_up == 0
    assert 0 < zs.final["acc-mean"] < 1


def test_a_late_domain_joins_the_unified_model(runs):
    """invert's expert joins after the first unification: before it, the model has 3 experts and
    has seen no invert proxy; after, invert is served by its own expert."""
    last = json.loads((runs["tmp"] / "late" / "rounds.jsonl").read_text().splitlines()[-1])
    before, after = last["server-eval/before-join/acc/invert"], last["server-eval/acc/invert"]
    assert after > before + 0.2                          # measured: 0.11 -> 0.52
    assert {"server-eval/before-join/acc/rot90", "server-eval/before-join/acc-mean"} <= set(last)
    one_shot = json.loads((runs["tmp"] / "one-shot" / "rounds.jsonl").read_text().splitlines()[-1])
    assert last["bytes-up"] == one_shot["bytes-up"]     # the same uploads, one of them used later


def test_methods_upload_only_what_they_use(runs):
    """BTM combines the experts alone: its clients send no proxies and no routing vectors."""
    spec = get_workspace(runs["cfgs"][0]).model.expert_spec()
    expert_bytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())
    upload = {name: json.loads((runs["tmp"] / name / "rounds.jsonl").read_text().splitlines()[-1])["bytes-up"]
              for name in ("btm", "one-shot")}
    assert upload["btm"] == 4 * expert_bytes
    assert upload["one-shot"] == 4 * (expert_bytes + 20 * 8 + 3 * 64 * 4)   # + 20 proxy ids + 3 routing vectors
