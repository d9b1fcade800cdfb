"""The only module that touches Flower records: packing, validation, byte ledger.

Why one module: record keys are a protocol between strategies and clients; keeping
them here (as constants) means both sides cannot drift apart, and every byte that
crosses the wire is counted in one place.

Task protocol (server -> node). One message can carry many *logical* clients
(`client-ids`): in simulation a node hosts a shard of clients and trains the
sampled ones one after another, which keeps Flower's per-message overhead off
the per-client path. Bytes are still accounted per logical client.

Reply protocol (node -> server): per logical client `c`, an ArrayRecord
`expert/<c>` (absent when the method uploads nothing) and a MetricRecord
`metrics/<c>`. Only trainable expert tensors ever go into a reply.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
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
GLOBAL = "global"            # ArrayRecord the server sends (global expert), optional
TASK = "task"                # ConfigRecord with the keys below
RUN_CONFIG = "run-config"    # JSON of the resolved RunConfig
CLIENT_IDS = "client-ids"    # logical clients this message asks the node to handle
ROUND = "round"
PHASE = "phase"              # what the client should do (methods with several phases)
WANTS = "wants"              # comma list: which optional parts the server asks for (e.g. "proxies,routing")
EXPERT_PREFIX = "expert/"    # reply ArrayRecord per logical client
METRICS_PREFIX = "metrics/"  # reply MetricRecord per logical client
EXTRAS_PREFIX = "extras/"    # reply ArrayRecord per logical client: method extras (routing vectors, proxy ids)
NODE_INFO = "node-info"      # query reply: the node's partition-id / num-partitions

PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"

State = dict[str, np.ndarray]


def state_nbytes(state: State) -> int:
    """Payload bytes of tensors (numel x element size), as FLSim's channels count them."""
    return int(sum(a.nbytes for a in state.values()))


def to_record(state: State) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})


def _decode_array(arr: Array) -> np.ndarray:
    """`Array.numpy()` without `np.load`: its .npy header parse (ast.literal_eval) costs
    more than the copy for small expert tensors. The raw data are the last nbytes of the
    serialised bytes; anything that is not a plain numpy array takes Flower's path."""
    dtype = np.dtype(arr.dtype) if arr.stype == "numpy.ndarray" else None
    if dtype is None or dtype.hasobject:
        return arr.numpy()
    shape = tuple(arr.shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes > len(arr.data):
        raise ValueError(f"array data holds {len(arr.data)} bytes, {nbytes} expected for {shape} {dtype}")
    return np.frombuffer(arr.data, dtype=dtype, offset=len(arr.data) - nbytes).reshape(shape).copy()


def from_record(record: ArrayRecord) -> State:
    return {k: _decode_array(v) for k, v in record.items()}


# ---------------------------------------------------------------- tasks ----
@dataclass(frozen=True)
class Task:
    run_config: str
    client_ids: tuple[int, ...]
    server_round: int
    global_state: State | None
    phase: str = "train"
    wants: tuple[str, ...] = ()     # optional parts of the reply the server asks for (upload phases)


def make_task(run_config: str, client_ids: list[int], server_round: int, global_state: State | None,
              phase: str = "train", wants: tuple[str, ...] = ()) -> RecordDict:
    content = RecordDict()
    content[TASK] = ConfigRecord({RUN_CONFIG: run_config, CLIENT_IDS: [int(c) for c in client_ids],
                                  ROUND: int(server_round), PHASE: phase, WANTS: ",".join(wants)})
    if global_state is not None:
        content[GLOBAL] = to_record(global_state)
    return content


def _task_client_ids(cfg: ConfigRecord) -> tuple[int, ...]:
    ids = cfg[CLIENT_IDS]
    return (ids,) if isinstance(ids, int) else tuple(int(i) for i in ids)


def read_task(content: RecordDict) -> Task:
    cfg = content.config_records[TASK]
    ids = _task_client_ids(cfg)
    arrays = content.array_records
    glob = from_record(arrays[GLOBAL]) if GLOBAL in arrays else None
    wants = tuple(w for w in str(cfg.get(WANTS, "")).split(",") if w)
    return Task(str(cfg[RUN_CONFIG]), ids, int(cfg[ROUND]), glob, str(cfg.get(PHASE, "train")), wants)


# -------------------------------------------------------------- replies ----
@dataclass
class ClientResult:
    """What one logical client returns; `state` is None when nothing is uploaded.

    `extras` carries a method's small non-expert arrays (routing vectors, proxy
    indices); they are checked for finiteness, not against the expert spec.
    """

    client_id: int
    metrics: dict[str, float]
    state: State | None = None
    extras: State | None = None


def make_reply(results: list[ClientResult]) -> RecordDict:
    content = RecordDict()
    for res in results:
        content[f"{METRICS_PREFIX}{res.client_id}"] = MetricRecord({k: float(v) for k, v in res.metrics.items()})
        if res.state is not None:
            content[f"{EXPERT_PREFIX}{res.client_id}"] = to_record(res.state)
        if res.extras is not None:
            content[f"{EXTRAS_PREFIX}{res.client_id}"] = to_record(res.extras)
    return content


def _check_state(state: State, spec: dict[str, tuple[tuple[int, ...], str]]) -> str | None:
    """Why `state` is not a valid expert update for `spec`, or None if it is."""
    if set(state) != set(spec):
        missing, extra = sorted(set(spec) - set(state)), sorted(set(state) - set(spec))
        return f"keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for k, (shape, dtype) in spec.items():
        a = state[k]
        if tuple(a.shape) != tuple(shape):
            return f"{k} has shape {tuple(a.shape)}, expected {tuple(shape)}"
        if str(a.dtype) != dtype:
            return f"{k} has dtype {a.dtype}, expected {dtype}"
        if not np.isfinite(a).all():
            return f"{k} has non-finite values"
    return None


@dataclass
class Unpacked:
    results: list[ClientResult]          # sorted by client id (aggregation order is fixed)
    rejected: dict[int, str] = field(default_factory=dict)  # client id -> reason
    failed_nodes: int = 0                # replies that carried an error instead of content
    uploaded: dict[int, int] = field(default_factory=dict)  # client id -> tensor bytes received, valid or not


def read_replies(
    replies: list[Message],
    spec: dict[str, tuple[tuple[int, ...], str]] | None,
    expected: set[int] | None = None,
) -> Unpacked:
    """Collect per-client results from node replies; reject malformed ones.

    A client whose expert has the wrong keys, shape or dtype, or non-finite values,
    or whose metrics are non-finite, is dropped with a logged reason; the round goes
    on with the rest. `spec=None` accepts any state (methods with varying shapes).
    """
    out = Unpacked(results=[])
    for msg in replies:
        if msg.has_error():
            out.failed_nodes += 1
            log.warning("node reply carried an error: %s", msg.error.reason)
            continue
        content = msg.content
        # Flower rebuilds these typed views on every property access: take them once per reply
        metric_records, array_records = content.metric_records, content.array_records
        for name, mrec in metric_records.items():
            if not name.startswith(METRICS_PREFIX):
                continue
            cid = int(name[len(METRICS_PREFIX):])
            if expected is not None and cid not in expected:
                out.rejected[cid] = "client was not asked in this round"
                continue
            metrics = {k: float(v) for k, v in mrec.items()}
            if not all(math.isfinite(v) for v in metrics.values()):
                out.rejected[cid] = "non-finite metrics"
                continue
            state, reason = _decode(array_records.get(f"{EXPERT_PREFIX}{cid}"), cid, out)
            if reason is None and state is not None and spec is not None:
                reason = _check_state(state, spec)
            extras = None
            if reason is None:
                extras, reason = _decode(array_records.get(f"{EXTRAS_PREFIX}{cid}"), cid, out)
                bad = [k for k, a in (extras or {}).items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
                reason = reason or (f"{bad[0]} has non-finite values" if bad else None)
            if reason is not None:
                out.rejected[cid] = reason
                continue
            out.results.append(ClientResult(cid, metrics, state, extras))
    for cid, reason in sorted(out.rejected.items()):
        log.warning("rejected update of client %d: %s", cid, reason)
    out.results.sort(key=lambda r: r.client_id)
    return out


def _decode(record: ArrayRecord | None, cid: int, out: Unpacked) -> tuple[State | None, str | None]:
    """Arrays of one record (None if absent) and why they are unusable; bytes received are
    counted either way: a corrupt upload still crossed the wire."""
    if record is None:
        return None, None
    try:
        state = from_record(record)
    except Exception as exc:  # a corrupt array must not stop the round
        out.uploaded[cid] = out.uploaded.get(cid, 0) + sum(len(a.data) for a in record.values())
        return None, f"undecodable arrays ({exc})"
    out.uploaded[cid] = out.uploaded.get(cid, 0) + state_nbytes(state)
    return state, None


def read_node_info(msg: Message) -> tuple[int, int]:
    rec = msg.content.config_records[NODE_INFO]
    return int(rec[PARTITION_ID]), int(rec[NUM_PARTITIONS])


def make_node_info(partition_id: int, num_partitions: int) -> RecordDict:
    content = RecordDict()
    content[NODE_INFO] = ConfigRecord({PARTITION_ID: int(partition_id), NUM_PARTITIONS: int(num_partitions)})
    return content


# --------------------------------------------------------------- ledger ----
UP, DOWN, P2P = "up", "down", "p2p"


class ByteLedger:
    """Tensor bytes per round, direction and logical client.

    up: client -> server; down: server -> client; p2p: client -> client (relayed in
    simulation, counted apart so the server-bound load is honest). A global model
    sent in one message to a node hosting many logical clients is counted once per
    logical client: that is what a real deployment with one client per node pays.
    """

    def __init__(self) -> None:
        self._rows: dict[tuple[int, str], int] = defaultdict(int)
        self._per_client: dict[tuple[int, str, int], int] = defaultdict(int)

    def add(self, server_round: int, direction: str, client_id: int, nbytes: int) -> None:
        if direction not in (UP, DOWN, P2P):
            raise ValueError(f"ledger direction must be up, down or p2p (got {direction!r})")
        self._rows[(server_round, direction)] += int(nbytes)
        self._per_client[(server_round, direction, client_id)] += int(nbytes)

    def round_total(self, server_round: int, direction: str) -> int:
        return self._rows.get((server_round, direction), 0)

    def total(self, direction: str) -> int:
        return sum(v for (_, d), v in self._rows.items() if d == direction)

    def client_bytes(self, server_round: int, direction: str, client_id: int) -> int:
        return self._per_client.get((server_round, direction, client_id), 0)

    def rows(self) -> list[dict[str, int | str]]:
        """One row per (round, direction, client): the ledger.csv content."""
        return [
            {"round": r, "direction": d, "client": c, "bytes": b}
            for (r, d, c), b in sorted(self._per_client.items())
        ]


def clients_in(msg: Message) -> int:
    """How many logical clients a reply (or task) speaks for: progress counts these."""
    if msg.has_error():
        return 0
    content = msg.content
    configs = content.config_records
    if TASK in configs:
        return len(_task_client_ids(configs[TASK]))   # not read_task: no need to decode the global state
    return sum(1 for name in content.metric_records if name.startswith(METRICS_PREFIX))
