"""Client partitions via flwr-datasets: seeded, disjoint, skewed as asked, and failing in one line."""

import numpy as np
import pytest

from fedmoe_sim.config import DataConfig
from fedmoe_sim.data import client_splits, load_benchmark
from fedmoe_sim.data.base import Benchmark, Domain
from fedmoe_sim.data.digits import load_digits_domains
from fedmoe_sim.data.partition import PARTITIONERS, partition_clients, partition_indices, pooled_train
from fedmoe_sim.data.text import load_text_domains

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # flwr-datasets warns on Dirichlet resampling


@pytest.fixture(scope="module")
def digits():
    return load_digits_domains()


def _tiny(sizes=(10, 6), num_classes=3):
    """Domains of the given sizes; x encodes (domain, position) so shares can be traced by value."""
    domains = []
    for d, n in enumerate(sizes):
        x = (100 * d + np.arange(n, dtype=np.float32)).reshape(n, 1)
        y = np.arange(n, dtype=np.int64) % num_classes
        domains.append(Domain(f"d{d}", x, y, x[:2], y[:2]))
    return Benchmark("tiny", "image", num_classes, tuple(domains))


def _all(part):
    return np.concatenate([part.train, part.test])


def _entropy(labels, num_classes=10):
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("name", PARTITIONERS)
def test_same_seed_same_partition_other_seed_other_partition(digits, name):
    a = partition_indices(digits, 8, name, seed=0)
    b = partition_indices(digits, 8, name, seed=0)
    c = partition_indices(digits, 8, name, seed=1)
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa.train, pb.train)
        np.testing.assert_array_equal(pa.test, pb.test)
    assert any(not np.array_equal(pa.train, pc.train) for pa, pc in zip(a, c, strict=True))


@pytest.mark.parametrize("name", PARTITIONERS)
@pytest.mark.parametrize("cap", [0, 60])
def test_no_example_is_given_to_two_clients(digits, name, cap):
    parts = partition_indices(digits, 12, name, seed=3, samples_per_client=cap)
    everything = np.concatenate([_all(p) for p in parts])
    assert len(everything) == len(np.unique(everything))
    if cap:
        assert all(len(_all(p)) == cap for p in parts)


def test_by_domain_clients_stay_in_their_domain_and_split_it_evenly(digits):
    parts = partition_indices(digits, 10, "by-domain", seed=0)
    _, _, dom = pooled_train(digits)
    for p in parts:
        assert p.domain == p.client_id % 4
        assert (dom[_all(p)] == p.domain).all()
    # domain 0 has clients 0, 4, 8: 500 examples -> 167 / 167 / 166, disjoint and covering it all
    sizes = sorted(len(_all(parts[c])) for c in (0, 4, 8))
    assert sizes == [166, 167, 167]
    assert len(np.unique(np.concatenate([_all(parts[c]) for c in (0, 4, 8)]))) == 500


def test_client_split_arrays_are_the_pool_rows(digits):
    splits = partition_clients(digits, 8, "iid", seed=0, samples_per_client=60)
    parts = partition_indices(digits, 8, "iid", seed=0, samples_per_client=60)
    x, y, dom = pooled_train(digits)
    for s, p in zip(splits, parts, strict=True):
        np.testing.assert_array_equal(s.x_train, x[p.train])
        np.testing.assert_array_equal(s.y_test, y[p.test])
        assert s.domain == np.bincount(dom[_all(p)], minlength=4).argmax()  # the majority domain
        assert (s.num_train, len(s.y_test)) == (48, 12)  # the cap covers train + test


def test_small_domain_gives_disjoint_equal_shares_instead_of_the_cap():
    bench = _tiny(sizes=(10, 6))
    parts = partition_indices(bench, 6, "by-domain", seed=0, samples_per_client=5)
    x, _, _ = pooled_train(bench)
    d0 = [len(_all(p)) for p in parts if p.domain == 0]   # 10 examples over 3 clients
    d1 = [len(_all(p)) for p in parts if p.domain == 1]   # 6 examples over 3 clients
    assert sorted(d0) == [3, 3, 4] and d1 == [2, 2, 2]
    values = np.concatenate([x[_all(p)].ravel() for p in parts])
    assert len(values) == len(np.unique(values)) == 16


def test_every_client_with_two_examples_has_a_test_example():
    parts = partition_indices(_tiny(sizes=(10, 6)), 6, "by-domain", seed=0, test_fraction=0.1)
    assert all(len(p.test) >= 1 and len(p.train) >= 1 for p in parts)
    parts = partition_indices(_tiny(sizes=(200, 200)), 2, "iid", seed=0, test_fraction=0.25)
    assert [len(p.test) for p in parts] == [50, 50]


def test_dirichlet_small_alpha_is_more_label_skewed(digits):
    def mean_entropy(alpha):
        parts = partition_indices(digits, 10, "dirichlet", seed=0, alpha=alpha)
        _, y, _ = pooled_train(digits)
        return np.mean([_entropy(y[_all(p)]) for p in parts])

    skewed, even = mean_entropy(0.1), mean_entropy(100.0)
    assert even > 2.2 and skewed < even - 0.5, (skewed, even)  # log(10) = 2.30


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_gives_at_most_k_classes(digits, k):
    _, y, _ = pooled_train(digits)
    parts = partition_indices(digits, 12, "pathological", seed=0, classes_per_client=k, samples_per_client=60)
    assert all(len(np.unique(y[_all(p)])) <= k for p in parts)
    assert len(np.unique(np.concatenate([y[_all(p)] for p in parts]))) == 10  # first-deterministic uses all


def test_text_benchmark_partitions_keep_strings():
    splits = partition_clients(load_text_domains(), 8, "by-domain", seed=0, samples_per_client=30)
    assert all(s.x_train.dtype == object and isinstance(s.x_train[0], str) for s in splits)
    assert [s.domain for s in splits] == [0, 1, 2, 3] * 2


@pytest.mark.parametrize("name", ["by-domain", "iid", "dirichlet"])
def test_more_clients_than_examples_is_one_line_error(name):
    with pytest.raises(ValueError, match=r"cannot give \d+ clients a non-empty partition of \d+ examples") as err:
        partition_indices(_tiny(sizes=(4, 3)), 9, name, seed=0)
    assert "\n" not in str(err.value)


def test_impossible_dirichlet_and_bad_names_are_one_line_errors(digits):
    with pytest.raises(ValueError, match=r"dirichlet partition \(alpha=0.01\) of 2000 examples over 200 clients"):
        partition_indices(digits, 200, "dirichlet", seed=0, alpha=0.01)
    with pytest.raises(ValueError, match=r"unknown partitioner 'shards'; allowed: by-domain, iid"):
        partition_indices(digits, 4, "shards", seed=0)


def test_load_benchmark_and_client_splits_follow_the_data_config():
    cfg = DataConfig(benchmark="digits-domains", domains="rot90, invert", partitioner="pathological",
                     classes_per_client=1, samples_per_client=20, test_fraction=0.25)
    bench = load_benchmark(cfg, seed=0)
    assert bench.domain_names == ("rot90", "invert")
    splits = client_splits(bench, cfg, num_clients=6, seed=0)
    assert len(splits) == 6
    # samples_per_client counts training examples; the own test split comes on top (20 / 0.75 = 27 in all)
    assert all((s.num_train, len(s.y_test)) == (20, 7) and len(np.unique(s.y_train)) == 1 for s in splits)
    text = load_benchmark(DataConfig(benchmark="text-domains", domains="sports"), seed=2)
    assert text.kind == "text" and text.domain_names == ("sports",)


def test_dirichlet_0_1_over_100_clients_needs_the_larger_digits_pool():
    """The 2,000-image pool cannot feed 100 Dirichlet(0.1) clients; 6,000 (data.digits_pool=all-but-test) can."""
    big = DataConfig(partitioner="dirichlet", alpha=0.1, digits_pool="all-but-test")
    with pytest.raises(ValueError, match=r"of 2000 examples over 100 clients left a client under 2"):
        client_splits(load_benchmark(DataConfig(partitioner="dirichlet", alpha=0.1), 0),
                      DataConfig(partitioner="dirichlet", alpha=0.1), 100, 0)
    splits = client_splits(load_benchmark(big, 0), big, 100, 0)
    assert len(splits) == 100 and min(len(s.y_train) for s in splits) >= 1 and min(len(s.y_test) for s in splits) >= 1
