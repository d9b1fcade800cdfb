"""Fuzzing the two edges that take outside input: config text and records from clients.

Config: any key and value in, a RunConfig or one ConfigError line out, never another
exception. Records: packing round-trips; random bytes, truncated arrays and foreign
record names give a clean rejection, never an exception in the server's reply reader.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedmoe_sim import wire
from fedmoe_sim.config import ConfigError, known_keys, parse_assignments, resolve_config
from fedmoe_sim.faults import parse_faults
from fedmoe_sim.parts import PartSpec

pytestmark = pytest.mark.usefixtures("task_identity")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = sorted(known_keys())
text = st.text(max_size=30)
values = st.one_of(text, st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.sampled_from(["", "0", "-1", "1e309", "nan", "true", "shard", "mean", "fedavg", "0.5"]))


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(KEYS), text), values, max_size=4))
def test_any_config_layer_gives_a_config_or_one_clear_error(layer):
    try:
        resolve_config(layer, warn=False)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message


@FUZZ
@given(st.lists(text, max_size=4))
def test_any_set_assignment_or_faults_text_gives_values_or_one_clear_error(items):
    for parse in (lambda: parse_assignments(items), lambda: parse_faults(",".join(items))):
        try:
            parse()
        except ConfigError as exc:
            assert "\n" not in str(exc)


# ---------------------------------------------------------------- records ----
EXPECT = {"expert": PartSpec.of({"a": ((None, 3), "float32")})}
arrays = st.integers(0, 4).flatmap(lambda n: st.lists(st.floats(-1e3, 1e3, width=32), min_size=3 * n, max_size=3 * n)
                                   .map(lambda v: np.array(v, np.float32).reshape(-1, 3)))


@FUZZ
@given(arrays, st.floats(0, 1e6))
def test_a_packed_part_round_trips_exactly(arr, n):
    reply = Message(wire.make_reply([wire.ClientResult(7, {wire.NUM_EXAMPLES: n}, {"expert": {"a": arr}})]),
                    1, MessageType.TRAIN)
    got = wire.read_replies([reply], EXPECT, [7])
    assert got.rejected == {}
    np.testing.assert_array_equal(got.results[0].part("expert")["a"], arr)
    assert got.results[0].metrics[wire.NUM_EXAMPLES] == n


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["float32", "float64", "int64", "object", "bogus"]),
       st.lists(st.integers(0, 5), max_size=3), st.integers(0, 200))
def test_random_bytes_and_truncated_arrays_are_rejected_cleanly(junk, dtype, shape, cut):
    good = Array(np.ones((2, 3), np.float32))
    records = {"up/0/expert": ArrayRecord({"a": Array(dtype=dtype, shape=tuple(shape), stype="numpy.ndarray",
                                                      data=junk)}),
               "up/1/expert": ArrayRecord({"a": Array(dtype="float32", shape=(2, 3), stype="numpy.ndarray",
                                                      data=good.data[:cut])})}
    content = wire.make_reply([wire.ClientResult(0, {wire.NUM_EXAMPLES: 1.0}), wire.ClientResult(1, {wire.NUM_EXAMPLES: 1.0})])
    for name, record in records.items():
        content[name] = record
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, [0, 1])
    assert {r.client_id for r in got.results} | set(got.rejected) == {0, 1}
    for r in got.results:                          # only what is truly a valid part gets through
        assert EXPECT["expert"].check(r.part("expert")) is None


@FUZZ
@given(st.lists(st.tuples(text, st.sampled_from(["array", "metric", "config"])), max_size=5),
       st.one_of(st.floats(allow_nan=True), st.integers(-5, 5), st.lists(st.floats(), max_size=2)))
def test_foreign_record_names_and_metric_values_never_raise(names, metric):
    content = wire.make_reply([wire.ClientResult(0, {wire.NUM_EXAMPLES: 1.0}, {"expert": {"a": np.ones((1, 3), np.float32)}})])
    for name, kind in names:
        if not name or name in content:
            continue
        if kind == "array":
            content[name] = ArrayRecord({"a": Array(np.zeros(2, np.float32))})
        elif kind == "metric":
            content[name] = MetricRecord({wire.NUM_EXAMPLES: metric})
        else:
            content[name] = ConfigRecord({"kind": "x", "reason": name})
    got = wire.read_replies([Message(content, 1, MessageType.TRAIN)], EXPECT, [0])
    assert {r.client_id for r in got.results} <= {0}                  # nobody unasked gets in
    assert 0 in {r.client_id for r in got.results} | set(got.rejected)  # and client 0 is judged
