"""pFedMoE (seed 002, Yi et al., arXiv 2402.01350): a shared global expert, private local experts and gates.

Every client runs `PFedMoEModel` (model.families=pfedmoe-1..5: local expert CNN-k,
k = (i mod 5) + 1; global expert CNN-5; a per-sample gate over the two 500-wide
representations; a head), trained end to end with one cross-entropy.
Sent: the global expert, to every sampled client. Uploaded: the global expert
alone; local expert, gate and head never leave the client and persist across
rounds (stateful). Server: sample-count weighted average of the global expert.
Evaluation: each client's MoE as its last local training left it (see
`strategies._partial`). No official code: the gate's LayerNorm (for SwitchNorm),
the dropped batch norm and m = model.gate_hidden are ours (`fedmoe_sim.models.pfedmoe`).
"""

from __future__ import annotations

import numpy as np

from fedmoe_sim import wire
from fedmoe_sim.models.pfedmoe import GATE_GLOBAL, GLOBAL
from strategies._base import Metrics
from strategies._partial import SharedPartStrategy



class PFedMoEStrategy(SharedPartStrategy):
    part = GLOBAL

    def aggregate_evaluate(self, server_round: int, got: wire.Unpacked) -> Metrics:
        """Beside accuracy: the mean and spread over clients of the gate's weight on the global
        expert (each client's value is in the run summary's per-client rows)."""
        metrics = super().aggregate_evaluate(server_round, got)
        weights = [m[GATE_GLOBAL] for m in self.per_client.values() if GATE_GLOBAL in m]
        if weights:
            metrics["client-eval/gate-global"] = float(np.mean(weights))
            metrics["client-eval/gate-global-std"] = float(np.std(weights))
        return metrics
