"""FedMoE-DA's mixing plan: neighbour rule, weights, fetch lists, LoRA mixing, guard rails (hand-built arrays)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmoe_sim.aggregation.fedmoe_da import (apply_plan, fetch_lists, neighbour_plan, neighbour_plans, plan_due,
                                              proxy_similarity)


def _experts(n: int, e: int, seed: int = 0, r: int = 2, d_in: int = 5, d_out: int = 4) -> list[dict[str, np.ndarray]]:
    """n clients' stacked LoRA experts of one layer: A [E, r, in], B [E, out, r], random (B != 0)."""
    rng = np.random.default_rng(seed)
    return [{"fc.lora_A": rng.normal(size=(e, r, d_in)).astype(np.float32),
             "fc.lora_B": rng.normal(size=(e, d_out, r)).astype(np.float32)} for _ in range(n)]


def test_similarity_is_cosine_over_flat_client_expert_pairs():
    proxies = np.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 3.0], [-2.0, 0.0]]])   # [N=2, E=2, D=2]
    s = 1 / math.sqrt(2)
    expected = np.array([[1, s, 0, -1], [s, 1, s, -s], [0, s, 1, 0], [-1, -s, 0, 1]])
    np.testing.assert_allclose(proxy_similarity(proxies), expected, atol=1e-12)


def test_identical_gates_share_weights_equally():
    gates = np.tile(np.eye(3)[None], (4, 1, 1))            # 4 clients, same 3 orthogonal expert proxies
    plan = neighbour_plan(gates, top_p=3, tau=1.0)
    for i in range(4):
        for m in range(3):
            assert plan.neighbours(i, m) == [(i, m)] + [(j, m) for j in range(4) if j != i]
            np.testing.assert_allclose(plan.weights(i, m), np.full(4, 0.25))
    experts = _experts(4, 3)
    out = apply_plan(plan, experts)
    for k in experts[0]:                                     # everyone ends with the clients' mean of expert m
        mean = np.mean([e[k] for e in experts], axis=0, dtype=np.float64)
        assert all(np.allclose(o[k], mean, atol=1e-6) for o in out)


def test_orthogonal_and_opposed_gates_never_mix():
    gates = np.array([[[1.0, 0, 0], [0, 1.0, 0]], [[0, 0, 1.0], [-1.0, 0, 0]]])   # cosines 0 or -1
    plan = neighbour_plan(gates, top_p=3, tau=1.0)
    np.testing.assert_array_equal(plan.mixing_matrix(), np.eye(4))
    assert plan.fetches() == [(), ()]


def test_without_threshold_orthogonal_neighbours_get_the_stated_softmax_weight():
    gates = np.eye(3)[None]                                   # 1 client, 3 orthogonal experts
    tau = 0.5
    plan = neighbour_plan(gates, top_p=2, tau=tau, min_similarity=-np.inf)
    z = math.exp(1 / tau) + 2                                 # self: r = 1; the others: r = 0
    np.testing.assert_allclose(plan.weights(0, 1), [math.exp(1 / tau) / z, 1 / z, 1 / z])
    assert plan.neighbours(0, 1) == [(0, 1), (0, 0), (0, 2)]   # equal r: lower index first


def test_neighbours_are_the_p_most_similar_with_ties_by_index():
    proxies = np.array([[[1.0, 0.0], [1.0, 0.1]], [[1.0, 0.0], [1.0, 0.5]]])
    plan = neighbour_plan(proxies, top_p=1, tau=1.0)
    # expert (0,0) is identical to (1,0) (r = 1) and near (0,1); (1,0) ties (0,0) first
    assert plan.neighbours(0, 0) == [(0, 0), (1, 0)]
    assert plan.neighbours(1, 0) == [(1, 0), (0, 0)]
    assert plan.neighbours(1, 1) == [(1, 1), (0, 1)]
    same = np.ones((2, 2, 3))                                 # every r = 1: neighbour = lowest other index
    tied = neighbour_plan(same, top_p=1, tau=1.0)
    assert [tied.neighbours(i, m)[1] for i in range(2) for m in range(2)] == [(0, 1), (0, 0), (0, 0), (0, 0)]


def test_top_p_is_clamped_to_the_available_experts():
    gates = np.ones((2, 2, 3))
    plan = neighbour_plan(gates, top_p=50, tau=1.0)
    assert all(len(plan.neighbours(i, m)) == 4 for i in range(2) for m in range(2))
    other_only = neighbour_plan(gates, top_p=50, tau=1.0, same_client=False)
    assert other_only.neighbours(0, 1) == [(0, 1), (1, 0), (1, 1)]


def test_tau_to_zero_keeps_only_the_most_similar_neighbour_itself():
    rng = np.random.default_rng(3)
    gates = np.abs(rng.normal(size=(3, 4, 6)))               # all cosines in (0, 1): all eligible
    plan = neighbour_plan(gates, top_p=5, tau=1e-6)
    np.testing.assert_array_equal(plan.mixing_matrix(), np.eye(12))
    experts = _experts(3, 4)
    for mine, out in zip(experts, apply_plan(plan, experts), strict=True):
        assert all(np.array_equal(mine[k], out[k]) for k in mine)


def test_tau_to_zero_splits_between_exact_duplicates():
    gates = np.array([[[1.0, 0.0], [1.0, 0.2]], [[1.0, 0.0], [0.0, 1.0]]])   # (0,0) == (1,0)
    plan = neighbour_plan(gates, top_p=3, tau=1e-6)
    assert plan.neighbours(0, 0) == [(0, 0), (1, 0)]
    np.testing.assert_allclose(plan.weights(0, 0), [0.5, 0.5])


@pytest.mark.parametrize("mix", ["factors", "delta"])
def test_p_zero_leaves_every_expert_unchanged_bit_for_bit(mix):
    gates = np.random.default_rng(1).normal(size=(3, 4, 5))
    plan = neighbour_plan(gates, top_p=0, tau=1.0)
    experts = _experts(3, 4)
    out = apply_plan(plan, experts, mix=mix)
    for mine, new in zip(experts, out, strict=True):
        assert all(np.array_equal(mine[k], new[k]) and new[k].dtype == mine[k].dtype for k in mine)
        assert all(new[k] is not mine[k] for k in mine)         # copies: the inputs stay untouched
    assert plan.fetches() == [(), (), ()]


def test_weights_are_convex_and_mixing_is_the_plans_matrix():
    rng = np.random.default_rng(2)
    gates = np.abs(rng.normal(size=(3, 2, 4)))
    plan = neighbour_plan(gates, top_p=3, tau=0.3)
    w = plan.mixing_matrix()
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-12)
    assert (np.diag(w) >= w.max(axis=1) - 1e-15).all()        # an expert weighs itself the most
    experts = _experts(3, 2)
    out = apply_plan(plan, experts)
    for k in ("fc.lora_A", "fc.lora_B"):
        flat = np.stack([e[k] for e in experts]).reshape(6, -1).astype(np.float64)   # rows i*E + m
        got = np.stack([o[k] for o in out]).reshape(6, -1)
        np.testing.assert_allclose(got, w @ flat, rtol=1e-5, atol=1e-6)
        assert (got >= flat.min(0) - 1e-6).all() and (got <= flat.max(0) + 1e-6).all()


def test_fetch_list_names_exactly_the_peers_experts_used():
    gates = np.array([[[1.0, 0, 0], [0, 1.0, 0]],               # client 0
                      [[0, 1.0, 0], [0, 0, 1.0]],               # client 1: expert 0 == client 0's expert 1
                      [[0.9, 0.1, 0], [0, 0, 1.0]]])            # client 2: near (0,0); expert 1 == (1,1)
    plan = neighbour_plan(gates, top_p=1, tau=1.0, layer=2)
    # nearest others: (0,0)-(2,0), (0,1)-(1,0), (1,0)-(0,1), (1,1)-(2,1), (2,0)-(0,0), (2,1)-(1,1)
    assert plan.fetches() == [((1, 2, 0), (2, 2, 0)), ((0, 2, 1), (2, 2, 1)), ((0, 2, 0), (1, 2, 1))]
    used = {(t // 2, s // 2, s % 2) for t, s in zip(plan.target, plan.source, strict=True) if t // 2 != s // 2}
    assert {(i, *f[::2]) for i, fs in enumerate(plan.fetches()) for f in fs} == used
    own = neighbour_plan(np.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [-1.0, 0.0]]]), top_p=2, tau=1.0, layer=1)
    assert own.neighbours(0, 0) == [(0, 0), (0, 1)] and own.neighbours(0, 1) == [(0, 1), (0, 0), (1, 0)]
    assert own.fetches() == [((1, 1, 0),), ((0, 1, 1),)]                # own experts mix but never travel
    other = neighbour_plan(gates, top_p=0, tau=1.0, layer=0)
    assert fetch_lists([other, plan]) == plan.fetches()
    assert [p.layer for p in neighbour_plans([gates, gates], top_p=1, tau=1.0)] == [0, 1]


def test_zero_norm_proxy_keeps_itself_and_is_nobodys_neighbour():
    gates = np.array([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    sim = proxy_similarity(gates)
    assert np.isnan(sim[1]).all() and np.isnan(sim[:, 1]).all() and sim[0, 2] == 1.0
    plan = neighbour_plan(gates, top_p=3, tau=1.0)
    assert plan.neighbours(0, 1) == [(0, 1)]
    assert all((0, 1) not in plan.neighbours(i, m) for i, m in [(0, 0), (1, 0), (1, 1)])
    assert len(plan.neighbours(1, 1)) == 3


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_tau_must_be_positive(tau):
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        neighbour_plan(np.ones((1, 2, 2)), top_p=1, tau=tau)


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="top_p"):
        neighbour_plan(np.ones((1, 2, 2)), top_p=-1, tau=1.0)
    with pytest.raises(ValueError, match=r"\[N clients, E experts, D width\]"):
        neighbour_plan(np.ones((2, 2)), top_p=1, tau=1.0)
    with pytest.raises(ValueError, match="finite"):
        neighbour_plan(np.full((1, 2, 2), np.nan), top_p=1, tau=1.0)
    plan = neighbour_plan(np.ones((2, 2, 2)), top_p=1, tau=1.0)
    with pytest.raises(ValueError, match="covers 2 clients"):
        apply_plan(plan, _experts(3, 2))
    with pytest.raises(ValueError, match=r"expected \[2, \.\.\.\]"):
        apply_plan(plan, _experts(2, 3))
    with pytest.raises(ValueError, match="mix must be one of"):
        apply_plan(plan, _experts(2, 2), mix="average")
    with pytest.raises(ValueError, match="needs both"):
        apply_plan(plan, [{"fc.lora_A": e["fc.lora_A"]} for e in _experts(2, 2)], mix="delta")


def test_delta_mix_is_the_exact_mixture_of_products_when_it_fits_rank_r():
    """Sources sharing A: sum a B_j A = (sum a B_j) A has rank <= r, so re-factoring loses nothing."""
    experts = _experts(2, 2)
    shared_a = experts[0]["fc.lora_A"][0]
    for e in experts:
        e["fc.lora_A"][:] = shared_a
    plan = neighbour_plan(np.ones((2, 2, 3)), top_p=3, tau=1.0)          # everyone mixes all 4 equally
    out = apply_plan(plan, experts, mix="delta")
    mean_delta = np.mean([e["fc.lora_B"][m] @ e["fc.lora_A"][m] for e in experts for m in range(2)], axis=0)
    for o in out:
        for m in range(2):
            np.testing.assert_allclose(o["fc.lora_B"][m] @ o["fc.lora_A"][m], mean_delta, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(o["fc.lora_A"][m] @ o["fc.lora_A"][m].T, np.eye(2), atol=1e-5)
    factors = apply_plan(plan, experts, mix="factors")                     # shared A: no cross terms either
    np.testing.assert_allclose(factors[0]["fc.lora_B"][0] @ factors[0]["fc.lora_A"][0], mean_delta, rtol=1e-4,
                               atol=1e-5)


def test_delta_mix_is_the_best_rank_r_approximation_and_never_kills_a():
    experts = _experts(2, 1, r=1)                                          # rank 1: two different products
    plan = neighbour_plan(np.ones((2, 1, 3)), top_p=1, tau=1.0)
    out = apply_plan(plan, experts, mix="delta")
    mixed = 0.5 * sum(e["fc.lora_B"][0].astype(np.float64) @ e["fc.lora_A"][0] for e in experts)
    u, s, vt = np.linalg.svd(mixed)
    np.testing.assert_allclose(out[0]["fc.lora_B"][0] @ out[0]["fc.lora_A"][0], s[0] * np.outer(u[:, 0], vt[0]),
                               rtol=1e-4, atol=1e-5)
    zero_b = [{**e, "fc.lora_B": np.zeros_like(e["fc.lora_B"])} for e in experts]
    dead = apply_plan(plan, zero_b, mix="delta")                           # Delta W = 0: B = 0, A orthonormal
    assert np.array_equal(dead[0]["fc.lora_B"], np.zeros_like(dead[0]["fc.lora_B"]))
    np.testing.assert_allclose(np.linalg.norm(dead[0]["fc.lora_A"][0]), 1.0, rtol=1e-6)


def test_plan_due_every_i_rounds_from_round_one():
    assert [r for r in range(1, 13) if plan_due(r, 5)] == [1, 6, 11]
    assert all(plan_due(r, 1) for r in range(1, 5))
    with pytest.raises(ValueError, match="every"):
        plan_due(1, 0)
    with pytest.raises(ValueError, match="server_round"):
        plan_due(0, 5)


# ---------------------------------------------------------------- one client's side ----
@pytest.mark.parametrize("mix", ["factors", "delta"])
def test_each_client_mixing_its_own_share_equals_the_servers_full_mix(mix):
    """What travels (a client's plan rows and the peers' experts it names) is enough: every
    client recomputes exactly its row of the full mixing."""
    from fedmoe_sim.aggregation.fedmoe_da import client_plan, peer_parts, peer_part, personalise, plan_fetches

    rng = np.random.default_rng(3)
    n, e = 4, 3
    proxies = rng.normal(size=(n, e, 6))
    plan = neighbour_plan(proxies, top_p=4, tau=0.5, min_similarity=-math.inf)
    experts = _experts(n, e, seed=5)
    full = apply_plan(plan, experts, mix)
    ids = [10, 11, 12, 13]                              # plan positions are not client ids
    for pos, cid in enumerate(ids):
        part = client_plan([plan], pos, ids)
        fetched = {peer_part(f): {k: v[f[2]] for k, v in experts[ids.index(f[0])].items()}
                   for f in plan_fetches(part, cid)}
        assert all(f[0] != cid for f in plan_fetches(part, cid))
        mine, kept = personalise([experts[pos]], part, cid, peer_parts(fetched), mix)
        assert kept == 0
        for name in full[pos]:
            np.testing.assert_allclose(mine[0][name], full[pos][name], rtol=1e-6, atol=1e-7)


def test_an_expert_whose_peer_did_not_answer_stays_as_it_was():
    from fedmoe_sim.aggregation.fedmoe_da import client_plan, personalise, plan_fetches

    proxies = np.ones((2, 2, 3))                        # identical gates: everyone mixes with everyone
    plan = neighbour_plan(proxies, top_p=3, tau=1.0)
    experts = _experts(2, 2, seed=1)
    part = client_plan([plan], 0, [0, 1])
    assert plan_fetches(part, 0) == [(1, 0, 0), (1, 0, 1)]
    mine, kept = personalise([experts[0]], part, 0, {}, "factors")     # nothing arrived
    assert kept == 2
    for name in experts[0]:
        np.testing.assert_array_equal(mine[0][name], experts[0][name])
