"""Unification library: hand-checked merges, the upload parts and their checks, mixed-domain evaluation."""

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


def test_upload_parts_round_trip_keeps_layer_order():
    routing = [np.full(3, float(i), np.float32) for i in range(12)]      # "10" sorts before "2" as text
    back, proxies = uni.unpack_upload({uni.ROUTING: uni.routing_part(routing),
                                       uni.PROXIES: uni.proxies_part(np.array([5, 2]))})
    assert [float(v[0]) for v in back] == [float(i) for i in range(12)]
    assert proxies.dtype == np.int64 and proxies.tolist() == [5, 2]


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
    """A one-shot upload's parts: expert, two routing vectors of width 8, three proxies."""
    parts = {"expert": {"w": np.zeros(1, np.float32)},
             uni.ROUTING: uni.routing_part([np.zeros(8, np.float32), np.zeros(8, np.float32)]),
             uni.PROXIES: uni.proxies_part(np.array([0, 5, 9]))}
    for part, arrays in changes.pop("set", {}).items():
        parts[part] = {**parts[part], **arrays}
    for part, key in changes.pop("drop", ()):
        parts[part] = {k: v for k, v in parts[part].items() if k != key} if key else None
    return {k: v for k, v in parts.items() if v is not None}


def _why(parts, wants=(uni.PROXIES, uni.ROUTING), expert=True):
    """What the server says of an upload: the wire's spec check, then MetaMoE's own."""
    from fedmoe_sim.parts import PartSpec, check_parts

    expect = uni.upload_specs([8, 8], wants)
    if expert:
        expect["expert"] = PartSpec.of({"w": ((1,), "float32")})
    return check_parts(parts, expect) or uni.upload_problem(parts, pool_size=10)


@pytest.mark.parametrize("bad, why", [
    (dict(drop=[("expert", None)]), "missing part 'expert'"),
    (dict(drop=[(uni.PROXIES, None)]), "missing part 'proxies'"),
    (dict(set={uni.PROXIES: {uni.PROXIES: np.array([0.0, 1.0])}}), "dtype float64, expected int64"),
    (dict(set={uni.PROXIES: {uni.PROXIES: np.array([[1, 2]])}}), "shape (1, 2), expected (None,)"),
    (dict(set={uni.PROXIES: {uni.PROXIES: np.array([0, 10])}}), "outside the public pool [0, 10)"),
    (dict(set={uni.PROXIES: {uni.PROXIES: np.array([-1])}}), "outside the public pool"),
    (dict(drop=[(uni.ROUTING, "1")]), "part 'routing': keys differ (missing ['1']"),
    (dict(set={uni.ROUTING: {"0": np.zeros(7, np.float32)}}), "0 has shape (7,), expected (8,)"),
    (dict(set={uni.ROUTING: {"2": np.zeros(8, np.float32)}}), "unexpected ['2']"),
    (dict(set={uni.ROUTING: {"0": np.full(8, np.nan, np.float32)}}), "non-finite"),
])
def test_malformed_uploads_are_named_and_good_ones_pass(bad, why):
    assert _why(_upload()) is None
    assert _why(_upload(drop=[("expert", None)]), expert=False) is None   # per-domain mode: no expert
    assert why in _why(_upload(**bad))


def test_strategy_drops_bad_uploads_and_unifies_the_rest(ws):
    """The server's check uses its own pool size; a bad client is logged and counted, the
    others stay (as they came, in order)."""
    from fedmoe_sim import wire
    from strategies.metamoe import MetaMoEStrategy

    dims = uni.model_routing_dims(ws)
    assert len(dims) == len(uni.routing_vectors(ws, ws.public_data(np.arange(4))[0]))

    def upload(cid, proxy):
        return wire.ClientResult(cid, {}, {"expert": {"w": np.zeros(1, np.float32)},
                                           uni.ROUTING: uni.routing_part([np.zeros(d, np.float32) for d in dims]),
                                           uni.PROXIES: uni.proxies_part(np.array([proxy]))})

    strategy = MetaMoEStrategy.__new__(MetaMoEStrategy)
    strategy.ws = ws
    got = strategy.valid_uploads(wire.Unpacked(results=[*(upload(c, c) for c in range(3)),
                                                        upload(3, len(ws.benchmark.public_y))]))
    assert [r.client_id for r in got.results] == [0, 1, 2]
    assert "outside the public pool" in got.rejected[3]


def test_late_domains_are_named_domains_and_leave_an_early_one():
    names = ["rot90", "invert", "blur", "gamma"]
    assert uni.late_domain_ids(names, "") == set()
    assert uni.late_domain_ids(names, " gamma, invert ") == {1, 3}
    with pytest.raises(ValueError, match="unknown domain 'sepia'.*allowed: rot90, invert, blur, gamma"):
        uni.late_domain_ids(names, "gamma,sepia")
    with pytest.raises(ValueError, match="leaves no domain"):
        uni.late_domain_ids(names, "rot90,invert,blur,gamma")


def test_an_upload_carries_exactly_what_the_server_asked_for():
    bare = {"expert": {"w": np.zeros(1, np.float32)}}
    assert _why(bare, wants=()) is None
    assert "missing part 'proxies'" in _why(bare, wants=(uni.PROXIES,))
    only_proxies = {**bare, uni.PROXIES: uni.proxies_part(np.array([1, 2]))}
    assert _why(only_proxies, wants=(uni.PROXIES,)) is None
    assert "unexpected part 'proxies'" in _why(only_proxies, wants=())
    assert "missing part 'routing'" in _why(only_proxies)
    routing, proxies = uni.unpack_upload({})
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
