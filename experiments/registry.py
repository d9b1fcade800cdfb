"""Explicit method registry: name -> (strategy class, client module, defining config values).

No discovery by string matching. `forced` holds the config values that define a
method or an ablation (e.g. FlexOlmo-style = no DPP, no proxy training, no
context); they are applied after the user's overrides, so a name always means
the same method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import clients.fedavg
import clients.fedgh
import clients.fedmoe_da
import clients.lg_fedavg
import clients.local
import clients.metamoe
import clients.pfedmoe
import clients.pfedsim
from fedmoe_sim.config import CLIENT_MOE, CLIENT_MOE_BACKBONES, CNN_FAMILIES, PFEDMOE_FAMILIES, ConfigError
from strategies.btm import BTMStrategy
from strategies.btx import BTXStrategy
from strategies.fedavg import FedAvgStrategy
from strategies.fedgh import FedGHStrategy
from strategies.fedmoe_da import FedMoEDAStrategy
from strategies.flexolmo import FlexOlmoStrategy
from strategies.lg_fedavg import LGFedAvgStrategy
from strategies.local import LocalStrategy
from strategies.metamoe import MetaMoEStrategy
from strategies.modelsoup import ModelSoupStrategy
from strategies.pfedmoe import PFedMoEStrategy
from strategies.pfedsim import PFedSimStrategy
from strategies.separate import SeparateExpertsStrategy
from strategies.unrestricted import UnrestrictedMoEStrategy
from strategies.zeroshot import ZeroShotStrategy


@dataclass(frozen=True)
class Method:
    name: str
    strategy: type          # constructed as strategy(Federation, Workspace)
    client: ModuleType      # train(ws, task, context), evaluate(...), and any phase it uses
    description: str
    extra: dict[str, Any] = field(default_factory=dict)   # variant values on top of strategy.forced; a callable
                                                          # value is computed from the config before forcing

    @property
    def family(self) -> str:
        """Which group of methods it belongs to (plots facet by it): see FAMILIES."""
        return next(fam for fam, names in FAMILIES.items() if self.name in names)

    @property
    def forced(self) -> dict[str, Any]:
        return {**getattr(self.strategy, "forced", {}), **self.extra}


_M = clients.metamoe
def _client_moe_of(cfg) -> str:
    """FedMoE-DA and its MoE baselines run the client MoE of the experiment's backbone (mixer ->
    mixer-moe, minilm -> minilm-moe, vit -> vit-moe); the from-scratch CNNs have none, so on their
    digits settings these methods run the digits mixer's."""
    backbone = cfg.model.backbone
    return backbone if backbone in CLIENT_MOE_BACKBONES else CLIENT_MOE.get(backbone, "mixer-moe")


_CLIENT_MOE = {"model.backbone": _client_moe_of}
_CNN = {"model.families": ",".join(CNN_FAMILIES)}              # client i runs CNN-((i mod 5) + 1)
_PFEDMOE = {"model.families": ",".join(PFEDMOE_FAMILIES)}      # local expert CNN-((i mod 5) + 1), global CNN-5
METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("fedavg", FedAvgStrategy, clients.fedavg, "FedAvg over the expert (whole trainable model), one global model"),
        Method("local", LocalStrategy, clients.local, "Local-only: each client trains its own expert, nothing is shared"),
        Method("fedmoe-da", FedMoEDAStrategy, clients.fedmoe_da,
               "FedMoE-DA: a client MoE per client, experts mixed with their most similar experts (gate proxies), "
               "peer to peer", _CLIENT_MOE),
        Method("fedavg-moe", FedAvgStrategy, clients.fedavg, "FedAvg of the whole client MoE (gates and experts)",
               _CLIENT_MOE),
        Method("local-moe", LocalStrategy, clients.local, "Local-only with the client MoE (nothing shared)",
               _CLIENT_MOE),
        Method("pfedsim", PFedSimStrategy, clients.pfedsim,
               "pFedSim: FedAvg warm-up, then per-client LoRA experts mixed by classifier (head) similarity; "
               "the head stays personal", {"model.train_head": True}),
        Method("pfedmoe", PFedMoEStrategy, clients.pfedmoe,
               "pFedMoE: heterogeneous local expert + shared global expert mixed by a per-client gate; "
               "only the global expert is uploaded and averaged", _PFEDMOE),
        Method("standalone", LocalStrategy, clients.local,
               "Standalone: Local-only with the heterogeneous CNN-1..5 (nothing shared)", _CNN),
        Method("fedavg-cnn", FedAvgStrategy, clients.fedavg, "FedAvg of one homogeneous CNN-5, whole model",
               {"model.backbone": "cnn-5", "model.families": ""}),
        Method("lg-fedavg", LGFedAvgStrategy, clients.lg_fedavg,
               "LG-FedAvg: heterogeneous CNN-1..5 extractors kept, the head averaged", _CNN),
        Method("fedgh", FedGHStrategy, clients.fedgh,
               "FedGH: heterogeneous CNN-1..5, a global head trained on the server on uploaded class means", _CNN),
        Method("metamoe", MetaMoEStrategy, _M, "MetaMoE: DPP proxies, proxy-aligned experts, context router, one-shot unification"),
        Method("metamoe-no-dpp", MetaMoEStrategy, _M, "MetaMoE ablation: top-m proxies by relevance (no DPP)",
               {"metamoe.use_dpp": False}),
        Method("metamoe-no-context", MetaMoEStrategy, _M, "MetaMoE ablation: router without sample context (lambda = 0)",
               {"metamoe.context_router": False}),
        Method("metamoe-no-proxy-training", MetaMoEStrategy, _M, "MetaMoE ablation: experts trained on private data only",
               {"metamoe.proxy_training": False}),
        Method("flexolmo", FlexOlmoStrategy, _M, "FlexOlmo-style: private-only experts and routing vectors, relevance proxies, no context"),
        Method("btx", BTXStrategy, _M, "BTX-style: private-only experts, fresh router trained on the proxies"),
        Method("btm", BTMStrategy, _M, "BTM: output ensemble of the experts"),
        Method("modelsoup", ModelSoupStrategy, _M, "ModelSoup: weight average of the experts"),
        Method("separate", SeparateExpertsStrategy, _M, "Separate experts with oracle domain routing (reference, not deployable)"),
        Method("zeroshot", ZeroShotStrategy, _M, "Zero-shot: the frozen pretrained backbone alone"),
        Method("unrestricted", UnrestrictedMoEStrategy, _M, "Unrestricted MoE: centralised upper bound on pooled private data"),
    )
}


# Method families, for grouping in plots and tables: classic FL baselines; one-shot unification of
# domain experts into one MoE (MetaMoE and its baselines, with their non-deployable references);
# personalised FL, where every client keeps its own model.
FAMILIES: dict[str, tuple[str, ...]] = {
    "classic": ("fedavg", "local", "fedavg-moe", "local-moe", "fedavg-cnn", "standalone"),
    "unification": ("metamoe", "metamoe-no-dpp", "metamoe-no-context", "metamoe-no-proxy-training", "flexolmo", "btx",
                    "btm", "modelsoup", "separate", "zeroshot", "unrestricted"),
    "personalised": ("fedmoe-da", "pfedsim", "pfedmoe", "lg-fedavg", "fedgh"),
}
if sorted(n for names in FAMILIES.values() for n in names) != sorted(METHODS):
    raise RuntimeError("every registered method needs exactly one family in FAMILIES")


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown strategy {name!r}; allowed: {', '.join(METHODS)}") from None
