"""Text benchmark: seeded, short, domain-specific vocabularies, and a label meaning that does not transfer."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from fedmoe_sim.data.text import (
    DEFAULT_DOMAINS, NUM_CLASSES, OOD_SPECS, PUBLIC_PER_SOURCE, TEST_PER_DOMAIN, TRAIN_PER_DOMAIN, content_words,
    load_text_domains,
)


@pytest.fixture(scope="module")
def bench():
    return load_text_domains(seed=0)


def test_shapes_types_and_lengths(bench):
    assert bench.kind == "text" and bench.num_classes == NUM_CLASSES and bench.domain_names == DEFAULT_DOMAINS
    assert len(bench.domains) == 4 and bench.pretrain_x is None and bench.pretrain_y is None
    for d in bench.domains:
        assert d.x_train.shape == (TRAIN_PER_DOMAIN,) and d.x_test.shape == (TEST_PER_DOMAIN,)
        assert d.x_train.dtype == object and all(isinstance(s, str) for s in d.x_train)
        assert max(len(s.split()) for s in np.concatenate([d.x_train, d.x_test])) < 30
        assert d.y_train.dtype == np.int64
        np.testing.assert_array_equal(np.bincount(d.y_train), [TRAIN_PER_DOMAIN // NUM_CLASSES] * NUM_CLASSES)


def test_public_pool_mixes_domains_and_out_of_domain_text(bench):
    n_sources = len(DEFAULT_DOMAINS) + len(OOD_SPECS)
    assert bench.public_x.shape == bench.public_y.shape == bench.public_source.shape == (n_sources * PUBLIC_PER_SOURCE,)
    counts = dict(zip(*np.unique(bench.public_source, return_counts=True), strict=True))
    assert counts == {-1: len(OOD_SPECS) * PUBLIC_PER_SOURCE, 0: PUBLIC_PER_SOURCE, 1: PUBLIC_PER_SOURCE,
                      2: PUBLIC_PER_SOURCE, 3: PUBLIC_PER_SOURCE}
    assert set(np.unique(bench.public_y)) == set(range(NUM_CLASSES))


def test_same_seed_same_samples_other_seed_other_samples(bench):
    again, other = load_text_domains(seed=0), load_text_domains(seed=1)
    for a, b, c in zip(bench.domains, again.domains, other.domains, strict=True):
        assert list(a.x_train) == list(b.x_train) and list(a.x_test) == list(b.x_test)
        np.testing.assert_array_equal(a.y_train, b.y_train)
        assert list(a.x_train) != list(c.x_train)
    assert list(bench.public_x) == list(again.public_x)


def test_domain_subset_keeps_each_domains_samples():
    sub = load_text_domains(("sports", "legal"), seed=0)
    full = load_text_domains(seed=0)
    assert sub.domain_names == ("sports", "legal")
    assert list(sub.domains[0].x_train) == list(full.domains[DEFAULT_DOMAINS.index("sports")].x_train)


def test_domains_use_distinct_vocabularies(bench):
    vocab = {d.name: set().union(*map(content_words, d.x_train)) for d in bench.domains}
    for a in vocab:
        for b in vocab:
            if a < b:
                jaccard = len(vocab[a] & vocab[b]) / len(vocab[a] | vocab[b])
                assert jaccard < 0.05, (a, b, vocab[a] & vocab[b])


def test_bag_of_words_classifier_drops_20_points_off_domain(bench):
    for d in bench.domains:
        vec = CountVectorizer().fit(d.x_train)
        clf = LogisticRegression(max_iter=1000).fit(vec.transform(d.x_train), d.y_train)
        own = 100 * clf.score(vec.transform(d.x_test), d.y_test)
        others = [100 * clf.score(vec.transform(o.x_test), o.y_test) for o in bench.domains if o.name != d.name]
        assert own >= 75.0, (d.name, own)
        assert own - min(others) >= 20.0, (d.name, own, others)


def test_unknown_domain_is_one_line_value_error():
    with pytest.raises(ValueError, match=r"unknown text domain 'poetry'; allowed: medical, legal") as err:
        load_text_domains(("poetry",))
    assert "\n" not in str(err.value)
