"""Aggregation as pure functions over numpy state dicts (no Flower)."""

from fedmoe_sim.aggregation.average import weighted_average

__all__ = ["weighted_average"]
