import numpy as np
import torch

from experiments.catalogue import build_config
from fedmoe_sim.training import train_local
from fedmoe_sim.workspace import Workspace


def test_tiny_mlp_is_trained_whole_and_learns():
    cfg = build_config("digits-domains", {"model.backbone": "tiny-mlp", "model.width": 128, "federation.num_clients": 4,
                                          "train.augment": False})
    ws = Workspace(cfg)
    spec = ws.model.expert_spec()
    assert spec == {"fc1.weight": ((128, 64), "float32"), "fc1.bias": ((128,), "float32"),
                    "fc2.weight": ((10, 128), "float32"), "fc2.bias": ((10,), "float32")}
    assert ws.model.backbone_state() == {}
    x, y = ws.train_data(0)
    before = float(torch.nn.functional.cross_entropy(ws.model(x), y))
    train_local(ws.model, x, y, cfg.train, seed=0)
    assert float(torch.nn.functional.cross_entropy(ws.model(x), y)) < before
    state = ws.model.expert_state()
    ws.model.reset_expert(1)
    ws.model.load_expert_state(state)
    np.testing.assert_array_equal(ws.model.expert_state()["fc2.bias"], state["fc2.bias"])
