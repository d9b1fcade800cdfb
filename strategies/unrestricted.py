"""Unrestricted MoE: the centralised upper bound. The same unified MoE as MetaMoE, but its
router, LoRAs and lambdas are fine-tuned on ALL clients' private training data pooled
(plus the proxies), which no federated method may see. Reads private data on the server
by design; same fine-tuning epochs as MetaMoE on a larger set (at least its budget)."""

import torch

from fedmoe_sim import unification as uni
from fedmoe_sim.unification import concat_inputs
from strategies.metamoe import MetaMoEStrategy


class UnrestrictedMoEStrategy(MetaMoEStrategy):
    def finetune_data(self, experts: list[uni.Expert]):
        parts = [self.ws.train_data(s.client_id) for s in self.ws.splits]
        parts.append(self.ws.public_data(uni.proxy_union(experts)))
        return concat_inputs([x for x, _ in parts]), torch.cat([y for _, y in parts])
