"""Unification library: hand-checked merges, the extras wire format, mixed-domain evaluation."""

import numpy as np
import pytest
import torch

from experiments.catalogue import build_config
from fedmoe_sim import unification as uni
from fedmoe_sim.workspace import Workspace


def test_domain_expert_weights_routing_by_examples_and_unions_proxies():
    parts = [(1.0, [np.array([0.0, 4.0], np.float32)], np.array([3, 1])),
             (3.0, [np.array([4.0, 0.0], np.float32)], np.array([1, 7]))]
    e = uni.domain_expert("rot90", 0, {"w": np.zeros(1, np.float32)}, parts)
    np.testing.assert_allclose(e.routing[0], [3.0, 1.0])      # (1*[0,4] + 3*[4,0]) / 4
    np.testing.assert_array_equal(e.proxies, [1, 3, 7])
    assert e.weight == 4.0


def test_extras_round_trip_keeps_layer_order():
    routing = [np.full(3, i, np.float32) for i in range(12)]      # 12 layers: "routing/10" sorts after "routing/1"
    extras = uni.pack_extras(routing, np.array([5, 2]))
    back, proxies = uni.unpack_extras(extras)
    assert [int(v[0]) for v in back] == list(range(12))
    np.testing.assert_array_equal(proxies, [5, 2])
    assert extras[uni.PROXIES].dtype == np.int64


@pytest.fixture(scope="module")
def ws():
    return Workspace(build_config("digits-domains", {"federation.num_clients": 4, "model.pretrain_steps": 200}))


def test_mixed_domain_batches_mix_domains_and_score_each_domain(ws):
    seen = []
    sizes = [len(ws.domain_test(d)[1]) for d in range(4)]

    def predict(batch, domains):
        seen.append(domains.clone())
        out = torch.zeros(len(domains), ws.model.num_classes)
        out[:, 0] = (domains == 1).float()          # predicts class 0 only for "invert"
        return out

    acc = uni.mixed_domain_accuracy(predict, ws, seed=0, batch_size=64, domain_aware=True)
    assert all(len(set(b.tolist())) > 1 for b in seen[:-1])   # every full batch mixes domains
    y_invert = ws.domain_test(1)[1]
    assert acc["acc/invert"] == pytest.approx(float((y_invert == 0).float().mean()))
    assert sum(len(b) for b in seen) == sum(sizes)
    assert acc["acc-mean"] == pytest.approx(np.mean([acc[f"acc/{n}"] for n in ws.benchmark.domain_names]))


def test_baseline_combines_reduce_to_the_single_expert(ws):
    """With one expert: soup = ensemble (argmax) = that expert; oracle routes every domain to it."""
    ws.load(None)
    state = ws.model.expert_state()
    e = uni.Expert("c0", 0, state, [], np.zeros(0, np.int64), 1.0)
    x, _ = ws.domain_test(0)
    ws.model.load_expert_state(state)
    ref = ws.model(x).argmax(1)
    assert torch.equal(uni.soup_predict(ws.model, [e])(x).argmax(1), ref)
    assert torch.equal(uni.ensemble_predict(ws.model, [state])(x).argmax(1), ref)
    assert torch.equal(uni.oracle_predict(ws.model, [e])(x, torch.zeros(len(x), dtype=torch.long)).argmax(1), ref)


def _upload(**changes):
    from fedmoe_sim import wire

    extras = uni.pack_extras([np.zeros(8, np.float32), np.zeros(8, np.float32)], np.array([0, 5, 9]))
    extras.update(changes.pop("extras", {}))
    for key in changes.pop("drop", ()):
        del extras[key]
    return wire.ClientResult(3, {}, changes.get("state", {"w": np.zeros(1, np.float32)}), extras)


@pytest.mark.parametrize("bad, why", [
    (dict(state=None), "no expert"),
    (dict(drop=[uni.PROXIES]), "no proxy indices"),
    (dict(extras={uni.PROXIES: np.array([0.0, 1.0])}), "integer"),
    (dict(extras={uni.PROXIES: np.array([[1, 2]])}), "1-D"),
    (dict(extras={uni.PROXIES: np.array([0, 10])}), "outside the public pool [0, 10)"),
    (dict(extras={uni.PROXIES: np.array([-1])}), "outside the public pool"),
    (dict(drop=["routing/1"]), "missing routing vector 'routing/1'"),
    (dict(extras={"routing/0": np.zeros(7, np.float32)}), "'routing/0' must be float (8,)"),
    (dict(extras={"routing/2": np.zeros(8, np.float32)}), "unexpected array 'routing/2'"),
])
def test_malformed_uploads_are_named_and_good_ones_pass(bad, why):
    assert uni.upload_problem(_upload(), [8, 8], pool_size=10, need_expert=True) is None
    assert uni.upload_problem(_upload(state=None), [8, 8], pool_size=10, need_expert=False) is None
    assert why in uni.upload_problem(_upload(**bad), [8, 8], pool_size=10, need_expert=True)


def test_strategy_drops_bad_uploads_and_unifies_the_rest(ws):
    """The server's check uses its own model's layer widths and pool size; a bad client is
    logged and counted, the others stay (as they came, in order)."""
    from types import SimpleNamespace

    from fedmoe_sim import wire
    from strategies.metamoe import MetaMoEStrategy

    dims = uni.model_routing_dims(ws)
    assert len(dims) == len(uni.routing_vectors(ws, ws.public_data(np.arange(4))[0]))
    good = [wire.ClientResult(c, {}, {"w": np.zeros(1, np.float32)},
                              uni.pack_extras([np.zeros(d, np.float32) for d in dims], np.array([c])))
            for c in range(3)]
    bad = wire.ClientResult(3, {}, {"w": np.zeros(1, np.float32)},
                            uni.pack_extras([np.zeros(d, np.float32) for d in dims], np.array([len(ws.benchmark.public_y)])))
    strategy = MetaMoEStrategy.__new__(MetaMoEStrategy)
    strategy.ws, strategy.per_domain, strategy.fed = ws, False, SimpleNamespace(rejected_total=0)
    got = strategy.valid_uploads(wire.Unpacked(results=[*good, bad]))
    assert [r.client_id for r in got.results] == [0, 1, 2]
    assert "outside the public pool" in got.rejected[3] and strategy.fed.rejected_total == 1


def test_late_domains_are_named_domains_and_leave_an_early_one():
    names = ["rot90", "invert", "blur", "gamma"]
    assert uni.late_domain_ids(names, "") == set()
    assert uni.late_domain_ids(names, " gamma, invert ") == {1, 3}
    with pytest.raises(ValueError, match="unknown domain 'sepia'.*allowed: rot90, invert, blur, gamma"):
        uni.late_domain_ids(names, "gamma,sepia")
    with pytest.raises(ValueError, match="leaves no domain"):
        uni.late_domain_ids(names, "rot90,invert,blur,gamma")


def test_an_upload_carries_exactly_what_the_server_asked_for():
    from fedmoe_sim import wire

    expert = {"w": np.zeros(1, np.float32)}
    bare = wire.ClientResult(3, {}, expert, None)
    assert uni.upload_problem(bare, [8, 8], pool_size=10, need_expert=True, wants=()) is None
    assert "no proxy indices" in uni.upload_problem(bare, [8, 8], 10, True, wants=(uni.PROXIES,))
    only_proxies = wire.ClientResult(3, {}, expert, uni.pack_extras(None, np.array([1, 2])))
    assert uni.upload_problem(only_proxies, [8, 8], 10, True, wants=(uni.PROXIES,)) is None
    assert "unexpected array 'proxies'" in uni.upload_problem(only_proxies, [8, 8], 10, True, wants=())
    assert "missing routing vector" in uni.upload_problem(only_proxies, [8, 8], 10, True)
    routing, proxies = uni.unpack_extras(uni.pack_extras(None, None))
    assert routing == [] and proxies.shape == (0,)


def test_routing_share_counts_tokens_sent_to_their_own_domains_expert(ws):
    """Equal router rows: every token goes to expert 0 (argmax tie), here gamma's expert."""
    from fedmoe_sim.models import build_moe_from_experts

    ws.load(None)
    states = [ws.model.expert_state(), ws.model.expert_state()]
    moe = build_moe_from_experts(ws.model, states, router_init=None, context=False).eval()
    with torch.no_grad():
        for r in moe.routers:
            r.gate.weight.zero_()
    share = uni.routing_to_own_domain(moe, [3, 1], ws)           # expert 0 = gamma, expert 1 = invert
    assert share["routing-own/gamma"] == 1.0
    assert share["routing-own/invert"] == share["routing-own/rot90"] == 0.0
    assert share["routing-own"] == 0.25


def test_oracle_routing_sends_a_domain_without_expert_to_the_fallback(ws):
    ws.load(None)
    initial = ws.model.expert_state()
    trained = {k: v + 0.5 for k, v in initial.items()}
    x, _ = ws.domain_test(0)
    x = x[:8]
    predict = uni.oracle_predict(ws.model, [uni.Expert("c0", 0, trained, [], np.zeros(0, np.int64), 1.0)],
                                 fallback=initial)
    domains = torch.tensor([0, 1] * 4)
    out = predict(x, domains)
    ws.model.load_expert_state(initial)
    torch.testing.assert_close(out[domains == 1], ws.model(x[domains == 1]).detach())
    ws.model.load_expert_state(trained)
    torch.testing.assert_close(out[domains == 0], ws.model(x[domains == 0]).detach())
    with pytest.raises(ValueError, match="no expert for domain 1"):
        uni.oracle_predict(ws.model, [uni.Expert("c0", 0, trained, [], np.zeros(0, np.int64), 1.0)])(x, domains)
