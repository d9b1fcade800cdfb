"""ModelSoup baseline (Wortsman et al. 2022): one model with the example-weighted average of
the experts' weights. Experts see private data only."""

from fedmoe_sim import unification as uni
from strategies.metamoe import MetaMoEStrategy


class ModelSoupStrategy(MetaMoEStrategy):
    forced = {"metamoe.proxy_training": False}
    upload_parts = ()                 # the experts alone

    def combine(self, experts: list[uni.Expert], warm: uni.Combined | None = None) -> uni.Combined:
        return uni.Combined(uni.soup_predict(self.ws.model, experts))
