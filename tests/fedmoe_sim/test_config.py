import hashlib
import json

import pytest

from fedmoe_sim.config import ConfigError, RunConfig, config_from_json, known_keys, parse_assignments, resolve_config


def test_defaults_resolve_and_round_trip_through_json():
    cfg = resolve_config({})
    assert cfg == RunConfig()
    assert config_from_json(cfg.to_json()) == cfg


def test_later_layers_win_and_strings_are_typed():
    cfg = resolve_config({"federation.num_clients": 10}, {"federation.num_clients": "30", "train.augment": "false"})
    assert cfg.federation.num_clients == 30
    assert cfg.train.augment is False


def test_hyphenated_keys_are_accepted():
    assert resolve_config({"federation.num-clients": 7}).federation.num_clients == 7


@pytest.mark.parametrize(
    "layer, fragment",
    [
        ({"federation.num_clients": 0}, "federation.num_clients must be >= 1 (got 0)"),
        ({"federation.fraction_train": 1.5}, "federation.fraction_train must be in (0, 1] (got 1.5)"),
        ({"federation.fraction_train": 0}, "federation.fraction_train must be in (0, 1]"),
        ({"federation.rounds": -1}, "federation.rounds must be >= 0 (got -1)"),
        ({"data.partitioner": "random"}, "data.partitioner must be one of by-domain, iid, dirichlet, pathological"),
        ({"train.lr": "fast"}, "train.lr must be a number (got 'fast')"),
        ({"federation.num_clients": "2.5"}, "federation.num_clients must be an integer"),
        ({"train.augment": "maybe"}, "train.augment must be a boolean"),
        ({"federation.num_clientz": 3}, "unknown config key 'federation.num_clientz'"),
        ({"clients": 3}, "unknown config key 'clients'"),
        ({"simulation.gpus_per_worker": 2}, "simulation.gpus_per_worker must be in [0, 1]"),
        ({"data.digits_pool": "all"}, "data.digits_pool must be one of private, all-but-test (got 'all')"),
        ({"data.digits_pool": "all-but-test", "data.benchmark": "text-domains"},
         "data.digits_pool must be 'private' with data.benchmark=text-domains"),
    ],
)
def test_bad_values_fail_with_one_line_naming_field_and_allowed(layer, fragment):
    with pytest.raises(ConfigError) as err:
        resolve_config(layer)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_key_suggests_the_full_name():
    with pytest.raises(ConfigError, match="did you mean federation.rounds"):
        resolve_config({"rounds": 3})


def test_identity_hash_ignores_output_dir_but_not_values():
    a = resolve_config({"out": "x"})
    b = resolve_config({"out": "y"})
    c = resolve_config({"seed": 1})
    assert a.identity_hash() == b.identity_hash() != c.identity_hash()


def test_keys_added_later_keep_old_hashes_while_off():
    """A run recorded before metamoe.late_domains existed hashed the config without it:
    at its no-op value the key stays out, and it counts as soon as it does something."""
    from fedmoe_sim.config import ADDED_KEYS_OFF, METHOD_SECTIONS, NOT_IDENTITY, flatten

    old_defaults = {"simulation.vectorise": False}   # the one added key whose default changed since (issue 13)
    cfg = resolve_config(old_defaults)
    flat = {k: v for k, v in cfg.to_flat().items() if k not in NOT_IDENTITY and k not in ADDED_KEYS_OFF
            and k.split(".")[0] not in METHOD_SECTIONS}
    before = hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]
    assert cfg.identity_hash() == before
    assert resolve_config({**old_defaults, "metamoe.late_domains": "gamma"}).identity_hash() != before
    assert set(ADDED_KEYS_OFF) <= set(flatten(json.loads(cfg.to_json())))
    assert all(ADDED_KEYS_OFF[k] == v for k, v in cfg.to_flat().items() if k in ADDED_KEYS_OFF)   # off then
    default = resolve_config({})
    assert all(ADDED_KEYS_OFF[k] == v for k, v in default.to_flat().items() if k in ADDED_KEYS_OFF and k not in old_defaults)
    assert default.simulation.vectorise and default.identity_hash() != before    # default runs hash anew


# identity hashes recorded at 7ca1c1a, before model.families, federation.state_dir and method sections
RECORDED_HASHES = {
    ("digits-domains", "fedavg"): "8d25afa967a1a95a",
    ("digits-domains", "local"): "4e2b3d931fd97a62",
    ("metamoe-digits", "metamoe"): "9ab5645a41c24c7f",
}


@pytest.mark.parametrize("experiment, strategy", list(RECORDED_HASHES))
def test_existing_runs_keep_their_recorded_hash(experiment, strategy):
    """Adding keys and sections must leave the hash of runs and sweeps recorded before alone,
    or `compare` would no longer resume them."""
    from experiments.catalogue import build_config

    small = {"federation.rounds": 2, "data.samples_per_client": 20, "model.pretrain_steps": 200,
             "train.local_epochs": 1, "simulation.num_workers": 2,
             "simulation.vectorise": False}   # as recorded then; the default (on) hashes anew
    if experiment == "metamoe-digits":
        small.update({"metamoe.candidates": 80, "metamoe.proxies": 20, "metamoe.relevance_epochs": 5,
                      "metamoe.finetune_epochs": 2})
    else:
        small["federation.num_clients"] = 4
    cfg = build_config(experiment, {**small, "strategy": strategy, "federation.state_dir": "/anywhere"})
    assert cfg.identity_hash() == RECORDED_HASHES[(experiment, strategy)]


def test_a_method_section_counts_only_for_its_own_strategies(monkeypatch):
    """A section registered for some strategies leaves every other strategy's hash alone."""
    from fedmoe_sim import config

    monkeypatch.setattr(config, "METHOD_SECTIONS", {"metamoe": ("metamoe",)})
    for strategy, changes in (("fedavg", False), ("metamoe", True)):
        a = resolve_config({"strategy": strategy})
        b = resolve_config({"strategy": strategy, "metamoe.proxies": 7})
        assert (a.identity_hash() != b.identity_hash()) == changes


def test_data_key_is_shared_by_strategies_but_not_seeds():
    a = resolve_config({"strategy": "fedavg"})
    b = resolve_config({"strategy": "local", "train.lr": 0.5})
    assert a.data_key() == b.data_key()
    assert a.data_key() != resolve_config({"seed": 3}).data_key()


def test_parse_assignments_requires_equals_sign():
    assert parse_assignments(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["novalue"])


def test_every_known_key_has_a_supported_type():
    for key, tp in known_keys().items():
        assert tp in (int, float, str, bool), key
