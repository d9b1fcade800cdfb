"""Simulations for the end-to-end tests, with every node reply the server reads captured."""

import pytest

from experiments.runner import run_many
from strategies import _federation


def _simulate(cfgs):
    """Run `cfgs` in one simulation; return (summaries, every reply the server unpacked)."""
    captured: list = []
    original = _federation.wire.read_replies

    def capture(replies, *args):
        replies = list(replies)
        captured.extend(replies)
        return original(replies, *args)

    _federation.wire.read_replies = capture
    try:
        return run_many(cfgs), captured
    finally:
        _federation.wire.read_replies = original


@pytest.fixture(scope="module")
def simulate():
    return _simulate
