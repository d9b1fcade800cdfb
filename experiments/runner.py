"""Run one configured experiment as a Flower simulation on Ray, from Python.

Node count: in `shard` placement each simulated SuperNode is a long-lived worker
that trains many logical clients per message, so one node per CPU core (or per
GPU share) is enough; in `partition` placement every client is its own node,
as in a real deployment.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable

from experiments.flower_patches import shorten_message_pickup
from fedmoe_sim.config import RunConfig
from fedmoe_sim.results import RunSummary


def num_nodes(cfg: RunConfig) -> int:
    fed, sim = cfg.federation, cfg.simulation
    if fed.placement == "partition":
        return fed.num_clients
    workers = sim.num_workers or max(1, int((os.cpu_count() or 1) // sim.cpus_per_worker))
    return max(1, min(workers, fed.num_clients))


def backend_config(cfg: RunConfig) -> dict:
    sim = cfg.simulation
    return {
        "client_resources": {"num_cpus": sim.cpus_per_worker, "num_gpus": sim.gpus_per_worker},
        "init_args": {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False},
    }


def quiet_flower() -> None:
    """Flower logs every message at INFO; our progress line says what matters."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("flwr").setLevel(logging.ERROR)  # also hides run_simulation's own deprecation notice
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run_simulation(cfg: RunConfig, progress_prefix: str = "", show_progress: bool = True) -> RunSummary:
    """Run cfg in a local Flower simulation and return its summary (also written under cfg.out)."""
    return run_many([cfg], lambda i, c: progress_prefix, show_progress)[0]


def run_many(cfgs: list[RunConfig], prefix: Callable[[int, RunConfig], str] | None = None,
             show_progress: bool = True) -> list[RunSummary]:
    """Run several configs one after another in ONE simulation (one Ray start-up).

    Clients dispatch on the run config carried by every task, and their
    per-process caches are keyed by it, so a sweep over strategies and seeds
    shares the workers. All configs must agree on the simulation settings.
    """
    if not cfgs:
        return []
    first = cfgs[0]
    for cfg in cfgs[1:]:
        if (cfg.simulation, cfg.federation.placement) != (first.simulation, first.federation.placement) or \
                num_nodes(cfg) != num_nodes(first):
            raise ValueError("configs run in one simulation must share simulation.* and federation.placement")
    quiet_flower()
    shorten_message_pickup()
    from flwr.simulation import run_simulation as flwr_run_simulation

    from clients.app import app as client_app
    from strategies.app import make_server_app

    results: list[RunSummary] = []
    server_app = make_server_app(cfgs, prefix, show_progress, results)
    flwr_run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_nodes(first),
        backend_config=backend_config(first),
    )
    if len(results) != len(cfgs):
        raise RuntimeError(f"the simulation finished {len(results)} of {len(cfgs)} runs; see the log above for the server error")
    return results
