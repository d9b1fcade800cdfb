"""`flwr run .` path: pyproject's run-config table and its translation into a RunConfig."""

import tomllib
from pathlib import Path

import pytest

from fedmoe_sim.config import ConfigError, flatten, known_keys
from strategies.app import config_from_run_config

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _run_config_table() -> dict:
    return flatten(tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"])


def test_pyproject_lists_exactly_the_config_keys():
    """Flower refuses overrides of keys missing from this table, so it must list them all."""
    assert set(_run_config_table()) == set(known_keys())


def test_placeholders_take_the_experiments_values_and_overrides_win():
    table = _run_config_table()
    cfg = config_from_run_config(table)
    assert cfg.experiment == "digits-domains" and cfg.federation.rounds == 10   # the experiment's value
    cfg = config_from_run_config({**table, "experiment": "text-domains", "federation.rounds": 2})
    assert cfg.model.backbone == "minilm" and cfg.federation.rounds == 2


def test_bad_run_config_values_raise_config_errors():
    with pytest.raises(ConfigError, match="federation.num_clients must be >= 1"):
        config_from_run_config({**_run_config_table(), "federation.num_clients": 0})
