"""FlexOlmo-style baseline (DESIGN): experts and routing vectors from private data only,
proxies by relevance only (no DPP), no context in the router (lambda = 0)."""

from strategies.metamoe import MetaMoEStrategy


class FlexOlmoStrategy(MetaMoEStrategy):
    forced = {"metamoe.use_dpp": False, "metamoe.proxy_training": False,
              "metamoe.routing_on_proxies": False, "metamoe.context_router": False}
