"""Simulation speed: the same federated workload driven four ways, on this machine, in one run.

  (a)  loop   a plain PyTorch loop: every sampled client in turn on one reused
              model (fedmoe_sim.workspace.Workspace.train_client), then the
              server step, in this process on one core. The one-core floor.
  (a2) floor  the same loop split over N processes, N = our worker count
              (benchmarks/_floor.py: processes started once, a contiguous chunk
              of the sampled clients each per round). The N-core floor.
  (b)  ours   our simulation with our ServerApp/ClientApp and default settings
              (experiments.runner.run_many: one SuperNode per core, each trains
              its contiguous chunk of the sampled clients per message, the
              clients of a message vectorised: simulation.vectorise, default on).
  (c)  naive  a Flower-quickstart ClientApp (benchmarks/_naive_client.py): one
              SuperNode per client (num-supernodes = total clients), model and
              client tensors built inside every call, Flower's built-in FedAvg
              (for --strategy local: a send_and_receive loop, own weights in
              context.state); it samples the clients (a) samples.

Same result: after the timed rounds (round R-1) every mode's global expert is
compared with (a)'s (benchmarks/_checks.py: max abs difference <= 1e-5;
`same_result` in the JSON; N/A for `local`, which has no global model, and for
methods (a) and (c) only drive as FedAvg). The benchmark stops (non-zero exit)
when Flower's message pick-up patch (experiments/flower_patches.py) did not
install: unpatched short rounds would measure Flower's 0.1 s polling.

Workloads (benchmarks/_workloads.py): `realistic` (our digits mixer + LoRA
expert, 10 local epochs, ~15 ms of training per client), `tiny`
(model.backbone = tiny-mlp: MLP 64-128-10 trained whole, 1 epoch) and
`smallest` (mixer + LoRA, 1 epoch).

Timing: each cell runs R rounds; reported is the median over rounds 2..R-1
of the per-round wall time (start-up, the first round, where workers build
data and model, and the last round, where (b) evaluates 20 clients, are
excluded). (b) per-round times come from its rounds.jsonl ("wall-s").
Peak RSS: the sum of RSS over this process and all its descendants (Ray's
GCS, raylet, agents and actors), sampled every 0.5 s, per (b) run. "ext load":
the CPU share other processes used during a cell's timed rounds; on a shared
machine it inflates (b), which needs both cores, far more than (a).

Usage:
  .venv/bin/python benchmarks/sim_speed.py                 # full (~9 min on a quiet 2-core box)
  .venv/bin/python benchmarks/sim_speed.py --quick         # 20 and 100 clients per round
  .venv/bin/python benchmarks/sim_speed.py --strategy local
The last line printed is one JSON object (ratios, peak RSS, targets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _workloads, _naive_client (Ray workers
# get the same path: Flower's Ray backend exports the driver's sys.path as PYTHONPATH)

import psutil  # noqa: E402

from experiments.registry import METHODS  # noqa: E402
from experiments.runner import backend_config, quiet_flower, run_many  # noqa: E402
from fedmoe_sim.progress import Progress, SweepProgress  # noqa: E402

from _checks import SAME_RESULT_TOL, require_pickup_patch, same_result  # noqa: E402
from _floor import Floor, server_step  # noqa: E402
from _workloads import WORKLOADS, workload_config  # noqa: E402

# issue 4 (naive, RSS growth) and issue 13 (vectorised: loop, floor, tiny; RSS) acceptance limits
TARGETS = {"ratio_ours_to_loop": 0.15, "ratio_ours_to_floor2": 0.3, "ratio_naive_to_ours": 2.0,
           "ratio_ours_to_loop_tiny": 0.5, "ratio_naive_to_ours_tiny": 5.0, "peak_rss_gib": 5.0,
           "rss_growth_1000_vs_100": 1.2}
HEADLINE_COHORT = 200


def log(msg: str) -> None:
    print(f"[sim_speed {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def steady(times: list[float]) -> float:
    """Median of rounds 2..R-1 (1-based), see the module docstring."""
    core = times[1:-1] if len(times) >= 3 else times[1:] or times
    return statistics.median(core)


# ------------------------------------------------------------------ memory ----
class TreeRSS:
    """Per labelled phase: peak summed RSS of this process and its descendants, and the CPU
    time the rest of the machine used meanwhile (other users' load makes wall times unreliable)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.label = "idle"
        self.peaks: dict[str, float] = {}
        self.samples: list[tuple[float, float, float]] = []   # (end time, seconds, foreign CPU-seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._me = psutil.Process()
        self._cpu_seen: dict[int, float] = {}

    @staticmethod
    def _machine_busy_s() -> float:
        """CPU-seconds all cores spent busy since boot (/proc/stat: total - idle - iowait)."""
        try:
            f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return float("nan")
        return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")

    def sample(self) -> int:
        total = 0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return total

    def _scan(self) -> tuple[int, float]:
        """(summed RSS, CPU-seconds the tree used since the last scan)."""
        total, cpu = 0, 0.0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    used = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            cpu += used - self._cpu_seen.get(p.pid, 0.0)
            self._cpu_seen[p.pid] = used
        return total, cpu

    def _run(self) -> None:
        self._scan()
        busy, t = self._machine_busy_s(), time.monotonic()
        while not self._stop.wait(self.interval):
            label = self.label
            rss, ours = self._scan()
            busy2, t2 = self._machine_busy_s(), time.monotonic()
            self.peaks[label] = max(self.peaks.get(label, 0.0), rss / 2**30)
            self.samples.append((t2, t2 - t, max(0.0, (busy2 - busy) - ours)))
            busy, t = busy2, t2

    def foreign_share(self, window: tuple[float, float] | None) -> float | None:
        """Other processes' CPU use in a time.monotonic() window, as a share of all cores (0 = quiet).

        Samples are 0.5 s apart: a sample counts in proportion to its overlap with the window.
        """
        if not window:
            return None
        t0, t1 = window
        cpu = seconds = 0.0
        for end, dt, foreign in self.samples:
            overlap = min(end, t1) - max(end - dt, t0)
            if overlap > 0 and dt > 0:
                cpu += foreign * overlap / dt
                seconds += overlap
        return cpu / (seconds * (os.cpu_count() or 1)) if seconds else None

    def __enter__(self) -> "TreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------ (a) the loop ----
def run_loop(cfg) -> tuple[list[tuple[float, float]], list[dict | None]]:
    """(start, end) of every round of the plain loop (every sampled client in turn on one model, then
    the server step), and the global expert after each round (None for `local`)."""
    from fedmoe_sim.sampling import client_schedule
    from fedmoe_sim.workspace import Workspace

    fed = cfg.federation
    personal = cfg.strategy == "local"
    ws = Workspace(cfg)                      # data and model built once, outside the timing
    schedule = client_schedule(fed.num_clients, fed.rounds, fed.fraction_train, cfg.seed, "train")
    global_state = ws.initial_expert()
    own: dict[int, dict] = {}
    spans, experts = [], []
    for server_round in range(1, fed.rounds + 1):
        t0 = time.monotonic()
        results = []
        for cid in schedule[server_round - 1]:
            state, _, n = ws.train_client(cid, server_round, own.get(cid) if personal else global_state)
            results.append((cid, state, n))
        global_state = server_step(results, personal, own, global_state)
        spans.append((t0, time.monotonic()))
        experts.append(None if personal else global_state)
    return spans, experts


# -------------------------------------------------------------- (b) ours ----
def capture_fedavg_experts() -> dict:
    """(run directory, round) -> our FedAvg's global expert after that round. Read in this process,
    where the ServerApp runs: `FedAvgStrategy.aggregate_train` is wrapped to keep a reference
    (no copy, no I/O: nothing a round would wait for)."""
    from strategies.fedavg import FedAvgStrategy

    seen: dict = {}
    real = FedAvgStrategy.aggregate_train

    def aggregate_train(self, server_round, got):
        out = real(self, server_round, got)
        seen[(self.fed.cfg.out, server_round)] = self.global_expert
        return out

    FedAvgStrategy.aggregate_train = aggregate_train
    return seen


def run_ours(cells, strategy, rounds, out_root: Path, rss: TreeRSS) -> dict:
    """All cells in ONE simulation (one Ray start-up), as `compare` does; per-round times from rounds.jsonl."""
    cfgs = [workload_config(w, n, c, strategy, rounds, str(out_root / f"b-{w}-{c}-of-{n}")) for w, c, n in cells]
    if not cfgs[0].simulation.vectorise:
        raise SystemExit("sim_speed: (b) measures our defaults, and simulation.vectorise is off in them")
    experts = capture_fedavg_experts() if strategy == "fedavg" else {}

    started: list[float] = []

    class Marks(SweepProgress):
        """No progress output: notes when each run's rounds start, and labels its RSS samples."""

        def run(self, i: int, total_rounds: int, first_round: int = 1) -> Progress:
            started.append(time.monotonic())
            rss.label = "b:%s:%d/%d" % cells[i]
            log(f"(b) ours     {cells[i][0]:9s} {cells[i][1]:4d}/{cells[i][2]} clients")
            return super().run(i, total_rounds, first_round)

    summaries = run_many(cfgs, Marks([str(c) for c in cells], enabled=False))
    rss.label = "idle"
    out = {}
    for cell, cfg, summary, t_start in zip(cells, cfgs, summaries, started, strict=True):
        rows = [json.loads(line) for line in (Path(cfg.out) / "rounds.jsonl").read_text().splitlines() if line]
        wall = [0.0] + [float(r["wall-s"]) for r in rows]
        times = [b - a for a, b in zip(wall, wall[1:])]
        if cfg.strategy == "fedavg":     # prove the expected model ran: bytes per client upload
            per_client = summary.bytes_up / (cfg.federation.rounds * cell[1])
            expected = 4 * (64 * 128 + 128 + 128 * 10 + 10) if WORKLOADS[cell[0]].tiny_mlp else 4 * 9216
            if per_client != expected:
                raise RuntimeError(f"{cell}: uploaded {per_client} bytes per client, expected {expected}")
        out[cell] = {"times": times, "rss": rss.peaks.get("b:%s:%d/%d" % cell, float("nan")),
                     "window": (t_start + wall[1], t_start + wall[-2]),
                     "rejected": sum(r.get("client-train/rejected", 0) for r in rows),
                     "experts": [experts.get((cfg.out, r)) for r in range(1, rounds + 1)]}
    return out


# ------------------------------------------------------------- (c) naive ----
def run_naive(cells, strategy, rounds, total, rss: TreeRSS) -> dict:
    """All cells in one simulation with `total` SuperNodes, one message per sampled client."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    import _naive_client as naive
    from fedmoe_sim.sampling import client_schedule

    timeout = 600.0
    results: dict = {}

    def schedule(workload, cohort):
        """The clients (a) and (b) train each round (the same config, seed and stream)."""
        cfg = workload_config(workload, total, cohort, strategy, rounds)
        fed = cfg.federation
        return client_schedule(fed.num_clients, fed.rounds, fed.fraction_train, cfg.seed, "train")

    def node_of_partition(grid) -> dict[int, int]:
        """Partition id -> node id, asked of every node once (untimed)."""
        msgs = [Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.QUERY)
                for node in grid.get_node_ids()]
        replies = grid.send_and_receive(msgs, timeout=timeout)
        return {int(r.content["metrics"]["partition-id"]): r.metadata.src_node_id for r in replies if not r.has_error()}

    class TimedFedAvg(FedAvg):
        """Flower's FedAvg on the scheduled clients' nodes, plus a timestamp, a reply count and
        the global arrays after each round's aggregation."""

        def __init__(self, nodes: list[list[int]], **kw):
            super().__init__(**kw)
            self.nodes = nodes            # per round (index 0 = round 1): the sampled clients' node ids
            self.marks: list[float] = []
            self.ok: list[int] = []
            self.experts: list[dict] = []

        def configure_train(self, server_round, arrays, config, grid):
            """FedAvg's own `configure_train`, with the scheduled nodes in place of `sample_nodes`."""
            config["server-round"] = server_round
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
            return self._construct_messages(record, self.nodes[server_round - 1], MessageType.TRAIN)

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            self.ok.append(sum(not m.has_error() for m in replies))
            res = super().aggregate_train(server_round, replies)
            self.marks.append(time.monotonic())
            self.experts.append({k: a.numpy() for k, a in res[0].items()} if res[0] is not None else None)
            return res

    def fedavg(grid, workload, cohort, node_of, seed=0):
        strat = TimedFedAvg([[node_of[c] for c in cids] for cids in schedule(workload, cohort)],
                            fraction_train=cohort / total, fraction_evaluate=0.0, min_train_nodes=cohort,
                            min_evaluate_nodes=0, min_available_nodes=total)
        arrays = naive.initial_arrays(workload, total, seed)
        t0 = time.monotonic()
        strat.start(grid, arrays, num_rounds=rounds, timeout=timeout,
                    train_config=naive.train_config(workload, total, seed))
        return [t0, *strat.marks], strat.ok, strat.experts

    def local(grid, workload, cohort, node_of, seed=0):
        marks, ok = [time.monotonic()], []
        for server_round, cids in enumerate(schedule(workload, cohort), start=1):
            msgs = []
            for cid in cids:
                conf = naive.train_config(workload, total, seed, upload=False)
                conf["server-round"] = server_round
                msgs.append(Message(RecordDict({"config": conf}), node_of[cid], MessageType.TRAIN))
            replies = grid.send_and_receive(msgs, timeout=timeout)
            ok.append(sum(not m.has_error() for m in replies))
            marks.append(time.monotonic())
        return marks, ok, [None] * rounds

    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context) -> None:
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < total and time.monotonic() < deadline:
            time.sleep(0.5)
        node_of = node_of_partition(grid)
        if len(node_of) < total:
            raise RuntimeError(f"(c) {len(node_of)} of {total} nodes told their partition id")
        for workload, cohort, n in cells:
            rss.label = f"c:{workload}:{cohort}/{n}"
            log(f"(c) naive    {workload:9s} {cohort:4d}/{n} clients")
            marks, ok, experts = (local if strategy == "local" else fedavg)(grid, workload, cohort, node_of)
            results[(workload, cohort, n)] = {"times": [b - a for a, b in zip(marks, marks[1:])], "rss": None,
                                              "ok": ok, "window": (marks[1], marks[-2]), "experts": experts}
        rss.label = "idle"

    quiet_flower()
    run_simulation(server_app=server, client_app=naive.app, num_supernodes=total,
                   backend_config={"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
                                   "init_args": backend_config(workload_config("realistic", total, total))["init_args"]})
    for cell, res in results.items():
        res["rss"] = rss.peaks.get("c:%s:%d/%d" % cell, float("nan"))
        if min(res["ok"]) < cell[1]:
            log(f"WARNING (c) {cell}: rounds got {res['ok']} valid replies of {cell[1]}: not reported")
            res["times"] = None
    return results


# ------------------------------------------------------------------ report ----
def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("torch", "flwr", "ray", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "?"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ratio(num, den):
    return round(num / den, 3) if num and den else None


def measure(modes, strategy, rounds, main_cells, tiny_cells, naive_cells, total, out_root, rss) -> dict:
    """Seconds per round, windows, RSS and global experts of every mode and cell."""
    res: dict[str, dict] = {"a": {}, "a2": {}, "b": {}, "c": {}}
    if "b" in modes:
        if strategy in ("fedavg", "local"):
            res["b"].update(run_ours(main_cells + tiny_cells, strategy, rounds, out_root, rss))
        else:   # a method built around the mixer's experts may not run the whole-model MLP
            res["b"].update(run_ours(main_cells, strategy, rounds, out_root, rss))
            try:
                res["b"].update(run_ours(tiny_cells, strategy, rounds, out_root, rss))
            except Exception as exc:
                log(f"(b) the tiny MLP does not run with strategy {strategy!r}: {exc}")
        for cell, r in res["b"].items():
            if r["rejected"]:
                log(f"WARNING (b) {cell}: {r['rejected']:.0f} client updates rejected")
    if "a" in modes:
        for cell in main_cells + tiny_cells:
            log(f"(a) loop     {cell[0]:9s} {cell[1]:4d}/{cell[2]} clients")
            rss.label = "a:%s:%d/%d" % cell
            spans, experts = run_loop(workload_config(cell[0], cell[2], cell[1], strategy, rounds))
            res["a"][cell] = {"times": [b - a for a, b in spans], "window": (spans[1][0], spans[-2][1]),
                              "experts": experts}
            rss.label = "idle"
    if "a2" in modes:
        from experiments.runner import num_nodes

        cfgs = {cell: workload_config(cell[0], cell[2], cell[1], strategy, rounds) for cell in main_cells + tiny_cells}
        workers = num_nodes(next(iter(cfgs.values())))
        with Floor(workers) as floor:
            for cell, cfg in cfgs.items():
                log(f"(a2) floor   {cell[0]:9s} {cell[1]:4d}/{cell[2]} clients, {workers} processes")
                rss.label = "a2:%s:%d/%d" % cell
                spans, experts = floor.run(cfg)
                res["a2"][cell] = {"times": [b - a for a, b in spans], "window": (spans[1][0], spans[-2][1]),
                                   "experts": experts, "workers": workers}
                rss.label = "idle"
    if "c" in modes:
        res["c"].update(run_naive(naive_cells, strategy, rounds, total, rss))
    return res


def check_results(res: dict, cells, strategy: str, rounds: int) -> dict:
    """Per cell: the modes' global experts after round R-1 (the last timed one) against (a)'s."""
    out = {}
    for cell in cells:
        at = lambda m, i=rounds - 2: (res[m].get(cell) or {}).get("experts", [None] * rounds)[i]  # noqa: E731
        out[cell] = same_result({m: at(m) for m in ("a", "a2", "b", "c")}, previous=at("a", rounds - 3))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategy", default="fedavg", choices=sorted(METHODS))
    ap.add_argument("--quick", action="store_true", help="20 and 100 clients per round, 4 rounds (smoke test)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per cell (default 6, --quick 4); >= 3")
    ap.add_argument("--total", type=int, default=1000, help="total clients (default 1000)")
    ap.add_argument("--cohorts", default="", help="clients per round, comma list (default 20,100,200,500)")
    ap.add_argument("--modes", default="a,a2,b,c", help="which of a,a2,b,c to run (default all)")
    ap.add_argument("--out", default="", help="keep (b)'s run directories here (default: a temp dir, removed)")
    args = ap.parse_args(argv)

    rounds = args.rounds or (4 if args.quick else 6)
    if rounds < 3:
        ap.error("--rounds must be >= 3 (rounds 2..R-1 are timed)")
    cohorts = [int(c) for c in args.cohorts.split(",")] if args.cohorts else ([20, 100] if args.quick else [20, 100, 200, 500])
    total = args.total
    if max(cohorts) > total:
        ap.error("a cohort is larger than --total")
    modes = set(args.modes.split(","))
    if modes - {"a", "a2", "b", "c"}:
        ap.error(f"--modes: unknown {sorted(modes - {'a', 'a2', 'b', 'c'})} (a, a2, b, c)")
    strategy = args.strategy
    if strategy not in ("fedavg", "local"):
        log(f"note: (a), (a2) and (c) drive {strategy!r} as FedAvg (their floors know fedavg and local only)")
    if modes & {"b", "c"}:
        require_pickup_patch()          # exits non-zero, with the reason, when Flower's loop is not the pinned one
    headline = HEADLINE_COHORT if HEADLINE_COHORT in cohorts else max(cohorts)
    rss_base = (100, 100) if not args.quick and 100 in cohorts and total > 100 else None

    main_cells = [("realistic", c, total) for c in cohorts] + [("smallest", c, total) for c in cohorts]
    if rss_base:
        main_cells.insert(0, ("realistic", *rss_base))   # first: a fresh simulation's footprint at 100 clients
    tiny_cells = [("tiny", c, total) for c in cohorts]
    naive_cells = [(w, c, total) for w in ("realistic", "tiny", "smallest") for c in cohorts]

    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sim_speed-"))
    out_root.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    with TreeRSS() as rss:
        base_gib = rss.sample() / 2**30
        res = measure(modes, strategy, rounds, main_cells, tiny_cells, naive_cells, total, out_root, rss)
    if not args.out:
        shutil.rmtree(out_root, ignore_errors=True)
    elapsed = time.monotonic() - t_all
    checks = check_results(res, main_cells + tiny_cells, strategy, rounds) if strategy == "fedavg" else {}

    def s(mode, cell):
        r = res[mode].get(cell)
        return steady(r["times"]) if r and r["times"] else None

    # ---- table
    print()
    workers = next((r["workers"] for r in res["a2"].values()), None)
    print(f"sim_speed: strategy={strategy}, {rounds} rounds per cell, seconds per round = median of rounds "
          f"2..{rounds - 1}; (a2) = the loop over {workers} processes; machine: {os.cpu_count()} cores, "
          f"{cpu_model()}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    for w in ("realistic", "tiny", "smallest"):
        print(f"  {w:9s} = {WORKLOADS[w].label}")
    head = (f"{'workload':9s} {'clients':>9s} {'(a) loop':>9s} {'(a2) flr':>9s} {'(b) ours':>9s} {'(c) naive':>9s} "
            f"{'b/a':>6s} {'b/a2':>6s} {'c/b':>6s} {'b ms/cl':>8s} {'RSS b GiB':>9s} {'same':>5s} "
            f"{'max diff a2/b/c':>23s} {'ext load a/a2/b/c %':>19s}")
    print(head)
    print("-" * len(head))
    rows = []
    worst_ext = 0.0
    for cell in main_cells + tiny_cells:
        w, c, n = cell
        a, a2, b, cc = s("a", cell), s("a2", cell), s("b", cell), s("c", cell)
        rss_b = res["b"].get(cell, {}).get("rss")
        f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        ms = lambda v: None if v is None else 1000 * v / c  # noqa: E731
        ext = {m: rss.foreign_share(res[m][cell]["window"]) if cell in res[m] else None for m in ("a", "a2", "b", "c")}
        worst_ext = max([worst_ext, *(v for v in ext.values() if v is not None)])
        ext_txt = "/".join("-" if v is None else f"{100 * v:.0f}" for v in ext.values())
        chk = checks.get(cell, {})
        same = {None: "N/A", True: "yes", False: "NO"}[chk.get("same")]
        diffs = "/".join(f"{chk['diff'][m]:.0e}" if m in chk.get("diff", {}) else "-" for m in ("a2", "b", "c"))
        print(f"{w:9s} {f'{c}/{n}':>9s} {f(a):>9s} {f(a2):>9s} {f(b):>9s} {f(cc):>9s} {f(ratio(b, a), 2):>6s} "
              f"{f(ratio(b, a2), 2):>6s} {f(ratio(cc, b), 2):>6s} {f(ms(b), 2):>8s} {f(rss_b, 2):>9s} {same:>5s} "
              f"{diffs:>23s} {ext_txt:>19s}")
        r4 = lambda v: None if v is None else round(v, 4)  # noqa: E731
        rows.append({"workload": w, "clients_per_round": c, "total_clients": n, "loop_s": r4(a), "floor2_s": r4(a2),
                     "ours_s": r4(b), "naive_s": r4(cc), "rss_b_gib": r4(rss_b),
                     "same_result": chk.get("same"), "max_abs_diff": chk.get("diff"), "update": chk.get("update"),
                     "ext_load": {m: None if v is None else round(v, 3) for m, v in ext.items()}})
    print(f"peak RSS of the process tree before any simulation: {base_gib:.2f} GiB; "
          f"(c) peak RSS: {max((r['rss'] for r in res['c'].values()), default=float('nan')):.2f} GiB; "
          f"benchmark wall time {elapsed:.0f} s")
    print(f"same = every mode's global expert after round {rounds - 1} within {SAME_RESULT_TOL:g} (max abs) of (a)'s "
          "(N/A: no global model to compare); ext load = CPU used by processes outside this benchmark during the "
          "timed rounds, as a share of all cores")
    if worst_ext > 0.10:
        print(f"WARNING: other processes used up to {100 * worst_ext:.0f}% of the machine during a cell; "
              "wall times (and (b), which needs both cores, most) are inflated: rerun on a quiet machine")

    # ---- JSON (last line)
    hl = lambda w: (w, headline, total)  # noqa: E731
    rss_growth = None
    if rss_base and ("realistic", 100, total) in res["b"] and ("realistic", *rss_base) in res["b"]:
        rss_growth = ratio(res["b"][("realistic", 100, total)]["rss"], res["b"][("realistic", *rss_base)]["rss"])
    verdicts = [chk["same"] for chk in checks.values() if chk["same"] is not None]
    summary = {
        "benchmark": "sim_speed", "strategy": strategy, "at": f"{headline}/{total}", "rounds": rounds,
        "floor_workers": workers,
        "ratio_ours_to_loop": ratio(s("b", hl("realistic")), s("a", hl("realistic"))),
        "ratio_ours_to_floor2": ratio(s("b", hl("realistic")), s("a2", hl("realistic"))),
        "ratio_naive_to_ours": ratio(s("c", hl("realistic")), s("b", hl("realistic"))),
        "ratio_ours_to_loop_tiny": ratio(s("b", hl("tiny")), s("a", hl("tiny"))),
        "ratio_ours_to_floor2_tiny": ratio(s("b", hl("tiny")), s("a2", hl("tiny"))),
        "ratio_naive_to_ours_tiny": ratio(s("c", hl("tiny")), s("b", hl("tiny"))),
        "peak_rss_gib": round(res["b"][hl("realistic")]["rss"], 3) if hl("realistic") in res["b"] else None,
        "rss_growth_1000_vs_100": rss_growth,
        "ratio_ours_to_loop_smallest": ratio(s("b", hl("smallest")), s("a", hl("smallest"))),
        "ratio_ours_to_floor2_smallest": ratio(s("b", hl("smallest")), s("a2", hl("smallest"))),
        "ratio_naive_to_ours_smallest": ratio(s("c", hl("smallest")), s("b", hl("smallest"))),
        "same_result": all(verdicts) if verdicts else None,     # None: N/A (no global model, or one mode only)
        "same_result_tol": SAME_RESULT_TOL,
        "max_abs_diff_at_headline": {w: checks[hl(w)]["diff"] for w in WORKLOADS if hl(w) in checks},
        "tiny_model": "model.backbone=tiny-mlp, width 128",
        "seconds_per_round": rows,
        "wall_s": round(elapsed, 1),
        "max_external_load": round(worst_ext, 3),
    }
    met = {}
    for key, limit in TARGETS.items():
        v = summary.get(key)
        if v is not None:
            met[key] = v >= limit if key.startswith("ratio_naive") else v <= limit if key.startswith("ratio") else v < limit
    if summary["same_result"] is not None:
        met["same_result"] = summary["same_result"]
    summary["targets"] = TARGETS
    summary["targets_met"] = met
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0 if summary["same_result"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
