"""Workspace: each client's own initial state (private parts from its own seed, shared parts common)."""

import numpy as np
import pytest

from experiments.catalogue import build_config
from fedmoe_sim.models.pfedmoe import GATE, GLOBAL, HEAD, LOCAL
from fedmoe_sim.workspace import Workspace, get_workspace

SMALL = {"federation.num_clients": 10, "data.samples_per_client": 20}


def _ws(strategy, seed=0, experiment="pfedmoe-digits", **extra):
    return get_workspace(build_config(experiment, {**SMALL, "strategy": strategy, "seed": seed, **extra}))


def _part(ws, cid, state, part):
    return ws.model_of(cid).split_parts(state, [part])[part]


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_pfedmoe_clients_draw_their_private_parts_and_share_the_global_experts_start():
    ws = _ws("pfedmoe")
    assert ws.family_of(0) == ws.family_of(5)                        # same family, so the same shapes
    a, b = ws.initial_state(0), ws.initial_state(5)
    server = ws.model.split_parts(ws.initial_expert(), [GLOBAL])[GLOBAL]   # what the server starts from
    for cid in range(10):
        assert _same(_part(ws, cid, ws.initial_state(cid), GLOBAL), server)
    for part in (LOCAL, GATE, HEAD):
        pa, pb = _part(ws, 0, a, part), _part(ws, 5, b, part)
        random = [k for k in pa if ".norm." not in k]                 # the gate's LayerNorm starts at (1, 0)
        assert random and not any(np.array_equal(pa[k], pb[k]) for k in random), part
    # the gates differ from the start, so not every client leans the same way
    x = ws.test_data(0)[0]
    gates = [ws.load(ws.initial_state(c), ws.family_of(c)).gate_weights(x)[:, 0].mean().item() for c in (0, 5)]
    assert gates[0] != pytest.approx(gates[1], abs=1e-3)


def test_a_clients_start_depends_on_the_seed_and_its_id_alone():
    ws = _ws("pfedmoe")
    first = ws.initial_state(7)
    ws.initial_state(2)                                                # other draws in between change nothing
    ws.initial_expert()
    assert _same(ws.initial_state(7), first)
    fresh = Workspace(ws.cfg)                                          # another process (node) draws the same
    assert _same(fresh.initial_state(7), first)
    other = _ws("pfedmoe", seed=1).initial_state(7)
    assert not np.array_equal(_part(ws, 7, other, GATE)["gate.fc1.weight"], _part(ws, 7, first, GATE)["gate.fc1.weight"])


def test_heterogeneous_cnn_clients_draw_every_part_themselves():
    ws = _ws("standalone")
    a, b = ws.initial_state(0), ws.initial_state(5)
    assert set(a) == set(b) and not any(np.array_equal(a[k], b[k]) for k in a)
    assert _same(ws.initial_state(0), a)


def test_models_without_private_parts_start_every_client_from_the_runs_one_draw():
    ws = _ws("fedavg", experiment="digits-domains", **{"model.pretrain_steps": 200})
    assert ws.model.private_parts == ()
    assert _same(ws.initial_state(3), ws.initial_expert()) and _same(ws.initial_state(4), ws.initial_expert())


@pytest.mark.parametrize("strategy", ["pfedmoe", "standalone"])
def test_vectorised_and_sequential_paths_start_and_score_untrained_clients_alike(strategy):
    import dataclasses

    ws = _ws(strategy)
    cids = list(range(10))
    seq_cfg = dataclasses.replace(ws.cfg, simulation=dataclasses.replace(ws.cfg.simulation, vectorise=False))
    vec_cfg = dataclasses.replace(ws.cfg, simulation=dataclasses.replace(ws.cfg.simulation, vectorise=True))
    ws.cfg = seq_cfg
    seq = ws.evaluate_clients(cids, [None] * 10)
    ws.cfg = vec_cfg
    vec = ws.evaluate_clients(cids, [None] * 10)
    for s, v in zip(seq, vec, strict=True):
        assert v.acc_own == s.acc_own and v.loss == pytest.approx(s.loss, abs=1e-5)
