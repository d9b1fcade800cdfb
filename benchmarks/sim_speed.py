"""Simulation speed: the same federated workload driven three ways, on this machine, in one run.

  (a) loop   a plain PyTorch loop: every sampled client in turn on one reused
             model (fedmoe_sim.workspace.Workspace.train_client), then the
             server step, in this process on one core. The floor.
  (b) ours   our simulation with our ServerApp/ClientApp and default settings
             (experiments.runner.run_many: one SuperNode per core, each trains
             its contiguous chunk of the sampled clients per message).
  (c) naive  a Flower-quickstart ClientApp (benchmarks/_naive_client.py): one
             SuperNode per client (num-supernodes = total clients), model and
             client tensors built inside every call, Flower's built-in FedAvg
             (for --strategy local: a send_and_receive loop, own weights in
             context.state).

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
  .venv/bin/python benchmarks/sim_speed.py                 # full (~7.5 min on a quiet 2-core box)
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

from _workloads import WORKLOADS, workload_config  # noqa: E402

TARGETS = {"ratio_ours_to_loop": 1.0, "ratio_naive_to_ours": 2.0, "ratio_ours_to_loop_tiny": 1.6,
           "ratio_naive_to_ours_tiny": 5.0, "peak_rss_gib": 5.0, "rss_growth_1000_vs_100": 1.2}
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
def run_loop(cfg) -> list[tuple[float, float]]:
    """(start, end) of every round of the plain loop: every sampled client in turn on one model, then the server step."""
    from fedmoe_sim.aggregation import weighted_average
    from fedmoe_sim.sampling import client_schedule
    from fedmoe_sim.workspace import Workspace

    fed = cfg.federation
    personal = cfg.strategy == "local"
    ws = Workspace(cfg)                      # data and model built once, outside the timing
    schedule = client_schedule(fed.num_clients, fed.rounds, fed.fraction_train, cfg.seed, "train")
    global_state = ws.initial_expert()
    own: dict[int, dict] = {}
    spans = []
    for server_round in range(1, fed.rounds + 1):
        t0 = time.monotonic()
        states, weights = [], []
        for cid in schedule[server_round - 1]:
            state, _, n = ws.train_client(cid, server_round, own.get(cid) if personal else global_state)
            if personal:
                own[cid] = state
            else:
                states.append(state)
                weights.append(n)
        if not personal:
            global_state = weighted_average(states, weights)
        spans.append((t0, time.monotonic()))
    return spans


# -------------------------------------------------------------- (b) ours ----
def run_ours(cells, strategy, rounds, out_root: Path, rss: TreeRSS) -> dict:
    """All cells in ONE simulation (one Ray start-up), as `compare` does; per-round times from rounds.jsonl."""
    cfgs = [workload_config(w, n, c, strategy, rounds, str(out_root / f"b-{w}-{c}-of-{n}")) for w, c, n in cells]

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
                     "rejected": sum(r.get("client-train/rejected", 0) for r in rows)}
    return out


# ------------------------------------------------------------- (c) naive ----
def run_naive(cells, strategy, rounds, total, rss: TreeRSS) -> dict:
    """All cells in one simulation with `total` SuperNodes, one message per sampled client."""
    import random

    from flwr.app import Message, MessageType, RecordDict
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    import _naive_client as naive

    timeout = 600.0
    results: dict = {}

    class TimedFedAvg(FedAvg):
        """Flower's FedAvg, plus a timestamp and a reply count after each round's aggregation."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.marks: list[float] = []
            self.ok: list[int] = []

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            self.ok.append(sum(not m.has_error() for m in replies))
            res = super().aggregate_train(server_round, replies)
            self.marks.append(time.monotonic())
            return res

    def fedavg(grid, workload, cohort, seed=0):
        strat = TimedFedAvg(fraction_train=cohort / total, fraction_evaluate=0.0, min_train_nodes=cohort,
                            min_evaluate_nodes=0, min_available_nodes=total)
        arrays = naive.initial_arrays(workload, total, seed)
        t0 = time.monotonic()
        strat.start(grid, arrays, num_rounds=rounds, timeout=timeout,
                    train_config=naive.train_config(workload, total, seed))
        return [t0, *strat.marks], strat.ok

    def local(grid, workload, cohort, seed=0):
        nodes = sorted(grid.get_node_ids())
        rng = random.Random(seed)
        marks, ok = [time.monotonic()], []
        for server_round in range(1, rounds + 1):
            msgs = []
            for node in rng.sample(nodes, cohort):
                conf = naive.train_config(workload, total, seed, upload=False)
                conf["server-round"] = server_round
                msgs.append(Message(RecordDict({"config": conf}), node, MessageType.TRAIN))
            replies = grid.send_and_receive(msgs, timeout=timeout)
            ok.append(sum(not m.has_error() for m in replies))
            marks.append(time.monotonic())
        return marks, ok

    server = ServerApp()

    @server.main()
    def _main(grid: Grid, context) -> None:
        deadline = time.monotonic() + timeout
        while len(list(grid.get_node_ids())) < total and time.monotonic() < deadline:
            time.sleep(0.5)
        for workload, cohort, n in cells:
            rss.label = f"c:{workload}:{cohort}/{n}"
            log(f"(c) naive    {workload:9s} {cohort:4d}/{n} clients")
            marks, ok = (local if strategy == "local" else fedavg)(grid, workload, cohort)
            results[(workload, cohort, n)] = {"times": [b - a for a, b in zip(marks, marks[1:])], "rss": None,
                                              "ok": ok, "window": (marks[1], marks[-2])}
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strategy", default="fedavg", choices=sorted(METHODS))
    ap.add_argument("--quick", action="store_true", help="20 and 100 clients per round, 4 rounds (smoke test)")
    ap.add_argument("--rounds", type=int, default=0, help="rounds per cell (default 6, --quick 4); >= 3")
    ap.add_argument("--total", type=int, default=1000, help="total clients (default 1000)")
    ap.add_argument("--cohorts", default="", help="clients per round, comma list (default 20,100,200,500)")
    ap.add_argument("--modes", default="a,b,c", help="which of a,b,c to run (default all)")
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
    strategy = args.strategy
    if strategy not in ("fedavg", "local"):
        log(f"note: (a) and (c) drive {strategy!r} as FedAvg (their floors know fedavg and local only)")
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
    res: dict[str, dict] = {"a": {}, "b": {}, "c": {}}
    with TreeRSS() as rss:
        base_gib = rss.sample() / 2**30
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
                spans = run_loop(workload_config(cell[0], cell[2], cell[1], strategy, rounds))
                res["a"][cell] = {"times": [b - a for a, b in spans], "window": (spans[1][0], spans[-2][1])}
                rss.label = "idle"
        if "c" in modes:
            res["c"].update(run_naive(naive_cells, strategy, rounds, total, rss))
    if not args.out:
        shutil.rmtree(out_root, ignore_errors=True)
    elapsed = time.monotonic() - t_all

    def s(mode, cell):
        r = res[mode].get(cell)
        return steady(r["times"]) if r and r["times"] else None

    # ---- table
    print()
    print(f"sim_speed: strategy={strategy}, {rounds} rounds per cell, seconds per round = median of rounds "
          f"2..{rounds - 1}; machine: {os.cpu_count()} cores, {cpu_model()}; "
          + ", ".join(f"{k} {v}" for k, v in versions().items()))
    for w in ("realistic", "tiny", "smallest"):
        print(f"  {w:9s} = {WORKLOADS[w].label}")
    head = (f"{'workload':9s} {'clients':>9s} {'(a) loop':>9s} {'(b) ours':>9s} {'(c) naive':>9s} "
            f"{'b/a':>6s} {'c/b':>6s} {'a ms/cl':>8s} {'b ms/cl':>8s} {'c ms/cl':>8s} {'RSS b GiB':>9s} "
            f"{'ext load a/b/c %':>16s}")
    print(head)
    print("-" * len(head))
    rows = []
    worst_ext = 0.0
    for cell in main_cells + tiny_cells:
        w, c, n = cell
        a, b, cc = s("a", cell), s("b", cell), s("c", cell)
        rss_b = res["b"].get(cell, {}).get("rss")
        f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        ms = lambda v: None if v is None else 1000 * v / c  # noqa: E731
        ext = {m: rss.foreign_share(res[m][cell]["window"]) if cell in res[m] else None for m in "abc"}
        worst_ext = max([worst_ext, *(v for v in ext.values() if v is not None)])
        ext_txt = "/".join("-" if v is None else f"{100 * v:.0f}" for v in ext.values())
        print(f"{w:9s} {f'{c}/{n}':>9s} {f(a):>9s} {f(b):>9s} {f(cc):>9s} {f(ratio(b, a), 2):>6s} "
              f"{f(ratio(cc, b), 2):>6s} {f(ms(a), 2):>8s} {f(ms(b), 2):>8s} {f(ms(cc), 2):>8s} {f(rss_b, 2):>9s} "
              f"{ext_txt:>16s}")
        r4 = lambda v: None if v is None else round(v, 4)  # noqa: E731
        rows.append({"workload": w, "clients_per_round": c, "total_clients": n, "loop_s": r4(a), "ours_s": r4(b),
                     "naive_s": r4(cc), "rss_b_gib": r4(rss_b),
                     "ext_load": {m: None if v is None else round(v, 3) for m, v in ext.items()}})
    print(f"peak RSS of the process tree before any simulation: {base_gib:.2f} GiB; "
          f"(c) peak RSS: {max((r['rss'] for r in res['c'].values()), default=float('nan')):.2f} GiB; "
          f"benchmark wall time {elapsed:.0f} s")
    print("ext load = CPU used by processes outside this benchmark during the timed rounds, as a share of all cores")
    if worst_ext > 0.10:
        print(f"WARNING: other processes used up to {100 * worst_ext:.0f}% of the machine during a cell; "
              "wall times (and (b), which needs both cores, most) are inflated: rerun on a quiet machine")

    # ---- JSON (last line)
    hl = lambda w: (w, headline, total)  # noqa: E731
    rss_growth = None
    if rss_base and ("realistic", 100, total) in res["b"] and ("realistic", *rss_base) in res["b"]:
        rss_growth = ratio(res["b"][("realistic", 100, total)]["rss"], res["b"][("realistic", *rss_base)]["rss"])
    summary = {
        "benchmark": "sim_speed", "strategy": strategy, "at": f"{headline}/{total}", "rounds": rounds,
        "ratio_ours_to_loop": ratio(s("b", hl("realistic")), s("a", hl("realistic"))),
        "ratio_naive_to_ours": ratio(s("c", hl("realistic")), s("b", hl("realistic"))),
        "ratio_ours_to_loop_tiny": ratio(s("b", hl("tiny")), s("a", hl("tiny"))),
        "ratio_naive_to_ours_tiny": ratio(s("c", hl("tiny")), s("b", hl("tiny"))),
        "peak_rss_gib": round(res["b"][hl("realistic")]["rss"], 3) if hl("realistic") in res["b"] else None,
        "rss_growth_1000_vs_100": rss_growth,
        "ratio_ours_to_loop_smallest": ratio(s("b", hl("smallest")), s("a", hl("smallest"))),
        "ratio_naive_to_ours_smallest": ratio(s("c", hl("smallest")), s("b", hl("smallest"))),
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
    summary["targets_met"] = met
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
