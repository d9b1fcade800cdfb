"""BTM baseline (Li et al. 2022, Branch-Train-Merge): the experts' output distributions
averaged (an ensemble: every expert runs on every input). Experts see private data only."""

from fedmoe_sim import unification as uni
from strategies.metamoe import MetaMoEStrategy


class BTMStrategy(MetaMoEStrategy):
    forced = {"metamoe.proxy_training": False}

    def combine(self, experts: list[uni.Expert]) -> dict[str, float]:
        predict = uni.ensemble_predict(self.ws.model, [e.state for e in experts])
        return uni.mixed_domain_accuracy(predict, self.ws, self.fed.cfg.seed)
