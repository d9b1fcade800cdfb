"""Run records on disk: crash-safe writes and the per-run recorder.

A run directory is the only trace a run leaves, and `compare` trusts it to skip
finished runs, so every file is either whole or absent: whole files go through
a temp file + fsync + `os.replace`; the round log is append-only JSONL whose
reader drops a record cut short by a crash. `summary.json` is written last and
is the marker of a finished run.

Layout of a run directory (all written by `RunRecorder`):
    config.json    resolved config, config hash, seed, package versions, machine, start time
    rounds.jsonl   one record per round, keyed by round and by where measured
    rounds.csv     the same rows as a table (round first, then sorted keys)
    ledger.csv     the byte ledger, one row per round / direction / client
    events.jsonl   per round: faults injected, updates rejected (client -> reason), clients and nodes missed
    checkpoint.npz the server's state after the last checkpointed round (--resume); removed once finished
    tensorboard/   with log="tensorboard": the round records as TensorBoard event files (`tracking`)
    summary.json   `RunSummary` + status "complete"; absent until the run finished
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
CONFIG, ROUNDS_JSONL, ROUNDS_CSV, LEDGER, SUMMARY, EVENTS = (
    "config.json", "rounds.jsonl", "rounds.csv", "ledger.csv", "summary.json", "events.jsonl")
_VERSIONED = ("torch", "flwr", "numpy", "fedmoe-sim")
CSV_EVERY_S = 1.0   # rounds.csv (a view) is rewritten at most this often while a run goes


# ----------------------------------------------------------- atomic writes ----
def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; best effort (not possible on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_replace(path: str | os.PathLike, write: Any, mode: str = "w", durable: bool = True) -> Path:
    """Call `write(fileobj)` on a temp file beside `path`, fsync, then rename over `path`.
    `durable=False` skips the fsyncs: still never torn for a reader or a killed process,
    only an OS crash may lose it (for views rebuilt from a durable record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8", "newline": ""} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> Path:
    """Write `text` so readers see the old file or the new one, never a torn mix."""
    return _atomic_replace(path, lambda f: f.write(text), durable=durable)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic_replace(path, lambda f: f.write(data), "wb")


def to_jsonable(obj: Any) -> Any:
    """Strict-JSON form of a record: numpy/torch scalars unwrapped, NaN/inf -> null.

    Why: metric values often arrive as numpy scalars, and bare NaN is not JSON
    (other readers than Python's choke on it).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool, int)) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item"):                      # numpy scalar, 0-d array or tensor
        return to_jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    raise TypeError(f"cannot record value of type {type(obj).__name__}: {obj!r}")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(to_jsonable(value), sort_keys=True)
    return to_jsonable(value) if hasattr(value, "item") else value


def write_csv_atomic(path: str | os.PathLike, rows: list[dict], columns: list[str], durable: bool = True) -> Path:
    """Write rows in the given column order; a key outside `columns` is an error, not dropped data."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        extra = set(row) - set(columns)
        if extra:
            raise ValueError(f"row has keys outside the CSV columns: {sorted(extra)}")
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue(), durable)


# ------------------------------------------------------------------ JSONL ----
def _parse_record(line: bytes) -> Any:
    return json.loads(line.decode("utf-8"))


def _drop_partial_tail(f: Any) -> None:
    """A crash mid-append can leave a cut record with no newline; cut it off before appending."""
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if size == 0:
        return
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return
    pos, tail = size, b""
    while pos > 0 and b"\n" not in tail:
        step = min(4096, pos)
        pos -= step
        f.seek(pos)
        tail = f.read(step) + tail
    start = pos + tail.rfind(b"\n") + 1          # rfind = -1 -> the whole file is one line
    f.seek(start)
    last = f.read()
    try:
        _parse_record(last)                        # complete record, just missing its newline
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
    except ValueError:
        f.truncate(start)


def append_jsonl(path: str | os.PathLike, record: Any, durable: bool = True) -> None:
    """Append one record as one line and fsync, so a crash loses at most the record being written
    (`durable=False`: no fsync; a killed process still loses nothing, an OS crash the unsynced tail)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(to_jsonable(record), sort_keys=True, allow_nan=False).encode("utf-8") + b"\n"
    with open(path, "a+b") as f:
        _drop_partial_tail(f)
        f.seek(0, os.SEEK_END)
        f.write(line)
        f.flush()
        if durable:
            os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """All records; an unparseable *last* line is a crash artefact and skipped, one elsewhere is corruption."""
    lines = Path(path).read_bytes().split(b"\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(_parse_record(line))
        except ValueError as e:
            if all(not rest.strip() for rest in lines[i + 1:]):
                break
            raise ValueError(f"{path}:{i + 1}: corrupt JSONL record ({e})") from None
    return out


# ---------------------------------------------------------------- records ----
@dataclasses.dataclass
class RunSummary:
    """Final metrics of one finished run: one row of a `compare` table.

    Accuracies are fractions in [0, 1]. `final` holds the last round's aggregate
    metrics (e.g. "client-eval/acc-mean"); `per_domain` maps domain -> {metric: value};
    `per_client` has one dict per logical client ("client", "domain", "acc-own", ...).
    Byte counts are run totals; `wall_s` is None until `RunRecorder.finish` fills it.
    """

    strategy: str
    experiment: str
    seed: int
    config_hash: str
    rounds: int
    final: dict[str, float] = dataclasses.field(default_factory=dict)
    per_domain: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    per_client: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    bytes_p2p: int = 0
    wall_s: float | None = None
    data_fingerprint: str = ""     # hash of the client partitions: equal across strategies of one seed
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSummary":
        """Strict: unknown keys are errors (besides the "status" envelope), newer schemas refused."""
        version = d.get("schema_version", SCHEMA_VERSION)
        if version > SCHEMA_VERSION:
            raise ValueError(f"summary schema_version {version} is newer than this code ({SCHEMA_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"status"}
        if unknown:
            raise ValueError(f"unknown RunSummary keys: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})


def package_versions() -> dict[str, str]:
    """Versions that change results; "unknown" where a package is not installed."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def machine_info() -> dict[str, Any]:
    """Enough to tell whether two wall times are comparable."""
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor() or "unknown", "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0]}


def read_summary(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The finished run's summary dict, or None if the run never finished (or the file is unreadable)."""
    try:
        d = json.loads((Path(out_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and d.get("status") == "complete" else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecorder:
    """Writes one run directory as the server loop goes; only this class writes run files.

    Starting a recorder removes a stale summary.json first, so a directory is
    never marked complete while a (re)run is writing into it, and restarts
    rounds.jsonl: a run is recorded from round one or not at all. A resumed run
    (`resume_after=K`, the checkpoint's round) keeps the records of rounds 1..K and
    drops any later ones, which the killed process wrote past its checkpoint.

    `log` names a tracker (`tracking.open_tracker`: "" = none, "tensorboard") that gets every
    round record too; a fresh start also clears the tracker files of an earlier attempt.
    """

    def __init__(self, out_dir: str | os.PathLike, config_dict: dict[str, Any], config_hash: str,
                 resume_after: int | None = None, log: str = "") -> None:
        from .tracking import TENSORBOARD_DIR, open_tracker

        self.out_dir = Path(out_dir)
        self.config_hash = config_hash
        self._t0 = time.monotonic()
        self._rows: list[dict[str, Any]] = []
        self._csv_due = 0.0
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / SUMMARY).unlink(missing_ok=True)
        if resume_after is not None:
            self._rows = self._keep_until(ROUNDS_JSONL, resume_after)
            self._keep_until(EVENTS, resume_after)
            (self.out_dir / LEDGER).unlink(missing_ok=True)
            recorded = json.loads((self.out_dir / CONFIG).read_text())
            recorded.setdefault("resumed", []).append({"after_round": resume_after, "at": _now()})
            atomic_write_json(self.out_dir / CONFIG, recorded)
            self._tracker = open_tracker(log, self.out_dir, config_dict, config_hash, resume_after, self._rows)
            return
        for name in (ROUNDS_JSONL, ROUNDS_CSV, LEDGER, EVENTS):
            (self.out_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.out_dir / TENSORBOARD_DIR, ignore_errors=True)
        self._tracker = open_tracker(log, self.out_dir, config_dict, config_hash)
        atomic_write_json(self.out_dir / CONFIG, {
            "schema_version": SCHEMA_VERSION,
            "config": config_dict,
            "config_hash": config_hash,
            "seed": config_dict.get("seed"),
            "versions": package_versions(),
            "machine": machine_info(),
            "started_at": _now(),
        })

    def _keep_until(self, name: str, last_round: int) -> list[dict[str, Any]]:
        """Rewrite a JSONL record keeping rounds <= last_round; returns the kept rows."""
        path = self.out_dir / name
        rows = [r for r in read_jsonl(path) if r.get("round", 0) <= last_round] if path.exists() else []
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in rows))
        return rows

    def event(self, record: dict[str, Any]) -> None:
        """Log one round's events (injected, rejected, missed) to events.jsonl (fsynced by `sync`)."""
        append_jsonl(self.out_dir / EVENTS, record, durable=False)

    def sync(self) -> None:
        """Make the round records written so far durable. Called before each checkpoint (a resume
        needs every round up to it) and at the end, not per round: fsyncs cost milliseconds each,
        as much as a round of small clients."""
        for name in (ROUNDS_JSONL, EVENTS):
            path = self.out_dir / name
            if path.exists():
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())

    @property
    def wall_s(self) -> float:
        return time.monotonic() - self._t0

    def round(self, record: dict[str, Any]) -> None:
        """Log one round: append to rounds.jsonl (the record) and rewrite rounds.csv (the view)."""
        record = to_jsonable(record)
        r = record.get("round")
        if not isinstance(r, int) or isinstance(r, bool):
            raise ValueError(f"round record needs an integer 'round' (got {r!r})")
        append_jsonl(self.out_dir / ROUNDS_JSONL, record, durable=False)
        self._rows.append(record)
        if time.monotonic() >= self._csv_due:
            self._write_csv()
        if self._tracker is not None:
            self._tracker.log_round(record)

    def _write_csv(self) -> None:
        """rounds.csv, a view of rounds.jsonl: rewritten at most once a second while rounds run
        (the whole table each time), and by `finish`; never torn, not fsynced."""
        keys = sorted({k for row in self._rows for k in row} - {"round"})
        write_csv_atomic(self.out_dir / ROUNDS_CSV, self._rows, ["round", *keys], durable=False)
        self._csv_due = time.monotonic() + CSV_EVERY_S

    def ledger(self, rows: list[dict[str, Any]]) -> None:
        """Rewrite ledger.csv from the full ledger (columns in first-seen order)."""
        columns = list(dict.fromkeys(k for row in rows for k in row)) or ["round", "direction", "client", "bytes"]
        write_csv_atomic(self.out_dir / LEDGER, rows, columns)

    def finish(self, summary: RunSummary | dict[str, Any]) -> dict[str, Any]:
        """Write summary.json last: its presence with status "complete" means the run is done."""
        d = summary.to_dict() if isinstance(summary, RunSummary) else to_jsonable(dict(summary))
        if d.setdefault("config_hash", self.config_hash) != self.config_hash:
            raise ValueError(f"summary config_hash {d['config_hash']!r} != recorder's {self.config_hash!r}")
        if d.get("wall_s") is None:
            d["wall_s"] = self.wall_s
        d["schema_version"] = d.get("schema_version", SCHEMA_VERSION)
        d["status"] = "complete"
        self._write_csv()
        self.sync()                       # every record on disk before the run is marked complete
        if self._tracker is not None:     # before summary.json: a finished run has its whole view
            self._tracker.close(d)
            self._tracker = None
        atomic_write_json(self.out_dir / SUMMARY, d)
        return d

    @staticmethod
    def is_complete(out_dir: str | os.PathLike, config_hash: str) -> bool:
        """True only for a finished run of this exact config (so `compare` may skip it)."""
        d = read_summary(out_dir)
        return d is not None and d.get("config_hash") == config_hash
