"""A Flower user's ClientApp written the quickstart way: its own torch MLP (fc1/fc2, the tensors
of our model.backbone=tiny-mlp), local digits, `arrays` in, `arrays` + `metrics` out.

Shared by the in-process interop test (tests/strategies/test_flower_interop.py, which imports
it by path) and the loopback one (tests/deploy/test_interop_loopback.py, which ships this
file's text as the app's client module). Node config `misbehave` makes its train reply carry
a non-finite loss, for the screening test.
"""
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
    """The user's own model: its tensors match our tiny-mlp (model.backbone = tiny-mlp)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def load_data(partition_id: int, num_partitions: int):
    digits = load_digits()
    x = torch.tensor(digits.data[partition_id::num_partitions][:60] / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target[partition_id::num_partitions][:60])
    return (x[:40], y[:40]), (x[40:], y[40:])


app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    (x, y), _ = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimiser.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimiser.step()
    loss_value = float("nan") if context.node_config.get("misbehave") else loss.item()
    metrics = MetricRecord({"train_loss": loss_value, "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, (x, y) = load_data(context.node_config["partition-id"], context.node_config["num-partitions"])
    with torch.no_grad():
        logits = model(x)
    metrics = MetricRecord({"eval_loss": F.cross_entropy(logits, y).item(),
                            "eval_acc": (logits.argmax(1) == y).float().mean().item(), "num-examples": len(x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
