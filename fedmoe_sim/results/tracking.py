"""Round records mirrored to an experiment tracker (TensorBoard), beside the run's own files.

The run directory's JSONL and CSV files stay the record that `compare` reads; a
tracker is a view for browsing many runs at once (`tensorboard --logdir results/main`
shows every run of every sweep under it). So a tracker only ever receives what
`RunRecorder` already wrote, and `log` is not part of the run identity.

TensorBoard layout: `<run_dir>/tensorboard/`, one event file per process that ran
rounds. Tags group by their first segment: `accuracy/`, `bytes/`, `time/`, `events/`
for our bookkeeping keys, and the where-measured keys (`client-eval/...`,
`server-eval/...`, `client-train/...`) under their own names, as in rounds.jsonl.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from fedmoe_sim.config import METHOD_SECTIONS, ConfigError, flatten

TENSORBOARD_DIR = "tensorboard"
BYTES = ("up", "down", "p2p")                       # `bytes-<direction>` keys of a round record
EVENT_KEYS = ("rejected-updates", "missed-clients")  # Federation.event_counts, beside `faults/<kind>`


class Tracker(Protocol):
    def log_round(self, record: dict[str, Any]) -> None: ...

    def close(self, summary: dict[str, Any]) -> None: ...


def check_logger(name: str) -> None:
    """ConfigError (one line) when the tracker `log` names cannot run here; called at every
    edge (strategies._base.check_method) so a sweep fails before Ray starts, not at round one."""
    if name == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("log='tensorboard' needs the tensorboard package: pip install 'fedmoe-sim[tensorboard]'")


def open_tracker(name: str, run_dir: str | Path, config: dict[str, Any], config_hash: str,
                 resume_after: int | None = None, history: Iterable[dict[str, Any]] = ()) -> Tracker | None:
    """The tracker `log` names ("" = none). A resumed run (`resume_after=K`) passes the kept
    records of rounds 1..K as `history`, so cumulative values continue where they stood."""
    if not name:
        return None
    check_logger(name)
    return TensorBoardTracker(Path(run_dir) / TENSORBOARD_DIR, config, config_hash, resume_after, history)


def tag_of(key: str) -> str:
    """The TensorBoard tag of a round-record key (see the module docstring)."""
    if key == "acc-mean":
        return "accuracy/acc-mean"
    if key.startswith("bytes-") and key[len("bytes-"):] in BYTES:
        return f"bytes/{key[len('bytes-'):]}"
    if key == "wall-s":
        return "time/wall-s"
    if key in EVENT_KEYS or key.startswith("faults/"):
        return f"events/{key}"
    return key


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


class RoundScalars:
    """Round record -> {tag: value}: every finite number under its tag, plus what only a
    running view can add (bytes so far per direction, seconds this round took)."""

    def __init__(self, history: Iterable[dict[str, Any]] = ()) -> None:
        self.cumulative = dict.fromkeys(BYTES, 0.0)
        self.wall_s: float | None = None
        for record in history:
            self(record)

    def __call__(self, record: dict[str, Any]) -> dict[str, float]:
        out = {tag_of(k): x for k, v in record.items() if k != "round" and (x := _number(v)) is not None}
        for direction in BYTES:
            self.cumulative[direction] += _number(record.get(f"bytes-{direction}")) or 0.0
            out[f"bytes/cumulative-{direction}"] = self.cumulative[direction]
        wall = _number(record.get("wall-s"))
        if wall is not None:
            out["time/round-s"] = wall - (self.wall_s or 0.0)
            self.wall_s = wall
        return out


def hparams_of(config: dict[str, Any]) -> dict[str, bool | float | str]:
    """The flattened run config as TensorBoard hparams (bool, number or string); sections of
    other methods (`fedmoe_da.*` in a fedavg run) are left out: they do not apply to the run."""
    foreign = {sec for sec, users in METHOD_SECTIONS.items() if config.get("strategy") not in users}
    out: dict[str, bool | float | str] = {}
    for key, value in flatten(config).items():
        if key.split(".", 1)[0] in foreign or value is None:
            continue
        if isinstance(value, (list, tuple, dict)):
            value = json.dumps(value)
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[key] = value
    return out


class TensorBoardTracker:
    """Event files under `log_dir` (tensorboard's own writer: no TensorFlow, no torch).

    Resume: a process killed after its round-K checkpoint may have logged rounds past K; the
    resumed writer starts with a SessionLog START at step K+1, on which TensorBoard drops
    every earlier event of step > K (its `purge_step`), so no round shows twice. Each round is
    flushed at once: a live TensorBoard sees it, and a kill loses nothing already recorded.
    """

    def __init__(self, log_dir: Path, config: dict[str, Any], config_hash: str, resume_after: int | None = None,
                 history: Iterable[dict[str, Any]] = ()) -> None:
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event_pb2 = event_pb2
        self.config, self.config_hash = config, config_hash
        self.scalars = RoundScalars(history)
        self.last_round = resume_after or 0
        self.writer = EventFileWriter(str(log_dir))
        if resume_after is not None:
            self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=resume_after + 1,
                                                  session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
            self.writer.flush()

    def _write(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=v) for tag, v in sorted(values.items())])
        self.writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def log_round(self, record: dict[str, Any]) -> None:
        self.last_round = int(record["round"])
        self._write(self.last_round, self.scalars(record))
        self.writer.flush()

    def close(self, summary: dict[str, Any]) -> None:
        """The HParams dashboard's row for this run: its config as hparams, and (as metrics) the
        last value of each scalar, `final/acc-mean` (the summary's headline) among them."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from tensorboard.plugins.hparams.summary_v2 import hparams_pb

        final = _number(summary.get("final", {}).get("acc-mean"))
        if final is not None:
            self._write(self.last_round, {"final/acc-mean": final})
        ended = plugin_data_pb2.HParamsPluginData(session_end_info=plugin_data_pb2.SessionEndInfo(
            status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time()))
        end = Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, tensor=metadata.NULL_TENSOR,
                                           metadata=metadata.create_summary_metadata(ended))])
        for pb in (hparams_pb(hparams_of(self.config), trial_id=self.config_hash), end):
            self.writer.add_event(self._event_pb2.Event(wall_time=time.time(), step=self.last_round, summary=pb))
        self.writer.close()
