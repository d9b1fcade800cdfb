"""BTX-style baseline (Sukhbaatar et al. 2024): experts trained on private data only, then
a MoE whose router is fresh (random rows, no context) and learned on the proxy union."""

from fedmoe_sim import unification as uni
from strategies.metamoe import MetaMoEStrategy


class BTXStrategy(MetaMoEStrategy):
    forced = {"metamoe.proxy_training": False, "metamoe.context_router": False}
    router_init = "random"
    upload_parts = (uni.PROXIES,)     # fresh router: routing vectors would go unused
