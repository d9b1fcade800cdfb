import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType

from fedmoe_sim import wire

pytestmark = pytest.mark.usefixtures("task_identity")

SPEC = {"a": ((2, 2), "float32"), "b": ((3,), "float32")}


def _state(value=1.0):
    return {"a": np.full((2, 2), value, np.float32), "b": np.full(3, value, np.float32)}


def _reply(results):
    """A node's reply content in a Message (read_replies reads content and errors only)."""
    return Message(wire.make_reply(results), 1, MessageType.TRAIN)


def test_task_round_trip_keeps_clients_round_and_state():
    content = wire.make_task('{"x": 1}', [3, 5], 2, _state(2.0))
    task = wire.read_task(content)
    assert task.client_ids == (3, 5) and task.server_round == 2 and task.run_config == '{"x": 1}'
    np.testing.assert_array_equal(task.global_state["a"], _state(2.0)["a"])
    assert wire.read_task(wire.make_task("{}", [1], 1, None)).global_state is None


def test_valid_replies_are_sorted_by_client_and_bytes_counted():
    msg = _reply([wire.ClientResult(4, {"num-examples": 2}, _state()), wire.ClientResult(1, {"num-examples": 3}, _state())])
    got = wire.read_replies([msg], SPEC, expected={1, 4})
    assert [r.client_id for r in got.results] == [1, 4]
    assert got.uploaded == {1: 28, 4: 28}                    # (4 + 3) float32 = 28 bytes
    assert got.rejected == {}


@pytest.mark.parametrize(
    "state, reason",
    [
        ({"a": np.zeros((2, 2), np.float32)}, "keys differ"),
        ({"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}, "shape"),
        ({"a": np.zeros((2, 2), np.float64), "b": np.zeros(3, np.float32)}, "dtype"),
        ({"a": np.full((2, 2), np.nan, np.float32), "b": np.zeros(3, np.float32)}, "non-finite"),
        ({"a": np.zeros((2, 2), np.float32), "b": np.array([0, np.inf, 0], np.float32)}, "non-finite"),
    ],
)
def test_malformed_updates_are_rejected_and_the_rest_kept(state, reason, caplog):
    msg = _reply([wire.ClientResult(0, {"num-examples": 1}, state), wire.ClientResult(1, {"num-examples": 1}, _state())])
    got = wire.read_replies([msg], SPEC, expected={0, 1})
    assert [r.client_id for r in got.results] == [1]
    assert reason in got.rejected[0]
    assert "rejected update of client 0" in caplog.text


def test_non_finite_metrics_and_unasked_clients_are_rejected():
    msg = _reply([wire.ClientResult(0, {"num-examples": float("nan")}, _state()),
                  wire.ClientResult(9, {"num-examples": 1}, _state())])
    got = wire.read_replies([msg], SPEC, expected={0})
    assert got.results == []
    assert set(got.rejected) == {0, 9}


def test_undecodable_arrays_are_rejected_not_raised():
    content = wire.make_reply([wire.ClientResult(0, {"num-examples": 1})])
    content["expert/0"] = ArrayRecord({"a": Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=b"junk")})
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], SPEC)
    assert got.results == [] and "undecodable" in got.rejected[0]


def test_ledger_totals_by_round_direction_and_client():
    ledger = wire.ByteLedger()
    ledger.add(1, wire.UP, 0, 10)
    ledger.add(1, wire.UP, 1, 5)
    ledger.add(2, wire.DOWN, 0, 7)
    assert ledger.round_total(1, wire.UP) == 15 and ledger.total(wire.DOWN) == 7
    assert ledger.client_bytes(1, wire.UP, 1) == 5 and ledger.round_total(2, wire.P2P) == 0
    assert ledger.rows()[0] == {"round": 1, "direction": "up", "client": 0, "bytes": 10}
    with pytest.raises(ValueError, match="direction"):
        ledger.add(1, "sideways", 0, 1)


def test_clients_in_counts_logical_clients():
    assert wire.clients_in(_reply([wire.ClientResult(i, {"num-examples": 1}) for i in range(3)])) == 3
    for ids in ([4], [1, 5, 9]):        # tasks, with and without a global state
        for state in (None, {"w": np.ones(3, np.float32)}):
            task = Message(wire.make_task("{}", ids, 1, state), dst_node_id=1, message_type=MessageType.TRAIN)
            assert wire.clients_in(task) == len(ids)


@pytest.mark.parametrize("arr", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([7], np.int64),
                                 np.zeros((0, 5), np.float64), np.asfortranarray(np.ones((2, 3), np.float32)),
                                 np.float32(2.5).reshape(())])
def test_fast_decode_equals_flowers_decoder(arr):
    record = wire.to_record({"x": arr})
    fast = wire.from_record(record)["x"]
    ref = record["x"].numpy()
    assert fast.dtype == ref.dtype and fast.shape == ref.shape and np.array_equal(fast, ref)
    assert fast.flags.writeable
