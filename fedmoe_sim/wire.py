"""The only module that touches Flower records: the message protocol, validation, byte ledger.

Why one module: record names are a protocol between strategies and clients; keeping
them here means both sides cannot drift apart, and every byte that crosses the wire
is booked in one place. The protocol in full (who sends what to whom, when) is in
docs/protocol.md.

Task (server -> node), one message per node per phase. It speaks for many *logical*
clients (`client-ids`): in simulation a node hosts a shard of clients and handles
the asked ones one after another, which keeps Flower's per-message overhead off the
per-client path. A task carries named parts: the strategy gives some to every client
of the phase (shared) and some to one client each (per client), plus a small
per-client plan (scalars, ids). On the wire each distinct payload is one
`blob/<i>` ArrayRecord, sent once per message however many of its clients use it;
the `task` ConfigRecord maps, per part name, every client to its blob (`part/<name>`,
-1 = none) and carries the plan as one list per key (`plan/<key>`), aligned with
`client-ids`. `expect` names the parts every client's reply must carry.

Reply (node -> server): per logical client `c`, a MetricRecord `metrics/<c>`, one
ArrayRecord `up/<c>/<part>` per expected part, or a ConfigRecord `error/<c>` when the
client could not do its task. Clients of one reply whose part has the same layout (keys,
shapes, dtypes) travel packed instead: one ArrayRecord `pack/<g>/<part>` whose arrays
stack theirs along a new leading axis, and their metrics likewise as one MetricRecord
`mpack/<g>` of lists; the ConfigRecord `packs` lists, per pack, its clients in row
order. Why: a node answering for hundreds of logical clients would otherwise build,
pickle and parse hundreds of records per part, which costs more than training small
experts. Bytes are the same either way and are booked per client (its rows). The
server checks every part against the spec the strategy declared and rejects the client
(reason logged) on a missing, unknown or malformed part; the round goes on with the rest.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fedmoe_sim.parts import ArraySpec, Parts, PartSpec, State, check_parts  # noqa: F401  (re-exported)
from fedmoe_sim.metrics import (  # noqa: F401  (metric names are part of the wire protocol)
    ACC_DOMAIN,
    ACC_OWN,
    DOMAIN,
    EVAL_LOSS,
    NUM_EXAMPLES,
    TRAIN_ACC,
    TRAIN_LOSS,
)
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

log = logging.getLogger(__name__)

# record names
TASK = "task"                # ConfigRecord with the keys below
RUN_CONFIG = "run-config"    # JSON of the resolved RunConfig
CLIENT_IDS = "client-ids"    # logical clients this message asks the node to handle
ROUND = "round"
PHASE = "phase"              # what the clients should do: "train", "evaluate" or a method's own step
EXPECT = "expect"            # part names every client's reply must carry
BLOB_PREFIX = "blob/"        # task ArrayRecord: one distinct payload of this message
PART_PREFIX = "part/"        # task config key: per client, the blob index of that part (-1: none)
PLAN_PREFIX = "plan/"        # task config key: per client, one plan value
UP_PREFIX = "up/"            # reply ArrayRecord per logical client and part: up/<cid>/<part>
METRICS_PREFIX = "metrics/"  # reply MetricRecord per logical client
PACK_PREFIX = "pack/"        # reply ArrayRecord: one part of many clients, stacked: pack/<g>/<part>
MPACK_PREFIX = "mpack/"      # reply MetricRecord: the metrics of many clients, one list per key
PACKS = "packs"              # reply ConfigRecord: pack record name -> its clients, in row order
ERROR_PREFIX = "error/"      # reply ConfigRecord per logical client that failed its task
ERROR_KIND, ERROR_REASON = "kind", "reason"
MISSING_STATE = "missing-state"   # error kind: the client's persistent state is not where it should be
TRAIN, EVALUATE = "train", "evaluate"   # phases every method has; EVALUATE goes out as a Flower evaluate message
RELEASE = "release"          # after a finished run: each node deletes the run's client-state store
STATE_ROUND = "state-round"  # plan key of stateful methods: the round of the client's last accepted training (0 = none)
STATE_PIN = "state-pin"      # plan key of stateful methods: that round as of the last checkpoint (a resume needs it)
STATE_KEY = "state-key"      # task key: names the run's client-state store (kept by a resumed run)
NODE_INFO = "node-info"      # query reply: the node's partition-id / num-partitions

# Flower's standard layout (its built-in strategies, ClientApps written for them): one client per
# message; fedmoe_sim.interop converts it to and from ours
STD_ARRAYS, STD_CONFIG, STD_METRICS, STD_ROUND = "arrays", "config", "metrics", "server-round"

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

PlanValue = int | float | str | bool


def state_nbytes(state: State) -> int:
    """Payload bytes of tensors (numel x element size), as FLSim's channels count them."""
    return int(sum(a.nbytes for a in state.values()))


def to_record(state: State) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def _decode_array(arr: Array) -> np.ndarray:
    """`Array.numpy()` without `np.load` where the payload is the plain C-ordered array its
    metadata says: its .npy header parse (ast.literal_eval) costs more than the copy for small
    expert tensors. The header is still checked (cheap byte matches): a Fortran-ordered or
    otherwise different payload takes Flower's own path, and one whose header disagrees with
    its metadata (dtype, shape) is refused."""
    dtype = np.dtype(arr.dtype) if arr.stype == "numpy.ndarray" else None
    if dtype is None or dtype.hasobject:
        return arr.numpy()
    shape = tuple(int(d) for d in arr.shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > len(arr.data):
        raise ValueError(f"array data holds {len(arr.data)} bytes, {nbytes} expected for {shape} {dtype}")
    header = bytes(arr.data[: len(arr.data) - nbytes])
    if not _plain_header(header, dtype, shape):
        out = arr.numpy()
        if tuple(out.shape) != shape or out.dtype != dtype:
            raise ValueError(f"array header says {out.dtype} {tuple(out.shape)}, its metadata {dtype} {shape}")
        return out
    return np.frombuffer(arr.data, dtype=dtype, offset=len(arr.data) - nbytes).reshape(shape).copy()


def _plain_header(header: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Whether a .npy header describes exactly a C-ordered `dtype` array of `shape`."""
    return (header.startswith(b"\x93NUMPY") and b"'fortran_order': False" in header
            and f"'descr': '{dtype.str}'".encode() in header and f"'shape': {shape!r}".encode() in header)


def from_record(record: ArrayRecord) -> State:
    return {k: _decode_array(v) for k, v in record.items()}


# ---------------------------------------------------------------- tasks ----
@dataclass
class Outbox:
    """Everything a strategy sends in one phase, independent of nodes and placement.

    `shared[part]` goes to every client; `send(cid, part, state)` to one client; a part
    sent with `source=s` is client s's own part delivered to that client peer to peer
    (the simulation relays it; the ledger books it once, as P2P from s). `expect` is
    the spec of every part each client must send back.
    """

    phase: str
    clients: list[int]
    shared: Parts = field(default_factory=dict)
    per_client: dict[int, Parts] = field(default_factory=dict)
    plans: dict[int, dict[str, PlanValue]] = field(default_factory=dict)
    expect: dict[str, PartSpec] = field(default_factory=dict)
    sources: dict[tuple[int, str], int] = field(default_factory=dict)   # (receiver, part) -> source client

    def send(self, cid: int, part: str, state: State, source: int | None = None) -> None:
        self.per_client.setdefault(cid, {})[part] = state
        if source is not None:
            self.sources[(cid, part)] = int(source)

    def plan(self, cid: int, **values: PlanValue) -> None:
        self.plans.setdefault(cid, {}).update(values)

    def parts_of(self, cid: int) -> Parts:
        return {**self.shared, **self.per_client.get(cid, {})}


def make_task(run_config: str, server_round: int, outbox: Outbox, client_ids: list[int],
              state_key: str = "") -> RecordDict:
    """The task for one node: `client_ids` (a subset of the outbox's clients), each distinct
    payload once; `state_key` names the run's client-state store."""
    content = RecordDict()
    blobs: dict[int, int] = {}            # id(state) -> blob index
    refs: dict[str, list[int]] = {}
    for pos, cid in enumerate(client_ids):
        for part, state in outbox.parts_of(cid).items():
            index = blobs.get(id(state))
            if index is None:
                index = blobs[id(state)] = len(blobs)
                content[f"{BLOB_PREFIX}{index}"] = to_record(state)
            refs.setdefault(part, [-1] * len(client_ids))[pos] = index
    cfg: dict[str, Any] = {RUN_CONFIG: run_config, CLIENT_IDS: [int(c) for c in client_ids], ROUND: int(server_round),
                           PHASE: outbox.phase, EXPECT: sorted(outbox.expect), STATE_KEY: state_key}
    for part, indices in refs.items():
        cfg[f"{PART_PREFIX}{part}"] = indices
    keys = sorted({k for cid in client_ids for k in outbox.plans.get(cid, {})})
    for key in keys:
        try:
            cfg[f"{PLAN_PREFIX}{key}"] = [outbox.plans[cid][key] for cid in client_ids]
        except KeyError:
            raise ValueError(f"plan key {key!r} must be set for every client of the phase") from None
    content[TASK] = ConfigRecord(cfg)
    return content


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


class Task:
    """A node's view of one task message; parts are decoded on first use, each blob once."""

    def __init__(self, content: RecordDict) -> None:
        cfg = content.config_records[TASK]
        self.run_config = str(cfg[RUN_CONFIG])
        self.client_ids: tuple[int, ...] = tuple(int(c) for c in _as_list(cfg[CLIENT_IDS]))
        self.server_round = int(cfg[ROUND])
        self.phase = str(cfg[PHASE])
        self.expect: tuple[str, ...] = tuple(str(p) for p in _as_list(cfg.get(EXPECT, [])) if p)
        self.state_key = str(cfg.get(STATE_KEY, ""))
        self._pos = {cid: i for i, cid in enumerate(self.client_ids)}
        self._refs = {k[len(PART_PREFIX):]: _as_list(v) for k, v in cfg.items() if k.startswith(PART_PREFIX)}
        self._plans = {k[len(PLAN_PREFIX):]: _as_list(v) for k, v in cfg.items() if k.startswith(PLAN_PREFIX)}
        self._records = content.array_records
        self._decoded: dict[int, State] = {}

    def _blob(self, index: int) -> State:
        if index not in self._decoded:
            self._decoded[index] = from_record(self._records[f"{BLOB_PREFIX}{index}"])
        return self._decoded[index]

    def part(self, cid: int, name: str) -> State | None:
        """Client `cid`'s part `name` (None if the server sent none). Clients of one message
        that got the same payload share one decoded dict: treat it as read-only."""
        refs = self._refs.get(name)
        index = -1 if refs is None else int(refs[self._pos[cid]])
        return None if index < 0 else self._blob(index)

    def parts(self, cid: int) -> Parts:
        return {name: state for name in self._refs if (state := self.part(cid, name)) is not None}

    def plan(self, cid: int) -> dict[str, PlanValue]:
        pos = self._pos[cid]
        return {k: v[pos] for k, v in self._plans.items()}


def read_task(content: RecordDict) -> Task:
    return Task(content)


# -------------------------------------------------------------- replies ----
@dataclass
class ClientResult:
    """What one logical client returns: metrics and named parts, or an error."""

    client_id: int
    metrics: dict[str, float]
    parts: Parts = field(default_factory=dict)
    error: str | None = None          # the client could not do its task: why
    error_kind: str = ""              # MISSING_STATE, or "" for any other failure

    def part(self, name: str) -> State | None:
        return self.parts.get(name)


def make_reply(results: list[ClientResult]) -> RecordDict:
    """The node's reply; clients that share a part's layout (or a metric key set) are packed."""
    content = RecordDict()
    index: dict[str, list[int]] = {}
    metric_groups: dict[tuple[str, ...], list[ClientResult]] = defaultdict(list)
    part_groups: dict[tuple, list[tuple[int, State]]] = defaultdict(list)
    for res in results:
        if res.error is not None:
            content[f"{ERROR_PREFIX}{res.client_id}"] = ConfigRecord({ERROR_KIND: res.error_kind,
                                                                      ERROR_REASON: res.error})
            continue
        metric_groups[tuple(res.metrics)].append(res)
        for part, state in res.parts.items():
            layout = tuple((k, np.shape(a), np.asarray(a).dtype.str) for k, a in state.items())
            part_groups[(part, layout)].append((res.client_id, state))
    for g, (keys, members) in enumerate(metric_groups.items()):
        if len(members) == 1:
            content[f"{METRICS_PREFIX}{members[0].client_id}"] = MetricRecord(
                {k: float(v) for k, v in members[0].metrics.items()})
            continue
        content[f"{MPACK_PREFIX}{g}"] = MetricRecord({k: [float(r.metrics[k]) for r in members] for k in keys})
        index[f"{MPACK_PREFIX}{g}"] = [int(r.client_id) for r in members]
    for g, ((part, layout), members) in enumerate(part_groups.items()):
        if len(members) == 1:
            content[f"{UP_PREFIX}{members[0][0]}/{part}"] = to_record(members[0][1])
            continue
        name = f"{PACK_PREFIX}{g}/{part}"
        content[name] = ArrayRecord({k: Array(_rows_stacked([state[k] for _, state in members]))
                                     for k, _, _ in layout})
        index[name] = [int(cid) for cid, _ in members]
    if index:
        content[PACKS] = ConfigRecord(index)
    return content


def _rows_stacked(rows: list[np.ndarray]) -> np.ndarray:
    """`np.stack(rows)`; without the copy when the rows already are, in order, all the rows of one
    array (a vectorised worker's trained tensors come back as row views of one stacked tensor)."""
    base = rows[0].base if isinstance(rows[0], np.ndarray) else None
    if not (isinstance(base, np.ndarray) and base.flags.c_contiguous and base.shape == (len(rows), *rows[0].shape)):
        return np.stack(rows)
    start, step = base.__array_interface__["data"][0], base.strides[0]
    if all(isinstance(r, np.ndarray) and r.base is base and r.dtype == base.dtype
           and r.__array_interface__["data"][0] == start + i * step for i, r in enumerate(rows)):
        return base
    return np.stack(rows)


@dataclass
class Unpacked:
    results: list[ClientResult]          # sorted by client id (aggregation order is fixed)
    rejected: dict[int, str] = field(default_factory=dict)  # client id -> reason
    failed_nodes: int = 0                # replies that carried an error instead of content
    uploaded: dict[tuple[int, str], int] = field(default_factory=dict)   # (client, part) -> bytes received
    lost_state: dict[int, str] = field(default_factory=dict)  # client id -> why its persistent state is missing


def _client_id(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def read_replies(replies: Iterable[Message], expect: Mapping[str, PartSpec], asked: Iterable[int],
                 asked_of: Mapping[int, set[int]] | None = None) -> Unpacked:
    """Collect per-client results from node replies; reject malformed ones.

    `asked_of`: node id -> the clients that node was asked about (a node may speak only for
    those). A client is dropped, with a logged reason, when it was not asked (of that node), answered twice,
    reported an error, sent non-finite or non-numeric metrics, or sent a part that is
    missing, unknown to `expect`, undecodable or not matching its spec. Bytes of every
    part received are counted either way: a rejected upload still crossed the wire.
    """
    asked = set(asked)
    out = Unpacked(results=[])
    seen: set[int] = set()
    for msg in replies:
        if msg.has_error():
            out.failed_nodes += 1
            log.warning("node reply carried an error: %s", msg.error.reason)
            continue
        content = msg.content
        # Flower rebuilds these typed views on every property access: take them once per reply
        metric_records, array_records, config_records = content.metric_records, content.array_records, content.config_records
        got, metrics_of, clash = _reply_contents(metric_records, array_records, config_records, expect)
        errors = {cid: rec for name, rec in config_records.items()
                  if name.startswith(ERROR_PREFIX) and (cid := _client_id(name[len(ERROR_PREFIX):])) is not None}
        for cid in sorted(set(got) | set(errors) | set(metrics_of) | set(clash)):
            decoded: Parts = {}
            checked: set[str] = set()
            reason = clash.get(cid)
            for part, (state, nbytes, why, done) in got.get(cid, {}).items():
                out.uploaded[(cid, part)] = out.uploaded.get((cid, part), 0) + nbytes
                reason = reason or (f"part {part!r}: {why}" if done and why else why)
                if state is not None:
                    decoded[part] = state
                if done:
                    checked.add(part)
            if cid not in asked:
                reason = "client was not asked in this phase"
            elif asked_of is not None and cid not in asked_of.get(msg.metadata.src_node_id, set()):
                reason = f"node {msg.metadata.src_node_id} answered for a client it was not asked about"
            elif cid in seen:
                reason = "client answered twice"
            elif cid in errors:
                kind, why = str(errors[cid].get(ERROR_KIND, "")), str(errors[cid].get(ERROR_REASON, ""))
                reason = f"client error: {why}"
                if kind == MISSING_STATE:
                    out.lost_state[cid] = why
            elif cid not in metrics_of:
                reason = clash.get(cid, "no metrics in the reply")
            seen.add(cid)
            metrics = None
            if reason is None:
                metrics, reason = _metrics(metrics_of[cid])
            if reason is None:
                reason = check_parts(decoded, expect, checked)
            if reason is not None:
                out.rejected[cid] = reason
                continue
            out.results.append(ClientResult(cid, metrics, decoded))
    for cid, reason in sorted(out.rejected.items()):
        log.warning("rejected update of client %d: %s", cid, reason)
    out.results.sort(key=lambda r: r.client_id)
    return out


def _metrics(record: MetricRecord) -> tuple[dict[str, float] | None, str | None]:
    """Numeric, finite metrics with a non-negative `num-examples` (every method weighs by it)."""
    metrics = {}
    for k, v in record.items():
        if isinstance(v, (list, tuple)) or not isinstance(v, (int, float)):
            return None, f"metric {k!r} is not a number"
        metrics[k] = float(v)
        if not math.isfinite(metrics[k]):
            return None, "non-finite metrics"
    if NUM_EXAMPLES not in metrics:
        return None, f"no {NUM_EXAMPLES!r} metric"
    if metrics[NUM_EXAMPLES] < 0:
        return None, f"{NUM_EXAMPLES} must be >= 0 (got {metrics[NUM_EXAMPLES]:g})"
    return metrics, None


def _decode(record: ArrayRecord) -> tuple[State | None, str | None]:
    try:
        return from_record(record), None
    except Exception as exc:  # a corrupt array must not stop the round
        return None, f"undecodable arrays ({exc})"


# a client's part (None: undecodable), its bytes, why it is not valid, and whether it was already checked
# against its spec (a pack's rows are checked together)
Decoded = tuple[State | None, int, str | None, bool]


def _reply_contents(metric_records, array_records, config_records, expect: Mapping[str, PartSpec] | None = None
                    ) -> tuple[dict[int, dict[str, Decoded]], dict[int, Mapping], dict[int, str]]:
    """Per client: its decoded parts, its metrics, and why the reply itself is malformed for it
    (a pack whose rows or lists do not match its clients, a part or metrics sent twice)."""
    index = config_records.get(PACKS)
    packs = {str(k): [int(c) for c in _as_list(v)] for k, v in index.items()} if index is not None else {}
    got: dict[int, dict[str, Decoded]] = defaultdict(dict)
    metrics_of: dict[int, Mapping] = {}
    clash: dict[int, str] = {}

    def put(cid: int, part: str, item: Decoded) -> None:
        if part in got[cid]:
            clash.setdefault(cid, f"part {part!r} sent twice")
        got[cid][part] = item

    def put_metrics(cid: int, metrics: Mapping) -> None:
        if cid in metrics_of:
            clash.setdefault(cid, "metrics sent twice")
        metrics_of[cid] = metrics

    for name, record in array_records.items():
        if name.startswith(PACK_PREFIX) and name in packs:
            part = name[len(PACK_PREFIX):].partition("/")[2]
            ids = packs[name]
            for cid, item in zip(ids, _unpack(record, len(ids), (expect or {}).get(part)), strict=True):
                put(cid, part, item)
            continue
        cid_text, _, part = name[len(UP_PREFIX):].partition("/") if name.startswith(UP_PREFIX) else ("", "", "")
        cid = _client_id(cid_text)
        if cid is None or not part:
            log.warning("ignored reply record with a malformed name %r", name)
            continue
        state, why = _decode(record)
        put(cid, part, (state, state_nbytes(state) if state is not None else sum(len(a.data) for a in record.values()),
                        why, False))
    for name, record in metric_records.items():
        if name.startswith(MPACK_PREFIX) and name in packs:
            ids = packs[name]
            lists = {k: _as_list(v) for k, v in record.items()}
            if any(len(v) != len(ids) for v in lists.values()):
                for cid in ids:
                    clash.setdefault(cid, f"metrics pack {name!r} does not hold one value per client")
                continue
            for i, cid in enumerate(ids):
                put_metrics(cid, {k: v[i] for k, v in lists.items()})
        elif name.startswith(METRICS_PREFIX) and (cid := _client_id(name[len(METRICS_PREFIX):])) is not None:
            put_metrics(cid, record)
    return got, metrics_of, clash


def unpack_reply(content: RecordDict) -> tuple[dict[int, Parts], dict[int, dict[str, float]]]:
    """What a reply carries per client, packed or not: its decodable parts and its metrics,
    unchecked (to look at a reply; the server reads replies with `read_replies`)."""
    got, metrics_of, _ = _reply_contents(content.metric_records, content.array_records, content.config_records)
    parts = {cid: {p: item[0] for p, item in items.items() if item[0] is not None} for cid, items in got.items()}
    return parts, {cid: dict(m) for cid, m in metrics_of.items()}


def _unpack(record: ArrayRecord, n: int, spec: PartSpec | None = None) -> list[Decoded]:
    """A pack's rows, one per client (views into one decoded copy), each with its bytes; with the
    part's spec, checked here for all rows at once (layout once, finite values per row)."""
    state, why = _decode(record)
    if state is not None and any(a.ndim == 0 or a.shape[0] != n for a in state.values()):
        state, why = None, f"pack arrays do not have one row per client ({n})"
    if state is None:
        return [(None, sum(len(a.data) for a in record.values()) // max(n, 1), why, False)] * n
    nbytes = state_nbytes(state) // n
    rows = [{k: a[i, ...] for k, a in state.items()} for i in range(n)]    # `...`: a 0-d view, not a scalar
    if spec is None or n == 0:
        return [(row, nbytes, None, False) for row in rows]
    layout = spec.check_layout(rows[0])
    if layout is not None:
        return [(row, nbytes, layout, True) for row in rows]
    bad = spec.check_rows(state, n)
    return [(row, nbytes, bad[i], True) for i, row in enumerate(rows)]


def read_node_info(msg: Message) -> tuple[int, int]:
    rec = msg.content.config_records[NODE_INFO]
    return int(rec[PARTITION_ID]), int(rec[NUM_PARTITIONS])


def make_node_info(partition_id: int, num_partitions: int) -> RecordDict:
    content = RecordDict()
    content[NODE_INFO] = ConfigRecord({PARTITION_ID: int(partition_id), NUM_PARTITIONS: int(num_partitions)})
    return content


# --------------------------------------------------------------- ledger ----
UP, DOWN, P2P, RELAY = "up", "down", "p2p", "relay"
TRAFFIC = (UP, DOWN, P2P)


class ByteLedger:
    """Tensor bytes per round, direction, logical client and part.

    up: client -> server; down: server -> client; p2p: client -> client, booked once on
    the receiver with the sender as `peer`; relay: a part uploaded only so the
    simulation can pass it on as P2P (a deployment sends it directly), kept apart so
    no byte is booked twice. A payload sent in one message to a node hosting many
    logical clients is booked once per logical client: what a deployment with one
    client per node pays.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[int, str], int] = defaultdict(int)
        self._per_client: dict[tuple[int, str, int, str, int], int] = defaultdict(int)

    def add(self, server_round: int, direction: str, client_id: int, nbytes: int, part: str = "",
            peer: int = -1) -> None:
        if direction not in (*TRAFFIC, RELAY):
            raise ValueError(f"ledger direction must be up, down, p2p or relay (got {direction!r})")
        self._rows[(server_round, direction)] += int(nbytes)
        self._per_client[(server_round, direction, client_id, part, peer)] += int(nbytes)

    def round_total(self, server_round: int, direction: str) -> int:
        return self._rows.get((server_round, direction), 0)

    def total(self, direction: str) -> int:
        return sum(v for (_, d), v in self._rows.items() if d == direction)

    def client_bytes(self, server_round: int, direction: str, client_id: int) -> int:
        return sum(b for (r, d, c, _, _), b in self._per_client.items()
                   if (r, d, c) == (server_round, direction, client_id))

    def rows(self) -> list[dict[str, int | str]]:
        """One row per (round, direction, client, part, peer): the ledger.csv content."""
        return [
            {"round": r, "direction": d, "client": c, "bytes": b, "part": p, "peer": s}
            for (r, d, c, p, s), b in sorted(self._per_client.items())
        ]


    def to_arrays(self) -> dict[str, np.ndarray]:
        """The ledger as columns (a checkpoint stores them without pickle); the direction and
        part columns as codes into their few distinct names: checkpoints are frequent and the
        ledger grows with rounds x clients."""
        keys = sorted(self._per_client)
        out = {"round": np.array([k[0] for k in keys], np.int64), "client": np.array([k[2] for k in keys], np.int64),
               "peer": np.array([k[4] for k in keys], np.int64),
               "bytes": np.array([self._per_client[k] for k in keys], np.int64)}
        for col, at in (("direction", 1), ("part", 3)):
            names = sorted({k[at] for k in keys})
            code = {name: i for i, name in enumerate(names)}
            out[f"{col}_names"] = np.array(names, dtype=str)
            out[f"{col}_code"] = np.array([code[k[at]] for k in keys], np.int32)
        return out

    @classmethod
    def from_arrays(cls, cols: Mapping[str, np.ndarray]) -> ByteLedger:
        """Back from `to_arrays` (also the plain string columns older checkpoints hold)."""
        def names(col: str) -> list[str]:
            if col in cols:
                return cols[col].tolist()
            vocab = cols[f"{col}_names"].tolist()
            return [vocab[i] for i in cols[f"{col}_code"].tolist()]

        ledger = cls()
        for r, d, c, p, s, b in zip(cols["round"].tolist(), names("direction"), cols["client"].tolist(), names("part"),
                                    cols["peer"].tolist(), cols["bytes"].tolist(), strict=True):
            ledger.add(int(r), str(d), int(c), int(b), str(p), peer=int(s))
        return ledger


def clients_in(msg: Message) -> int:
    """How many logical clients a reply (or task) speaks for: progress counts these."""
    if msg.has_error():
        return 0
    content = msg.content
    configs = content.config_records
    if TASK in configs:
        return len(_as_list(configs[TASK][CLIENT_IDS]))   # no need to decode any part
    packs = configs.get(PACKS)
    packed = sum(len(_as_list(v)) for k, v in packs.items() if str(k).startswith(MPACK_PREFIX)) if packs is not None else 0
    ours = sum(1 for name in content.metric_records if name.startswith(METRICS_PREFIX)) + \
        sum(1 for name in configs if name.startswith(ERROR_PREFIX)) + packed
    return ours or int(STD_CONFIG in configs or STD_METRICS in content.metric_records)   # standard: one client
