"""Zero-shot baseline: the frozen pretrained backbone alone (no expert, no training, no
communication). For the digits mixer the initial LoRA expert is an exact zero delta."""

from fedmoe_sim import unification as uni
from strategies.metamoe import MetaMoEStrategy


class ZeroShotStrategy(MetaMoEStrategy):
    forced = {"federation.rounds": 0}
    needs_experts = False

    def combine(self, experts: list[uni.Expert], warm: uni.Combined | None = None) -> uni.Combined:
        self.ws.load(None)
        return uni.Combined(self.ws.model)
