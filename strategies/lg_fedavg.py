"""LG-FedAvg (Liang et al. 2020, "Think locally, act globally"), as pFedMoE's paper runs it.

Every client keeps its own heterogeneous feature extractor (model.families=cnn-1..5)
and shares the head, which has one shape for every family (500 -> classes).
Sent and uploaded: the head alone. Server: sample-count weighted average of the
heads. The extractors never leave the clients and persist across rounds. The
original shares the global top layers of one architecture; here, as in the
model-heterogeneous comparisons of FedGH and pFedMoE, that is the head on the
500-wide representation.
"""

from __future__ import annotations

from fedmoe_sim.models.pfedmoe import HEAD   # "head": the part name of HeteroCNNModel and PFedMoEModel alike
from strategies._partial import SharedPartStrategy


class LGFedAvgStrategy(SharedPartStrategy):
    part = HEAD
