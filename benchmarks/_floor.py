"""(a2) of benchmarks/sim_speed.py: the plain loop of (a) split over N processes, the N-core floor.

What a careful person would write without any FL framework to use N cores: N
processes started once, each with the data and one reused model
(`Workspace.train_client`, one client after another, never vectorised); per round
the parent sends each process a contiguous chunk of the sampled clients (as our
shard placement does) with their starting states, the processes train in
parallel and send the trained experts back through a pipe, and the parent does
the server step (`weighted_average` over the clients in schedule order, so the
global expert is (a)'s, bit for bit). Timed per round as (a): from the first send
to the averaged expert; building the workspaces is outside the timing.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np

State = dict[str, np.ndarray]


def _serve(conn) -> None:
    """Worker loop: ("cell", config JSON) builds the workspace; ("round", r, cids, starts) trains."""
    from fedmoe_sim.config import config_from_json
    from fedmoe_sim.workspace import Workspace

    ws = None
    while True:
        msg = conn.recv()
        if msg is None:
            return
        if msg[0] == "cell":
            ws = Workspace(config_from_json(msg[1]))
            conn.send("ready")
        else:
            _, server_round, cids, starts = msg
            conn.send([ws.train_client(cid, server_round, start)[::2] for cid, start in zip(cids, starts, strict=True)])


def chunks(items: list, n: int) -> list[list]:
    """`items` in n contiguous chunks whose sizes differ by at most one (the first ones larger)."""
    q, r = divmod(len(items), n)
    out, lo = [], 0
    for i in range(n):
        hi = lo + q + (i < r)
        out.append(items[lo:hi])
        lo = hi
    return out


def server_step(results, personal: bool, own: dict, global_state):
    """The plain loops' server step ((a) and (a2)): `local` keeps each client's state in `own`;
    FedAvg averages the states weighted by examples, in schedule order. Returns the global state."""
    from fedmoe_sim.aggregation import weighted_average

    if personal:
        own.update((cid, state) for cid, state, _ in results)
        return global_state
    return weighted_average([state for _, state, _ in results], [n for _, _, n in results])


class Floor:
    """N worker processes (spawned once, torch threads as the config says: 1)."""

    def __init__(self, workers: int) -> None:
        ctx = mp.get_context("spawn")     # no fork of a process that holds threads (the RSS sampler, torch)
        self.conns, self.procs = [], []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(self, cfg) -> tuple[list[tuple[float, float]], list[State | None]]:
        """(start, end) of every round, and the global expert after each round (None for `local`)."""
        from fedmoe_sim.sampling import client_schedule
        from fedmoe_sim.workspace import Workspace

        for conn in self.conns:
            conn.send(("cell", cfg.to_json()))
        fed = cfg.federation
        personal = cfg.strategy == "local"
        global_state = Workspace(cfg).initial_expert() if not personal else None
        for conn in self.conns:
            assert conn.recv() == "ready"
        schedule = client_schedule(fed.num_clients, fed.rounds, fed.fraction_train, cfg.seed, "train")
        own: dict[int, State] = {}
        spans, experts = [], []
        for server_round in range(1, fed.rounds + 1):
            t0 = time.monotonic()
            parts = chunks(list(schedule[server_round - 1]), len(self.conns))
            for conn, cids in zip(self.conns, parts, strict=True):
                starts = [own.get(c) for c in cids] if personal else [global_state] * len(cids)
                conn.send(("round", server_round, cids, starts))
            results = [(cid, state, n) for conn, cids in zip(self.conns, parts, strict=True)
                       for cid, (state, n) in zip(cids, conn.recv(), strict=True)]
            global_state = server_step(results, personal, own, global_state)
            spans.append((t0, time.monotonic()))
            experts.append(global_state)
        return spans, experts

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()

    def __enter__(self) -> Floor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
