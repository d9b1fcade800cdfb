"""Every module imports, and the Flower hooks we override keep the signatures we rely on."""

import importlib
import inspect
import pkgutil

import pytest

PACKAGES = ["fedmoe_sim", "strategies", "clients", "experiments"]


def _modules():
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        yield pkg_name
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            yield info.name


@pytest.mark.parametrize("name", list(_modules()))
def test_module_imports(name):
    importlib.import_module(name)


def test_library_does_not_import_flower_outside_wire():
    """House rule 1: the maths stays testable without Flower (flwr_datasets is allowed)."""
    import pathlib
    import re

    root = pathlib.Path(importlib.import_module("fedmoe_sim").__file__).parent
    flower_import = re.compile(r"^\s*(from flwr[. ]|import flwr\b)", re.M)
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "wire.py" and flower_import.search(p.read_text())]
    assert offenders == []


def test_flower_strategy_hook_signatures_are_pinned():
    from flwr.serverapp.strategy import Strategy

    expected = {
        "configure_train": ["self", "server_round", "arrays", "config", "grid"],
        "aggregate_train": ["self", "server_round", "replies"],
        "configure_evaluate": ["self", "server_round", "arrays", "config", "grid"],
        "aggregate_evaluate": ["self", "server_round", "replies"],
        "summary": ["self"],
    }
    for hook, params in expected.items():
        assert list(inspect.signature(getattr(Strategy, hook)).parameters) == params, hook


def test_flower_grid_calls_we_use_exist():
    from flwr.serverapp import Grid

    for name in ("push_messages", "pull_messages", "send_and_receive", "get_node_ids"):
        assert callable(getattr(Grid, name))
    assert "timeout" in inspect.signature(Grid.send_and_receive).parameters
