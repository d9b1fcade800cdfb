"""(c) of benchmarks/sim_speed.py: the Flower-quickstart way, one SuperNode and one message per client.

Per call, as in Flower's quickstart-pytorch ClientApp: build the model, load
the global weights from the message, build the client's tensors, train,
reply with the weights. Like the quickstart's `FederatedDataset` (kept in a
module global and partitioned once), the dataset and its partition are
cached per process; the client's tensors and the model are not. Training is
`fedmoe_sim.training.train_local` with the same config and seed as (a) and
(b), so the training work is identical; only the driving differs.

Personalised methods (`local`) keep the client's own weights in
`context.state`, as Flower documents for stateful clients.

One departure from the quickstart, for a like-for-like result: the server
samples each round the clients (a) and (b) train (`fedmoe_sim.sampling`), not a
random set of node ids, so it asks every node its partition id once, before
any timed round (`query`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from _workloads import WORKLOADS, workload_config
from fedmoe_sim.training import derive_seed, train_local

torch.set_num_threads(1)  # as our workers do (simulation.torch_threads = 1)

app = ClientApp()
STATE_KEY = "own-weights/"   # + workload: one node hosts several workloads in one benchmark run


@lru_cache(maxsize=4)
def _dataset(workload: str, num_clients: int, seed: int):
    """The benchmark and its client partition, once per process (the quickstart's global `fds`)."""
    from fedmoe_sim.data import client_splits, load_benchmark

    cfg = workload_config(workload, num_clients, num_clients, seed=seed)
    bench = load_benchmark(cfg.data, cfg.seed)
    return bench, client_splits(bench, cfg.data, num_clients, cfg.seed)


def _model_and_data(workload: str, num_clients: int, seed: int, pid: int):
    """Built anew on every call: the model, and the client's tensors."""
    from fedmoe_sim.models import build_model

    bench, splits = _dataset(workload, num_clients, seed)
    split = splits[pid]
    cfg = workload_config(workload, num_clients, num_clients, seed=seed)
    model = build_model(bench, cfg.model)     # tiny: a fresh MLP, like the quickstart's `Net()`
    return cfg, model, model.prepare(split.x_train), torch.as_tensor(split.y_train, dtype=torch.long)


def get_weights(model, tiny: bool) -> ArrayRecord:
    """tiny: the whole state_dict, as the quickstart does; else the trainable expert only (as ours)."""
    return ArrayRecord(model.state_dict()) if tiny else ArrayRecord({k: Array(v) for k, v in model.expert_state().items()})


def set_weights(model, record: ArrayRecord, tiny: bool) -> None:
    if tiny:
        model.load_state_dict(record.to_torch_state_dict())
    else:
        model.load_expert_state({k: a.numpy() for k, a in record.items()})


@app.train()
def train(msg: Message, context: Context) -> Message:
    conf = msg.content["config"]
    workload, num_clients, seed = str(conf["workload"]), int(conf["num-clients"]), int(conf["seed"])
    server_round = int(conf["server-round"])
    pid = int(context.node_config["partition-id"])
    tiny = WORKLOADS[workload].tiny_mlp
    cfg, model, x, y = _model_and_data(workload, num_clients, seed, pid)
    if "arrays" in msg.content.array_records:                 # global model (fedavg)
        set_weights(model, msg.content["arrays"], tiny)
    elif STATE_KEY + workload in context.state.array_records:  # own model (local), from the node context
        set_weights(model, context.state[STATE_KEY + workload], tiny)
    stats = train_local(model, x, y, cfg.train, seed=derive_seed(cfg.seed, server_round, pid))
    weights = get_weights(model, tiny)
    content = RecordDict({"metrics": MetricRecord({"num-examples": int(y.shape[0]), "train-loss": stats.loss})})
    if conf.get("upload", 1):
        content["arrays"] = weights
    else:
        context.state[STATE_KEY + workload] = weights
    return Message(content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's partition id: the server maps logical clients to node ids once."""
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)


def train_config(workload: str, num_clients: int, seed: int = 0, upload: bool = True) -> ConfigRecord:
    return ConfigRecord({"workload": workload, "num-clients": num_clients, "seed": seed, "upload": int(upload)})


def initial_arrays(workload: str, num_clients: int, seed: int = 0) -> ArrayRecord:
    tiny = WORKLOADS[workload].tiny_mlp
    _, model, _, _ = _model_and_data(workload, num_clients, seed, 0)
    model.reset_expert(derive_seed(seed, "expert-init"))   # (a)'s and (b)'s start (tiny: the whole MLP)
    return get_weights(model, tiny)
