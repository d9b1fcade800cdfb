"""The pinned Flower pick-up adjustment: installs on the pinned source, falls back otherwise."""

import queue
import threading

from flwr.server.superlink.fleet.vce import vce_api

from experiments import flower_patches


def test_installs_on_the_pinned_flower_loop(monkeypatch):
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)
    if flower_patches.add_messages_to_queue is vce_api.add_messages_to_queue:
        return  # already installed in this process by an earlier simulation
    assert flower_patches.shorten_message_pickup() is True
    assert vce_api.add_messages_to_queue is flower_patches.add_messages_to_queue


def test_falls_back_when_flowers_loop_changed(monkeypatch, caplog):
    def changed(state, queue, nodes_mapping, f_stop):  # a different upstream implementation
        f_stop.wait(0.5)

    monkeypatch.setattr(vce_api, "add_messages_to_queue", changed)
    assert flower_patches.shorten_message_pickup() is False
    assert vce_api.add_messages_to_queue is changed
    assert "keeping Flower's 0.1 s polling" in caplog.text


def test_wait_depends_on_node_count_and_loop_moves_messages():
    assert flower_patches.pickup_wait(2) == flower_patches.FAST_WAIT_S
    assert flower_patches.pickup_wait(1000) == flower_patches.SHIPPED_WAIT_S

    class State:
        def __init__(self):
            self.pending = {1: ["a", "b"], 2: ["c"]}

        def get_message_ins(self, node_id, limit):
            items, self.pending[node_id] = self.pending[node_id][:limit], self.pending[node_id][limit:]
            return items

    q, stop = queue.Queue(), threading.Event()
    th = threading.Thread(target=flower_patches.add_messages_to_queue, args=(State(), q, {1: 0, 2: 1}, stop))
    th.start()
    got = [q.get(timeout=2) for _ in range(3)]
    stop.set()
    th.join(timeout=2)
    assert sorted(got) == ["a", "b", "c"]
