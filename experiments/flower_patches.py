"""A small, pinned adjustment of Flower's simulation engine (flwr 1.41, unchanged in 1.42), with a safe fallback.

Flower's simulation engine hands pushed messages to the Ray actors from a loop
that sleeps 0.1 s between polls (`vce_api.add_messages_to_queue`), and no
setting reaches that wait in 1.41. A round whose training takes a few
milliseconds therefore still costs ~0.1 s, and a node with k queued messages
needs k polls. With few nodes a poll is cheap, so we poll every 1 ms; with many
nodes (one per client) each poll scans every stored message, so the shipped
0.1 s is kept.

The replacement is installed only if the function's source is exactly the one
it was written against (sha256 below, flwr 1.41.0; 1.42.0 ships the same source,
checked); otherwise Flower's own loop stays and a warning says so: a run is then
correct, only its short rounds are slower. The benchmarks, which measure that
speed, refuse to run unpatched (`pickup_patch_installed`). Measured: see BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import inspect
import logging

log = logging.getLogger(__name__)

PINNED_SOURCE_SHA256 = "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a"   # flwr 1.41.0
WRITTEN_FOR_FLWR = "1.41.0"
CHECKED_FLWR = ("1.41.0", "1.42.0")   # releases whose `add_messages_to_queue` has the pinned source
FAST_WAIT_S = 0.001
SHIPPED_WAIT_S = 0.1
FAST_MAX_NODES = 64      # above this, a poll scans too much LinkState to run every 1 ms


def pickup_wait(num_nodes: int) -> float:
    return FAST_WAIT_S if num_nodes <= FAST_MAX_NODES else SHIPPED_WAIT_S


def add_messages_to_queue(state, queue, nodes_mapping, f_stop) -> None:
    """Flower 1.41's loop, line for line, with the wait chosen from the node count."""
    wait = pickup_wait(len(nodes_mapping))
    while not f_stop.is_set():
        for node_id in nodes_mapping.keys():
            for msg in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(msg)
        f_stop.wait(wait)


def flwr_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("flwr")
    except metadata.PackageNotFoundError:
        return "not installed"


def pickup_patch_installed() -> bool:
    """True when Flower's simulation engine runs our pick-up loop (in this process)."""
    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:
        return False
    return vce_api.add_messages_to_queue is add_messages_to_queue


def shorten_message_pickup() -> bool:
    """Install the faster pick-up loop if Flower's is the pinned one; True when installed."""
    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:
        log.warning("flwr %s has no flwr.server.superlink.fleet.vce.vce_api; the simulation keeps Flower's "
                    "own message pick-up", flwr_version())
        return False
    current = vce_api.add_messages_to_queue
    if current is add_messages_to_queue:
        return True
    try:
        digest = hashlib.sha256(inspect.getsource(current).encode()).hexdigest()
    except (OSError, TypeError):
        digest = ""
    if digest != PINNED_SOURCE_SHA256:
        log.warning("Flower's simulation pick-up loop (flwr %s) is not the pinned one (written for flwr %s, "
                    "checked on %s); keeping Flower's 0.1 s polling", flwr_version(), WRITTEN_FOR_FLWR,
                    ", ".join(CHECKED_FLWR))
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True
