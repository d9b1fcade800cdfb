"""MetaMoE proxy selection (seed 000, DESIGN steps 1-3): relevance probe, top-n, relevance-weighted DPP."""

from fedmoe_sim.proxy.dpp import DPPResult, brute_force_greedy_dpp, greedy_dpp, top_n
from fedmoe_sim.proxy.relevance import (RelevanceProbe, fit_relevance, iter_features, pool_sampler,
                                        score_pool)
from fedmoe_sim.proxy.select import ProxySelection, select_proxies

__all__ = ["DPPResult", "ProxySelection", "RelevanceProbe", "brute_force_greedy_dpp", "fit_relevance",
           "greedy_dpp", "iter_features", "pool_sampler", "score_pool", "select_proxies", "top_n"]
