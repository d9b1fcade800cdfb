"""The message protocol: named parts per client in one message, reply checks, the byte ledger."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord

from fedmoe_sim import wire
from fedmoe_sim.parts import ArraySpec, PartSpec

pytestmark = pytest.mark.usefixtures("task_identity")

EXPECT = {"expert": PartSpec.of({"a": ((2, 2), "float32"), "b": ((3,), "float32")})}


def _state(value=1.0):
    return {"a": np.full((2, 2), value, np.float32), "b": np.full(3, value, np.float32)}


def _reply(results):
    """A node's reply content in a Message (read_replies reads content and errors only)."""
    return Message(wire.make_reply(results), 1, MessageType.TRAIN)


def _result(cid, state=None, **metrics):
    return wire.ClientResult(cid, {"num-examples": 1, **metrics}, {"expert": _state() if state is None else state})


def test_task_carries_shared_and_per_client_parts_and_plans():
    box = wire.Outbox("train", [3, 5, 7])
    box.shared["global"] = _state(2.0)
    box.send(5, "mine", _state(5.0))
    for cid in (3, 5, 7):
        box.plan(cid, step=cid * 10, name=f"c{cid}")
    task = wire.read_task(wire.make_task('{"x": 1}', 2, box, [3, 5, 7]))
    assert task.client_ids == (3, 5, 7) and task.server_round == 2 and task.run_config == '{"x": 1}'
    assert task.phase == "train" and task.expect == ()
    assert set(task.parts(5)) == {"global", "mine"} and set(task.parts(3)) == {"global"}
    assert task.part(7, "mine") is None
    np.testing.assert_array_equal(task.part(5, "mine")["a"], _state(5.0)["a"])
    np.testing.assert_array_equal(task.part(3, "global")["b"], _state(2.0)["b"])
    assert task.plan(5) == {"step": 50, "name": "c5"}


def test_a_payload_shared_by_clients_of_a_message_travels_once():
    """One blob per distinct payload: the per-domain expert of 3 clients is one ArrayRecord."""
    domain_expert, other = _state(1.0), _state(2.0)
    box = wire.Outbox("train", [0, 1, 2, 3])
    for cid in (0, 1, 2):
        box.send(cid, "expert", domain_expert)
    box.send(3, "expert", other)
    content = wire.make_task("{}", 1, box, [0, 1, 2, 3])
    assert len(content.array_records) == 2
    task = wire.read_task(content)
    assert task.part(0, "expert") is task.part(2, "expert")          # decoded once, shared
    np.testing.assert_array_equal(task.part(3, "expert")["a"], other["a"])


def test_a_plan_key_must_cover_every_client():
    box = wire.Outbox("train", [0, 1])
    box.plan(0, peers=3)
    with pytest.raises(ValueError, match="plan key 'peers' must be set for every client"):
        wire.make_task("{}", 1, box, [0, 1])


def test_valid_replies_are_sorted_by_client_and_bytes_counted_per_part():
    got = wire.read_replies([_reply([_result(4), _result(1)])], EXPECT, asked={1, 4})
    assert [r.client_id for r in got.results] == [1, 4]
    assert got.uploaded == {(1, "expert"): 28, (4, "expert"): 28}      # (4 + 3) float32 = 28 bytes
    assert got.rejected == {}
    np.testing.assert_array_equal(got.results[0].part("expert")["a"], _state()["a"])


@pytest.mark.parametrize(
    "parts, reason",
    [
        ({}, "missing part 'expert'"),
        ({"expert": _state(), "gate": {"g": np.zeros(2, np.float32)}}, "unexpected part 'gate'"),
        ({"expert": {"a": np.zeros((2, 2), np.float32)}}, "keys differ"),
        ({"expert": {"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}}, "shape"),
        ({"expert": {"a": np.zeros((2, 2), np.float64), "b": np.zeros(3, np.float32)}}, "dtype"),
        ({"expert": {"a": np.full((2, 2), np.nan, np.float32), "b": np.zeros(3, np.float32)}}, "non-finite"),
        ({"expert": {"a": np.zeros((2, 2), np.float32), "b": np.array([0, np.inf, 0], np.float32)}}, "non-finite"),
    ],
)
def test_missing_unknown_and_malformed_parts_are_rejected_and_the_rest_kept(parts, reason, caplog):
    bad = wire.ClientResult(0, {"num-examples": 1}, parts)
    got = wire.read_replies([_reply([bad, _result(1)])], EXPECT, asked={0, 1})
    assert [r.client_id for r in got.results] == [1]
    assert reason in got.rejected[0]
    assert "rejected update of client 0" in caplog.text


def test_clients_sharing_a_layout_travel_packed_and_read_back_as_sent():
    """Five clients with the same expert layout: one stacked ArrayRecord and one MetricRecord
    of lists instead of five each; a sixth client with another shape travels on its own and is
    judged alone; every client reads back exactly what it sent, bytes booked per client."""
    results = [_result(c, _state(float(c)), **{"train-loss": c / 10}) for c in (3, 0, 7, 1, 4)]
    odd = wire.ClientResult(9, {"num-examples": 1}, {"expert": {"a": np.zeros((2, 3), np.float32),
                                                                "b": np.zeros(3, np.float32)}})
    content = wire.make_reply([*results, odd])
    packs = content.config_records[wire.PACKS]
    assert sorted(content.array_records) == ["pack/0/expert", "up/9/expert"]
    assert list(packs["pack/0/expert"]) == [3, 0, 7, 1, 4]
    assert tuple(content.array_records["pack/0/expert"]["a"].shape) == (5, 2, 2)
    assert sorted(content.metric_records) == ["metrics/9", "mpack/0"]     # its metric keys differ too
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, asked={0, 1, 3, 4, 7, 9})
    assert [r.client_id for r in got.results] == [0, 1, 3, 4, 7] and "shape" in got.rejected[9]
    for r in got.results:
        assert all(isinstance(a, np.ndarray) for a in r.part("expert").values())
        np.testing.assert_array_equal(r.part("expert")["a"], _state(float(r.client_id))["a"])
        np.testing.assert_array_equal(r.part("expert")["b"], _state(float(r.client_id))["b"])
        assert r.metrics == {"num-examples": 1.0, "train-loss": pytest.approx(r.client_id / 10)}
    assert got.uploaded == {**{(c, "expert"): 28 for c in (0, 1, 3, 4, 7)}, (9, "expert"): 36}
    assert wire.clients_in(Message(content, 1, MessageType.TRAIN)) == 6


def test_a_pack_is_checked_against_the_spec_once_and_its_rows_for_finite_values():
    """Three clients of one layout travel packed: the one whose row holds a NaN is rejected and
    the other two kept; a pack whose shared layout is wrong rejects every row."""
    nan = _state()
    nan["b"] = np.array([0.0, np.nan, 0.0], np.float32)
    got = wire.read_replies([_reply([_result(0), _result(1, nan), _result(2)])], EXPECT, asked={0, 1, 2})
    assert [r.client_id for r in got.results] == [0, 2] and got.rejected == {1: "part 'expert': b has non-finite values"}
    wide = [_result(c, {"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}) for c in (0, 1, 2)]
    content = wire.make_reply(wide)
    assert "pack/0/expert" in content.array_records
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, asked={0, 1, 2})
    assert got.results == [] and all("a has shape (2, 3), expected (2, 2)" in got.rejected[c] for c in (0, 1, 2))


def test_a_malformed_pack_rejects_its_clients_and_no_other():
    """Rows that do not match the pack's clients, a metrics list of the wrong length, or a part
    sent both packed and on its own: those clients are rejected, the reply's others are kept."""
    content = wire.make_reply([_result(c) for c in (0, 1)])
    content["pack/5/expert"] = wire.to_record({"a": np.zeros((3, 2, 2), np.float32), "b": np.zeros((3, 3), np.float32)})
    content["mpack/5"] = MetricRecord({"num-examples": [1.0, 1.0]})
    content["metrics/6"] = MetricRecord({"num-examples": [1.0]})
    content["up/0/expert"] = wire.to_record(_state())
    content[wire.PACKS] = wire.ConfigRecord({**content.config_records[wire.PACKS], "pack/5/expert": [2, 3],
                                             "mpack/5": [2, 3, 4]})
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, asked={0, 1, 2, 3, 4})
    assert [r.client_id for r in got.results] == [1]
    assert "part 'expert' sent twice" in got.rejected[0]
    assert all("one value per client" in got.rejected[c] for c in (2, 3, 4))


def test_a_pack_whose_rows_do_not_match_its_clients_is_rejected():
    content = wire.make_reply([_result(c) for c in (0, 1)])
    content["pack/0/expert"] = wire.to_record({"a": np.zeros((3, 2, 2), np.float32), "b": np.zeros((3, 3), np.float32)})
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, asked={0, 1})
    assert got.results == [] and all("one row per client (2)" in got.rejected[c] for c in (0, 1))


def test_bad_metrics_unasked_and_twice_answering_clients_are_rejected():
    content = wire.make_reply([_result(0, **{"num-examples": float("nan")}), _result(9), _result(2)])
    content["metrics/3"] = MetricRecord({"num-examples": [1.0, 2.0]})        # list-valued metric
    content["up/3/expert"] = wire.to_record(_state())
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN), _reply([_result(2)])], EXPECT, asked={0, 2, 3})
    assert [r.client_id for r in got.results] == [2]
    assert "non-finite" in got.rejected[0] and "not asked" in got.rejected[9]
    assert "not a number" in got.rejected[3]
    assert "answered twice" in got.rejected[2]
    assert got.uploaded[(9, "expert")] == 28        # bytes of rejected uploads are still counted


def test_num_examples_must_be_there_and_non_negative():
    no_count = wire.ClientResult(0, {"train-loss": 1.0}, {"expert": _state()})
    negative = _result(1, **{"num-examples": -3})
    got = wire.read_replies([_reply([no_count, negative, _result(2, **{"num-examples": 0})])], EXPECT, asked={0, 1, 2})
    assert [r.client_id for r in got.results] == [2]
    assert "no 'num-examples'" in got.rejected[0] and "must be >= 0" in got.rejected[1]


def test_a_round_whose_clients_hold_no_example_keeps_the_previous_part():
    from strategies._base import average_part

    previous = _state(7.0)
    empty = [wire.ClientResult(c, {"num-examples": 0.0}, {"expert": _state(float(c))}) for c in range(2)]
    assert average_part(empty, "expert", previous) is previous
    mixed = [*empty, wire.ClientResult(5, {"num-examples": 2.0}, {"expert": _state(5.0)})]
    np.testing.assert_array_equal(average_part(mixed, "expert", previous)["a"], _state(5.0)["a"])


def test_a_node_speaks_only_for_the_clients_it_was_asked_about():
    """Node 0 was asked about client 0 and node 2 about client 1: node 0 answering for both
    gets client 1 rejected."""
    msg = _reply([_result(0), _result(1)])
    assert msg.metadata.src_node_id == 0            # the task_identity fixture's node
    got = wire.read_replies([msg], EXPECT, asked={0, 1}, asked_of={0: {0}, 2: {1}})
    assert [r.client_id for r in got.results] == [0]
    assert "node 0 answered for a client it was not asked about" in got.rejected[1]


def test_malformed_record_names_are_ignored_not_raised():
    content = wire.make_reply([_result(1)])
    content["up/x/expert"] = wire.to_record(_state())
    content["up/1"] = wire.to_record(_state())
    content["metrics/abc"] = MetricRecord({"num-examples": 1.0})
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, asked={1})
    assert [r.client_id for r in got.results] == [1]


def test_undecodable_arrays_are_rejected_not_raised():
    content = wire.make_reply([wire.ClientResult(0, {"num-examples": 1})])
    content["up/0/expert"] = ArrayRecord({"a": Array(dtype="float32", shape=(2, 2), stype="numpy.ndarray", data=b"junk")})
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, asked={0})
    assert got.results == [] and "undecodable" in got.rejected[0]


def test_a_client_error_is_rejected_and_a_missing_state_reported():
    errors = [wire.ClientResult(0, {}, error="no stored expert", error_kind=wire.MISSING_STATE),
              wire.ClientResult(1, {}, error="boom")]
    got = wire.read_replies([_reply([*errors, _result(2)])], EXPECT, asked={0, 1, 2})
    assert [r.client_id for r in got.results] == [2]
    assert got.lost_state == {0: "no stored expert"} and "client error: boom" in got.rejected[1]


def test_open_axes_accept_any_length():
    spec = PartSpec({"ids": ArraySpec((None,), "int64")})
    assert spec.check({"ids": np.arange(7)}) is None and spec.check({"ids": np.arange(0)}) is None
    assert "shape" in spec.check({"ids": np.zeros((2, 2), np.int64)})


def test_ledger_books_per_round_direction_client_part_and_peer():
    ledger = wire.ByteLedger()
    ledger.add(1, wire.UP, 0, 10, "expert")
    ledger.add(1, wire.UP, 1, 5, "gate")
    ledger.add(2, wire.DOWN, 0, 7, "expert")
    ledger.add(2, wire.P2P, 0, 3, "expert/1", peer=4)
    assert ledger.round_total(1, wire.UP) == 15 and ledger.total(wire.DOWN) == 7 and ledger.total(wire.P2P) == 3
    assert ledger.client_bytes(1, wire.UP, 1) == 5 and ledger.round_total(2, wire.UP) == 0
    assert ledger.rows()[0] == {"round": 1, "direction": "up", "client": 0, "bytes": 10, "part": "expert", "peer": -1}
    assert ledger.rows()[-1] == {"round": 2, "direction": "p2p", "client": 0, "bytes": 3, "part": "expert/1", "peer": 4}
    with pytest.raises(ValueError, match="direction"):
        ledger.add(1, "sideways", 0, 1)


def test_clients_in_counts_logical_clients():
    errors = [wire.ClientResult(7, {}, error="x")]
    assert wire.clients_in(_reply([wire.ClientResult(i, {"num-examples": 1}) for i in range(3)] + errors)) == 4
    for ids in ([4], [1, 5, 9]):        # tasks, with and without parts
        for state in (None, {"w": np.ones(3, np.float32)}):
            box = wire.Outbox("train", ids, shared={"expert": state} if state else {})
            task = Message(wire.make_task("{}", 1, box, ids), dst_node_id=1, message_type=MessageType.TRAIN)
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


def test_a_fortran_ordered_payload_is_decoded_by_its_header_not_misread():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    record = ArrayRecord({"x": Array(np.asfortranarray(x))})     # not through to_record's contiguous copy
    np.testing.assert_array_equal(wire.from_record(record)["x"], x)


def test_a_header_that_disagrees_with_its_metadata_is_refused():
    arr = Array(np.zeros((2, 3), np.float32))
    lying = Array(dtype="float32", shape=(3, 2), stype="numpy.ndarray", data=arr.data)
    with pytest.raises(ValueError, match="header says float32 \\(2, 3\\)"):
        wire.from_record(ArrayRecord({"x": lying}))


@pytest.mark.parametrize("rows_of", ["all-rows-in-order", "reversed", "some-rows", "copies"])
def test_a_pack_of_row_views_carries_what_a_pack_of_copies_carries(rows_of):
    """A vectorised worker's trained tensors are row views of one stacked array: the pack then
    takes that array whole, and only when the rows are all of it, in order."""
    stacked = {k: np.arange(4 * int(np.prod(s)), dtype=np.float32).reshape(4, *s).copy()   # owns its rows
               for k, s in (("a", (2, 2)), ("b", (3,)))}
    order = {"all-rows-in-order": [0, 1, 2, 3], "reversed": [3, 2, 1, 0], "some-rows": [0, 1, 2], "copies": [0, 1, 2, 3]}
    rows = order[rows_of]
    state = (lambda i: {k: a[i].copy() for k, a in stacked.items()}) if rows_of == "copies" else \
        (lambda i: {k: a[i] for k, a in stacked.items()})
    content = wire.make_reply([_result(c, state(i)) for c, i in enumerate(rows)])
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, asked=set(range(len(rows))))
    assert [r.client_id for r in got.results] == list(range(len(rows))) and not got.rejected
    for r in got.results:
        for k in ("a", "b"):
            np.testing.assert_array_equal(r.part("expert")[k], stacked[k][rows[r.client_id]])
    assert (wire._rows_stacked([state(i)["a"] for i in rows]) is stacked["a"]) == (rows_of == "all-rows-in-order")
