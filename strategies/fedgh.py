"""FedGH (Yi et al., ACM MM 2023): a generalised global head trained on the server.

Every client keeps its own heterogeneous feature extractor (model.families=cnn-1..5).
Per round:
1. train: each sampled client replaces its head with the server's global head,
   trains its whole model on its data, keeps it (stateful), and uploads, for each
   class it holds, the mean representation of its training examples under the
   trained extractor (part "prototypes": means `[C_i, 500]`, classes `[C_i]`,
   counts `[C_i]`; `fedmoe_sim.aggregation.fedgh.class_mean_representations`).
2. server: trains the global head with cross-entropy on every uploaded (mean,
   class) pair, one example each (`train_global_head`, settings in `fedgh.*`,
   shuffle seeded by run seed and round). A client whose means, classes and
   counts disagree in length or name a class outside [0, classes) is left out
   of the step and counted (`fedgh/rejected`): the spec alone cannot say that.
3. evaluate: each client's model as its last local training left it (the
   authors' code tests the trained local model; see `strategies._partial`).
Sent: the head. Uploaded: the class means (small: 500 floats per local class).
Ours: plain SGD server settings (fedgh.*). The counts travel, as
`class_mean_representations` gives them, but do not weight the server step: each
mean is one example, as in the paper.
"""

from __future__ import annotations

import numpy as np

from fedmoe_sim import wire
from fedmoe_sim.aggregation.fedgh import CLASSES, COUNTS, MEANS, PROTOTYPES, train_global_head
from fedmoe_sim.models.pfedmoe import HEAD   # "head": the part name of HeteroCNNModel and PFedMoEModel alike
from fedmoe_sim.training import derive_seed
from strategies._base import Metrics
from strategies._partial import SharedPartStrategy



def prototypes_ok(proto: wire.State, num_classes: int) -> bool:
    """Means, classes and counts of one client line up and name classes in [0, num_classes)."""
    n = proto[MEANS].shape[0]
    return (n == proto[CLASSES].shape[0] == proto[COUNTS].shape[0]
            and bool(((proto[CLASSES] >= 0) & (proto[CLASSES] < num_classes)).all()))


class FedGHStrategy(SharedPartStrategy):
    part = HEAD

    def upload_spec(self) -> dict[str, wire.PartSpec]:
        width = self.ws.model.part_spec(HEAD)[f"{HEAD}.weight"][0][1]    # head weight: [classes, width]
        return {PROTOTYPES: wire.PartSpec({MEANS: wire.ArraySpec((None, width), "float32"),
                                           CLASSES: wire.ArraySpec((None,), "int64"),
                                           COUNTS: wire.ArraySpec((None,), "int64")})}

    def aggregate_train(self, server_round: int, got: wire.Unpacked) -> Metrics:
        metrics = self.fed.train_metrics(got)
        num_classes = self.ws.model.num_classes
        protos = [r.part(PROTOTYPES) for r in got.results]
        good = [p for p in protos if prototypes_ok(p, num_classes)]
        metrics["fedgh/rejected"] = float(len(protos) - len(good))
        if good:   # nobody valid: keep the previous head
            g, seed = self.fed.cfg.fedgh, derive_seed(self.fed.cfg.seed, "fedgh", server_round)
            self.shared = train_global_head(
                self.shared, np.concatenate([p[MEANS] for p in good]), np.concatenate([p[CLASSES] for p in good]),
                epochs=g.epochs, lr=g.lr, batch_size=g.batch, seed=seed)
            metrics["fedgh/prototypes"] = float(sum(len(p[CLASSES]) for p in good))
        return metrics
