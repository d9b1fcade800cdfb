"""pFedSim's server maths on hand-made classifiers and extractors (answers worked out by hand)."""

import math

import numpy as np
import pytest

from fedmoe_sim.aggregation.pfedsim import (SELF, classifier_similarity, mean_pair_similarity, mixing_weights,
                                            personalised_extractor, update_similarity)


def test_identical_classifiers_are_fully_similar():
    w = np.array([[1.0, 2.0], [-3.0, 0.5], [0.0, 4.0]])
    assert classifier_similarity(w, w) == pytest.approx(1.0)
    assert classifier_similarity(w, 3 * w) == pytest.approx(1.0)        # cosine ignores scale


def test_orthogonal_or_opposite_rows_give_zero_after_the_clip():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert classifier_similarity(a, np.array([[0.0, 1.0], [1.0, 0.0]])) == 0.0    # cos 0 per class
    assert classifier_similarity(a, -a) == 0.0                                    # mean cos -1, clipped
    # per-class cosines 1 and -0.6 average to 0.2: the mean is taken before the clip
    assert classifier_similarity(a, np.array([[2.0, 0.0], [0.8, -0.6]])) == pytest.approx(0.2)


def test_a_zero_row_counts_as_cosine_zero_and_bad_shapes_are_refused():
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert classifier_similarity(a, np.array([[1.0, 0.0], [0.0, 0.0]])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="two equal"):
        classifier_similarity(a, np.ones((3, 2)))


def test_the_transform_and_normalisation_on_a_small_case():
    sim = np.array([[1.0, 0.5, 0.0],
                    [0.5, 1.0, 0.0],
                    [0.0, 0.0, 1.0]])
    w = mixing_weights(sim, 0)
    own, peer = -math.log(1 - SELF), -math.log(1 - 0.5)       # 9.2103..., 0.6931...
    assert w == pytest.approx({0: own / (own + peer), 1: peer / (own + peer)})
    assert w[0] == pytest.approx(0.93001, abs=1e-5) and 2 not in w      # s = 0 weighs nothing


def test_a_row_without_a_similar_peer_keeps_the_own_extractor_exactly():
    sim = np.eye(3)
    assert mixing_weights(sim, 2) == {2: 1.0}
    mine = {"a": np.array([1.0, 2.0], np.float32)}
    assert personalised_extractor({2: 1.0}, {2: mine}) is mine


def test_identical_peers_are_capped_and_weigh_as_much_as_the_client():
    sim = np.ones((2, 2))
    assert mixing_weights(sim, 1) == pytest.approx({0: 0.5, 1: 0.5})


def test_the_personalised_extractor_is_the_weighted_sum_in_the_input_dtype():
    ex = {0: {"a": np.array([1.0, 0.0], np.float32)}, 1: {"a": np.array([0.0, 4.0], np.float32)}}
    out = personalised_extractor({0: 0.75, 1: 0.25}, ex)
    np.testing.assert_allclose(out["a"], [0.75, 1.0])
    assert out["a"].dtype == np.float32


def test_only_the_selected_clients_entries_change():
    sim = np.eye(4)
    sim[0, 3] = sim[3, 0] = 0.3                       # from earlier rounds
    sim[1, 3] = sim[3, 1] = 0.4
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    out = update_similarity(sim, {1: w, 2: w, 3: -w})
    expected = sim.copy()
    expected[1, 2] = expected[2, 1] = 1.0
    expected[1, 3] = expected[3, 1] = 0.0
    np.testing.assert_allclose(out, expected)          # 1-3 rewritten to 0 (opposite); 0-3 and the diagonal kept
    assert sim[1, 2] == 0.0                            # the input is not modified
    assert mean_pair_similarity(out, [1, 2, 3]) == pytest.approx(1 / 3)
    assert mean_pair_similarity(out, [1]) is None
