"""TensorBoard tracking: round records as event files beside the run directory's own records."""

import time

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from fedmoe_sim.config import ConfigError
from fedmoe_sim.results import tracking
from fedmoe_sim.results.io import RunRecorder
from fedmoe_sim.results.tracking import RoundScalars, check_logger, hparams_of, tag_of

CONFIG = {"strategy": "fedavg", "seed": 0, "federation": {"rounds": 3, "domains": ["blur", "gamma"]},
          "fedmoe_da": {"top_p": 5}, "log": "tensorboard"}


def _record(r: int, acc: float) -> dict:
    return {"round": r, "acc-mean": acc, "server-eval/acc/blur": acc / 2, "bytes-up": 100, "bytes-down": 300,
            "bytes-p2p": 0, "wall-s": 2.0 * r, "rejected-updates": 1.0, "faults/drop": 2.0,
            "client-eval/loss": float("nan")}


def _load(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / tracking.TENSORBOARD_DIR))
    acc.Reload()
    return acc


def _series(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)]


def test_record_keys_map_to_grouped_tags():
    assert [tag_of(k) for k in ("acc-mean", "bytes-up", "wall-s", "missed-clients", "faults/drop",
                                "client-eval/worst-client-acc")] == [
        "accuracy/acc-mean", "bytes/up", "time/wall-s", "events/missed-clients", "events/faults/drop",
        "client-eval/worst-client-acc"]


def test_round_scalars_add_cumulative_bytes_and_round_time_and_skip_non_numbers():
    scalars = RoundScalars([_record(1, 0.5)])        # a resumed run: round 1 already recorded
    out = scalars(_record(2, 0.6) | {"note": "x"})
    assert out["bytes/cumulative-down"] == 600 and out["time/round-s"] == 2.0 and out["time/wall-s"] == 4.0
    assert "client-eval/loss" not in out and "note" not in out and "round" not in out


def test_hparams_are_the_flat_config_without_other_methods_sections():
    hp = hparams_of(CONFIG)
    assert hp["federation.rounds"] == 3 and hp["federation.domains"] == '["blur", "gamma"]'
    assert not any(k.startswith("fedmoe_da.") for k in hp)


def test_recorder_writes_every_round_as_scalars_and_the_config_as_hparams(tmp_path):
    rec = RunRecorder(tmp_path, CONFIG, "abc", log="tensorboard")
    for r, acc in ((1, 0.5), (2, 0.6)):
        rec.round(_record(r, acc))
    rec.finish({"strategy": "fedavg", "final": {"acc-mean": 0.6}, "rounds": 2})
    acc = _load(tmp_path)
    assert _series(acc, "accuracy/acc-mean") == [(1, 0.5), (2, 0.6)]
    assert _series(acc, "server-eval/acc/blur") == [(1, 0.25), (2, 0.3)]
    assert _series(acc, "bytes/cumulative-up") == [(1, 100), (2, 200)]
    assert _series(acc, "events/faults/drop") == [(1, 2), (2, 2)]
    assert _series(acc, "final/acc-mean") == [(2, 0.6)]
    assert "client-eval/loss" not in acc.Tags()["scalars"]             # NaN: nothing to plot
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content).session_start_info
    assert start.hparams["federation.rounds"].number_value == 3 and start.group_name == "abc"
    assert "_hparams_/session_end_info" in acc.Tags()["tensors"]


def test_a_resumed_run_hides_the_rounds_the_killed_process_logged_past_its_checkpoint(tmp_path):
    killed = RunRecorder(tmp_path, CONFIG, "abc", log="tensorboard")
    for r in (1, 2, 3):                                   # checkpoint after round 1, killed after round 3
        killed.round(_record(r, 0.1 * r))
    time.sleep(1.1)                                       # the resumed process starts later (file order)
    resumed = RunRecorder(tmp_path, CONFIG, "abc", resume_after=1, log="tensorboard")
    resumed.round(_record(2, 0.9))
    resumed.finish({"strategy": "fedavg", "final": {"acc-mean": 0.9}, "rounds": 2})
    acc = _load(tmp_path)
    assert _series(acc, "accuracy/acc-mean") == [(1, 0.1), (2, 0.9)]
    assert _series(acc, "bytes/cumulative-up") == [(1, 100), (2, 200)]    # continues from the kept round 1


def test_without_log_or_on_a_fresh_start_no_stale_tensorboard_files(tmp_path):
    RunRecorder(tmp_path, CONFIG, "abc", log="tensorboard").round(_record(1, 0.5))
    assert (tmp_path / tracking.TENSORBOARD_DIR).is_dir()
    RunRecorder(tmp_path, CONFIG, "abc").round(_record(1, 0.5))        # a rerun from round one, log=""
    assert not (tmp_path / tracking.TENSORBOARD_DIR).exists()


def test_a_missing_tensorboard_is_one_config_error(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"^log='tensorboard' needs the tensorboard package: "
                                          r"pip install 'fedmoe-sim\[tensorboard\]'$"):
        check_logger("tensorboard")
    check_logger("")
    from experiments.catalogue import build_config
    from experiments.registry import get_method
    from strategies._base import check_method

    cfg = build_config("digits-domains", {"strategy": "fedavg", "log": "tensorboard"})
    with pytest.raises(ConfigError, match="needs the tensorboard package"):   # every edge, before the workspace
        check_method(get_method("fedavg").strategy, cfg, None)


def test_an_inprocess_run_logs_its_rounds(tmp_path):
    from experiments.catalogue import build_config
    from experiments.inprocess import run_inprocess

    cfg = build_config("digits-domains", {"federation.num_clients": 4, "federation.rounds": 2,
                                          "data.samples_per_client": 20, "model.pretrain_steps": 200,
                                          "train.local_epochs": 1, "strategy": "fedavg",
                                          "out": str(tmp_path / "run"), "log": "tensorboard"})
    summary = run_inprocess([cfg])[0]
    acc = _load(tmp_path / "run")
    assert [e.step for e in acc.Scalars("accuracy/acc-mean")] == [1, 2]
    assert acc.Scalars("final/acc-mean")[0].value == pytest.approx(summary.final["acc-mean"], rel=1e-6)
    assert [e.step for e in acc.Scalars("bytes/cumulative-up")] == [1, 2]
