"""Run one configured experiment as a Flower simulation on Ray, from Python.

Node count: in `shard` placement each simulated SuperNode is a long-lived worker
that trains many logical clients per message, so one node per CPU core (or per
GPU share) is enough; in `partition` placement every client is its own node,
as in a real deployment.

Ray cluster (`simulation.ray_address`, docs/ray_cluster.md): "" starts a private
local Ray; "auto" or HOST:PORT attaches to a running cluster, whose nodes then
host the workers. Attached, one worker per actor slot of the cluster (Flower's
own count: per node, its CPUs // simulation.cpus_per_worker, capped by its GPUs
when workers take GPU shares) unless simulation.num_workers is set: this
machine's core count says nothing about the cluster.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings

from experiments.flower_patches import shorten_message_pickup
from fedmoe_sim.config import ConfigError, RunConfig
from fedmoe_sim.progress import SweepProgress
from fedmoe_sim.results import RunSummary


def num_nodes(cfg: RunConfig, cluster_slots: int | None = None) -> int:
    """Simulated SuperNodes. `cluster_slots`: the attached cluster's actor slots
    (`cluster_actor_slots`); None = a local Ray on this machine's cores."""
    fed, sim = cfg.federation, cfg.simulation
    if fed.placement == "partition":
        return fed.num_clients
    if cluster_slots is None:
        cluster_slots = int((os.cpu_count() or 1) // sim.cpus_per_worker)
    workers = sim.num_workers or max(1, cluster_slots)
    return max(1, min(workers, fed.num_clients))


def ray_init_args(cfg: RunConfig) -> dict:
    """What Flower passes to `ray.init`. "" is `address="local"`: a fresh private instance,
    never one that RAY_ADDRESS or an earlier `ray start` on this machine points at."""
    return {"address": cfg.simulation.ray_address or "local", "include_dashboard": False,
            "logging_level": logging.ERROR, "log_to_driver": False}


def backend_config(cfg: RunConfig) -> dict:
    sim = cfg.simulation
    return {
        "client_resources": {"num_cpus": sim.cpus_per_worker, "num_gpus": sim.gpus_per_worker},
        "init_args": ray_init_args(cfg),
    }


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes: Ray retries a silent HOST:PORT for well over a minute."""
    if address == "auto":   # Ray resolves it (RAY_ADDRESS, the latest `ray start` here) and fails fast itself
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"simulation.ray_address={address!r}: no Ray head answers there ({exc.strerror or exc}); "
                          f"start one with `ray start --head --port={port}` (docs/ray_cluster.md)") from None


def cluster_actor_slots(cfg: RunConfig) -> int:
    """Connect to the cluster at simulation.ray_address, count the ClientApp actors it can host
    (Flower's own per-node count) and disconnect again, so that Flower's `ray.init` (which
    also sets the workers' PYTHONPATH) is the one the run uses. ConfigError (one line) when
    no cluster answers or no node fits one worker."""
    import ray
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    address = cfg.simulation.ray_address
    resources = backend_config(cfg)["client_resources"]
    attached_here = not ray.is_initialized()
    if attached_here:
        check_reachable(address)
        try:
            ray.init(**ray_init_args(cfg))
        except (ConnectionError, RuntimeError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"simulation.ray_address={address!r}: no Ray cluster to attach to ({reason}); "
                              f"start one with `ray start --head --port=6379` (docs/ray_cluster.md)") from None
    try:
        return pool_size_from_resources(resources)
    except ValueError:
        raise ConfigError(f"the Ray cluster at {address!r} has no node with {resources['num_cpus']} CPU(s)"
                          f" and {resources['num_gpus']} GPU(s) for one worker; lower simulation.cpus_per_worker"
                          f" / simulation.gpus_per_worker or add nodes") from None
    finally:
        if attached_here:
            ray.shutdown()


def quiet_flower() -> None:
    """Flower logs every message at INFO; our progress line says what matters."""
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("flwr").setLevel(logging.ERROR)  # also hides run_simulation's own deprecation notice
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run_simulation(cfg: RunConfig, show_progress: bool = True) -> RunSummary:
    """Run cfg in a Flower simulation (a local Ray, or the cluster at simulation.ray_address) and
    return its summary (also written under cfg.out); progress as a sweep of this one run."""
    with SweepProgress([f"{cfg.strategy} seed {cfg.seed}"], enabled=show_progress) as sweep:
        return run_many([cfg], sweep)[0]


def run_many(cfgs: list[RunConfig], sweep: SweepProgress | None = None) -> list[RunSummary]:
    """Run several configs one after another in ONE simulation (one Ray start-up).

    Clients dispatch on the run config carried by every task, and their
    per-process caches are keyed by it, so a sweep over strategies and seeds
    shares the workers. All configs must agree on the simulation settings.
    Run i reports to `sweep.run(i, ...)`; the caller enters the sweep (`with`), so its live
    display spans Ray's start-up too. None: no progress output.
    """
    if not cfgs:
        return []
    first = cfgs[0]
    if any((c.simulation, c.federation.placement) != (first.simulation, first.federation.placement) for c in cfgs):
        raise ValueError("configs run in one simulation must share simulation.* and federation.placement")
    quiet_flower()
    slots = None
    if first.simulation.ray_address:
        check_reachable(first.simulation.ray_address)
        if not first.simulation.num_workers:
            slots = cluster_actor_slots(first)
    if any(num_nodes(c, slots) != num_nodes(first, slots) for c in cfgs):
        raise ValueError("configs run in one simulation must share simulation.* and federation.placement")
    shorten_message_pickup()
    from flwr.simulation import run_simulation as flwr_run_simulation

    from clients.app import app as client_app
    from strategies.app import make_server_app

    results: list[RunSummary] = []
    server_app = make_server_app(cfgs, sweep, results)
    flwr_run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=num_nodes(first, slots),
        backend_config=backend_config(first),
    )
    if len(results) != len(cfgs):
        raise RuntimeError(f"the simulation finished {len(results)} of {len(cfgs)} runs; see the log above for the server error")
    return results

