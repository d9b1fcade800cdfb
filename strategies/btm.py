"""BTM baseline (Li et al. 2022, Branch-Train-Merge): the experts' output distributions
averaged (an ensemble: every expert runs on every input). Experts see private data only."""

from fedmoe_sim import unification as uni
from strategies.metamoe import MetaMoEStrategy


class BTMStrategy(MetaMoEStrategy):
    forced = {"metamoe.proxy_training": False}
    upload_parts = ()                 # the experts alone

    def combine(self, experts: list[uni.Expert], warm: uni.Combined | None = None) -> uni.Combined:
        return uni.Combined(uni.ensemble_predict(self.ws.model, [e.state for e in experts]))
