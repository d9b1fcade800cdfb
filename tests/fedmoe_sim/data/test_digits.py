"""Digits benchmark: fixed disjoint base split, deterministic shifts, and shifts strong enough that routing matters."""

import numpy as np
import pytest
import torch

from fedmoe_sim.data.digits import (
    ALL_DOMAINS, BASE_SPLIT_SIZES, DEFAULT_DOMAINS, PUBLIC_EXTRA_SHIFTS, _raw_digits, apply_shift, base_split,
    load_digits_domains,
)


@pytest.fixture(scope="module")
def bench():
    return load_digits_domains()


def _fit_linear(x: np.ndarray, y: np.ndarray, steps: int = 300) -> torch.nn.Linear:
    """Multinomial logistic regression on the 64 pixels; zero init, full batch: no RNG at all."""
    model = torch.nn.Linear(64, 10)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    xt, yt = torch.from_numpy(x.reshape(len(x), -1)), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


def _accuracy(model: torch.nn.Linear, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x.reshape(len(x), -1))).argmax(1).numpy()
    return 100.0 * float((pred == y).mean())


def test_base_split_is_disjoint_complete_and_fixed():
    split = base_split()
    parts = [split.pretrain, split.private, split.public, split.test]
    allidx = np.concatenate(parts)
    assert len(allidx) == len(np.unique(allidx)) == 1797  # disjoint and covers every image
    assert [len(p) for p in parts[:3]] == list(BASE_SPLIT_SIZES.values())
    again = base_split()
    for a, b in zip(parts, [again.pretrain, again.private, again.public, again.test], strict=True):
        np.testing.assert_array_equal(a, b)
    _, y = _raw_digits()
    for p in parts:  # roughly stratified: every class present with near-equal share
        counts = np.bincount(y[p], minlength=10)
        assert counts.min() >= 0.8 * counts.mean()


def test_default_benchmark_shapes_dtypes_ranges(bench):
    assert bench.domain_names == DEFAULT_DOMAINS
    assert bench.kind == "image" and bench.num_classes == 10 and bench.input_shape == (1, 8, 8)
    split = base_split()
    for d in bench.domains:
        assert d.x_train.shape == (len(split.private), 1, 8, 8) and d.x_test.shape == (len(split.test), 1, 8, 8)
        for arr in (d.x_train, d.x_test):
            assert arr.dtype == np.float32 and arr.min() >= 0.0 and arr.max() <= 1.0
        assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    x, y = _raw_digits()
    np.testing.assert_array_equal(bench.pretrain_x, x[split.pretrain])  # pretraining data is clean
    np.testing.assert_array_equal(bench.pretrain_y, y[split.pretrain])
    assert bench.public_x.dtype == np.float32 and 0.0 <= bench.public_x.min() and bench.public_x.max() <= 1.0


def test_public_pool_sources_and_labels(bench):
    n_public = len(base_split().public)
    n_shifts = len(DEFAULT_DOMAINS) + len(PUBLIC_EXTRA_SHIFTS)
    assert len(bench.public_x) == len(bench.public_y) == len(bench.public_source) == n_public * n_shifts * 2
    counts = {int(s): int(c) for s, c in zip(*np.unique(bench.public_source, return_counts=True), strict=True)}
    assert counts == {-1: 2 * n_public * len(PUBLIC_EXTRA_SHIFTS), 0: 2 * n_public, 1: 2 * n_public,
                      2: 2 * n_public, 3: 2 * n_public}
    _, y = _raw_digits()
    np.testing.assert_array_equal(bench.public_y[:n_public], y[base_split().public])
    # The first copy of domain 0 is exactly rot90 of the public base images; the second is jittered.
    rot = bench.public_x[bench.public_source == 0]
    np.testing.assert_array_equal(rot[:n_public], apply_shift("rot90", _raw_digits()[0][base_split().public]))
    assert not np.array_equal(rot[:n_public], rot[n_public:])


def test_chosen_domain_is_not_repeated_as_out_of_domain():
    bench = load_digits_domains(("clean", "rot90"))
    n_public = len(base_split().public)
    assert len(bench.public_x) == n_public * 2 * 4  # clean, rot90 + transpose, noise
    assert set(np.unique(bench.public_source)) == {-1, 0, 1}


def test_same_arguments_give_byte_identical_arrays_and_seed_is_ignored(bench):
    again = load_digits_domains(seed=123)
    for a, b in zip(bench.domains, again.domains, strict=True):
        assert a.x_train.tobytes() == b.x_train.tobytes() and a.x_test.tobytes() == b.x_test.tobytes()
    assert bench.public_x.tobytes() == again.public_x.tobytes()
    assert bench.public_source.tobytes() == again.public_source.tobytes()


def test_every_named_shift_is_distinct_and_in_range():
    x = _raw_digits()[0][:50]
    outs = {name: apply_shift(name, x, "t") for name in ALL_DOMAINS}
    for name, out in outs.items():
        assert out.shape == x.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(outs[a], outs[b]), (a, b)
    np.testing.assert_array_equal(outs["clean"], x)
    assert not np.array_equal(apply_shift("noise", x, "train"), apply_shift("noise", x, "test"))


def test_unknown_domain_is_one_line_value_error():
    with pytest.raises(ValueError, match=r"unknown digits domain 'xyz'; allowed: clean, rot90") as err:
        load_digits_domains(("rot90", "xyz"))
    assert "\n" not in str(err.value)


def test_routing_matters_expert_drops_20_points_off_domain(bench):
    """An expert trained on rot90 (or invert) is good at home and loses >= 20 points elsewhere."""
    for home in ("rot90", "invert"):
        d = bench.domains[bench.domain_names.index(home)]
        model = _fit_linear(d.x_train, d.y_train)
        own = _accuracy(model, d.x_test, d.y_test)
        others = {o.name: _accuracy(model, o.x_test, o.y_test) for o in bench.domains if o.name != home}
        assert own >= 85.0, (home, own)
        assert own - min(others.values()) >= 20.0, (home, own, others)


def test_clean_model_mixes_strong_and_mild_shifts(bench):
    """DESIGN: rot90/invert send a clean model near chance, blur/gamma keep it well above chance."""
    model = _fit_linear(bench.pretrain_x, bench.pretrain_y)
    acc = {d.name: _accuracy(model, d.x_test, d.y_test) for d in bench.domains}
    assert acc["rot90"] < 30.0 and acc["invert"] < 30.0, acc
    assert acc["blur"] > 70.0 and acc["gamma"] > 70.0, acc


def test_the_larger_pool_adds_the_pretraining_and_public_shares_and_keeps_the_rest(bench):
    big = load_digits_domains(pool="all-but-test")
    split = base_split()
    assert len(big.domains[0].y_train) == len(split.private) + len(split.pretrain) + len(split.public) == 1500
    for a, b in zip(bench.domains, big.domains, strict=True):
        assert a.x_test.tobytes() == b.x_test.tobytes()                 # test share and shifts unchanged
        _, y = _raw_digits()
        np.testing.assert_array_equal(np.bincount(b.y_train, minlength=10),
                                      np.bincount(y[np.concatenate([split.private, split.pretrain, split.public])],
                                                  minlength=10))
    assert big.pretrain_x.tobytes() == bench.pretrain_x.tobytes() and big.public_x.tobytes() == bench.public_x.tobytes()
    default = load_digits_domains(pool="private")
    assert all(a.x_train.tobytes() == b.x_train.tobytes() for a, b in zip(bench.domains, default.domains, strict=True))
    with pytest.raises(ValueError, match="unknown digits pool 'all'"):
        load_digits_domains(pool="all")
