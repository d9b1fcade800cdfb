import math

from fedmoe_sim.metrics import summarise_evaluation, summarise_training


def test_per_domain_mean_and_worst_client_by_hand():
    per_client = {
        0: {"domain": 0, "acc-domain": 0.8, "acc-own": 0.5, "num-examples": 10, "eval-loss": 1.0},
        1: {"domain": 0, "acc-domain": 0.6, "acc-own": 1.0, "num-examples": 30, "eval-loss": 2.0},
        2: {"domain": 1, "acc-domain": 0.2, "acc-own": 0.25, "num-examples": 20, "eval-loss": 3.0},
    }
    out = summarise_evaluation(per_client, ("rot90", "invert"))
    assert math.isclose(out["acc/rot90"], 0.7)
    assert math.isclose(out["acc/invert"], 0.2)
    assert math.isclose(out["acc-mean"], 0.45)                    # domains count once each
    assert math.isclose(out["worst-client-acc"], 0.25)
    assert math.isclose(out["acc-own"], (5 + 30 + 5) / 60)        # example-weighted
    assert math.isclose(out["loss"], (10 + 60 + 60) / 60)


def test_training_summary_is_example_weighted():
    out = summarise_training({0: {"train-loss": 1.0, "train-acc": 0.0, "num-examples": 1},
                              1: {"train-loss": 3.0, "train-acc": 1.0, "num-examples": 3}})
    assert out == {"loss": 2.5, "acc": 0.75, "num-clients": 2.0}
