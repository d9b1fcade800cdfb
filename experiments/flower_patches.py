"""A small, pinned adjustment of Flower's simulation engine (flwr 1.41), with a safe fallback.

Flower's simulation engine hands pushed messages to the Ray actors from a loop
that sleeps 0.1 s between polls (`vce_api.add_messages_to_queue`), and no
setting reaches that wait in 1.41. A round whose training takes a few
milliseconds therefore still costs ~0.1 s, and a node with k queued messages
needs k polls. With few nodes a poll is cheap, so we poll every 2 ms; with many
nodes (one per client) each poll scans every stored message, so the shipped
0.1 s is kept.

The replacement is installed only if the function's source is exactly the one
it was written against (sha256 below); otherwise Flower's own loop stays and a
warning says so. Measured: see BENCHMARKS.md.
"""

from __future__ import annotations

import hashlib
import inspect
import logging

log = logging.getLogger(__name__)

PINNED_SOURCE_SHA256 = "953f4bd41a931a7779a4a670ab17b633f6e20b08a0128535328674466419777a"   # flwr 1.41.0
FAST_WAIT_S = 0.002
SHIPPED_WAIT_S = 0.1
FAST_MAX_NODES = 64      # above this, a poll scans too much LinkState to run every 2 ms


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


def shorten_message_pickup() -> bool:
    """Install the faster pick-up loop if Flower's is the pinned one; True when installed."""
    try:
        from flwr.server.superlink.fleet.vce import vce_api
    except ImportError:
        return False
    current = vce_api.add_messages_to_queue
    if current is add_messages_to_queue:
        return True
    try:
        digest = hashlib.sha256(inspect.getsource(current).encode()).hexdigest()
    except (OSError, TypeError):
        digest = ""
    if digest != PINNED_SOURCE_SHA256:
        log.warning("Flower's simulation pick-up loop is not the pinned flwr 1.41 one; keeping Flower's 0.1 s polling")
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    return True
