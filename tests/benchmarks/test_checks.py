"""benchmarks/_checks.py (same-result comparison, patch check) and the floor's chunking; no Ray."""

import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.server.superlink.fleet.vce import vce_api

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _checks import SAME_RESULT_TOL, max_abs_diff, require_pickup_patch, same_result  # noqa: E402
from _floor import chunks  # noqa: E402


def _state(w, b):
    return {"w": np.asarray(w, np.float32), "b": np.asarray(b, np.float32)}


def test_max_abs_diff_is_the_largest_entry_and_inf_for_another_model():
    a = _state([[1.0, 2.0], [3.0, 4.0]], [0.5])
    b = _state([[1.0, 2.25], [3.0, 3.5]], [0.5])                        # |diff| = 0.25 and 0.5
    assert max_abs_diff(a, b) == 0.5
    assert max_abs_diff(a, a) == 0.0
    assert max_abs_diff(a, {"w": a["w"]}) == float("inf")               # a key missing
    assert max_abs_diff(a, _state([1.0, 2.0, 3.0, 4.0], [0.5])) == float("inf")   # another shape


def test_same_result_within_the_tolerance_and_not_beyond():
    a = _state([1.0, 2.0], [0.0])
    near = _state([1.0 + SAME_RESULT_TOL / 2, 2.0], [0.0])
    far = _state([1.0, 2.0 + 10 * SAME_RESULT_TOL], [0.0])
    previous = _state([0.5, 2.0], [0.0])                                  # the last round moved w[0] by 0.5
    ok = same_result({"a": a, "a2": a, "b": near, "c": None}, previous=previous)
    assert ok["same"] is True and ok["diff"] == {"a2": 0.0, "b": pytest.approx(SAME_RESULT_TOL / 2, rel=1e-2)}
    assert ok["update"] == 0.5 and ok["tol"] == SAME_RESULT_TOL
    bad = same_result({"a": a, "b": near, "c": far})
    assert bad["same"] is False and bad["diff"]["c"] == pytest.approx(10 * SAME_RESULT_TOL, rel=1e-2)


def test_same_result_is_not_applicable_without_two_global_models():
    assert same_result({"a": None, "b": None, "c": None})["same"] is None    # `local`: no global model
    assert same_result({"a": _state([1.0], [0.0]), "b": None})["same"] is None


def test_the_benchmark_stops_when_the_pickup_patch_does_not_install(monkeypatch):
    def changed(state, queue, nodes_mapping, f_stop):    # a different upstream implementation
        f_stop.wait(0.5)

    monkeypatch.setattr(vce_api, "add_messages_to_queue", changed)
    with pytest.raises(SystemExit, match=r"pick-up patch .* did not install on flwr \S+ \(written for 1\.41\.0"):
        require_pickup_patch()
    assert vce_api.add_messages_to_queue is changed          # Flower's own loop stays


def test_the_benchmark_runs_on_the_pinned_flower_loop(monkeypatch):
    from experiments import flower_patches

    original = getattr(vce_api.add_messages_to_queue, "__wrapped__", vce_api.add_messages_to_queue)
    monkeypatch.setattr(vce_api, "add_messages_to_queue", original)     # restored after the test
    require_pickup_patch()                                               # no exit
    assert flower_patches.pickup_patch_installed()


def test_the_floor_splits_a_cohort_into_contiguous_near_equal_chunks():
    assert chunks(list(range(7)), 2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert chunks([1, 2], 3) == [[1], [2], []]
    assert sum(chunks(list(range(200)), 2), []) == list(range(200))
