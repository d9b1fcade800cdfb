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

from fedmoe_sim.models.pfedmoe import GLOBAL
from strategies._partial import SharedPartStrategy


class PFedMoEStrategy(SharedPartStrategy):
    part = GLOBAL
