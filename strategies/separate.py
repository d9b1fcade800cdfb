"""Separate experts with oracle routing: every test sample goes to an expert of its true
domain. Not deployable (needs the domain label at test time); a reference point. Experts
train as MetaMoE's do (set metamoe.proxy_training=false for private data only)."""

from fedmoe_sim import unification as uni
from strategies.metamoe import MetaMoEStrategy


class SeparateExpertsStrategy(MetaMoEStrategy):
    upload_parts = ()                 # the experts alone (oracle routing needs no routing vectors)

    def combine(self, experts: list[uni.Expert], warm: uni.Combined | None = None) -> uni.Combined:
        return uni.Combined(uni.oracle_predict(self.ws.model, experts, fallback=self._initial), domain_aware=True)
