import numpy as np
import pytest

from fedmoe_sim.aggregation import weighted_average


def test_weighted_average_by_example_counts():
    a = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    b = {"w": np.array([4.0, 8.0], dtype=np.float32)}
    out = weighted_average([a, b], [1, 2])          # (1*a + 2*b) / 3
    np.testing.assert_allclose(out["w"], [3.0, 6.0])
    assert out["w"].dtype == np.float32


def test_one_client_average_is_that_client():
    a = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    np.testing.assert_array_equal(weighted_average([a], [5])["w"], a["w"])


def test_mismatched_keys_and_bad_weights_are_refused():
    with pytest.raises(ValueError, match="different keys"):
        weighted_average([{"a": np.zeros(1)}, {"b": np.zeros(1)}], [1, 1])
    with pytest.raises(ValueError, match="positive sum"):
        weighted_average([{"a": np.zeros(1)}], [0])
