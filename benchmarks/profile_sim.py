"""Profile (b), our simulation, with py-spy: where a steady-state round spends its time.

Runs one (b) cell of sim_speed (default: realistic, 200 of 1,000 clients, 12
rounds) and, once the first round is done, attaches `py-spy record` (raw
collapsed stacks, sampling idle threads too) to the driver (ServerApp thread,
Flower's simulation threads) and to every ClientApp actor for --duration
seconds. Then it prints, per process, the share of samples per category
(training, our record packing, Flower/Ray plumbing, idle).

Needs py-spy in the venv (`.venv/bin/pip install py-spy`; not a dependency).
  .venv/bin/python benchmarks/profile_sim.py --workload tiny --cohort 200
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

import sim_speed  # noqa: E402

IDLE_LEAVES = ("Condition.wait", "Event.wait", "sleep", "_wait_for_tstate_lock", "Queue.get",
               "Worker.main_loop (ray", "get_objects", "select (", "poll (")
CATEGORIES = [
    ("poll sleep (our loop, 5 ms)", ("exchange (strategies/_loop.py:51)",)),
    ("train: forward/backward/step", ("train_local (", "train_many (")),      # one by one, vectorised
    ("eval: forward", ("evaluate (fedmoe_sim/training.py", "evaluate_many (")),
    ("ours: wire to_record/from_record", ("to_record (fedmoe", "from_record (fedmoe")),
    ("ours: wire _check_state", ("_check_state",)),
    ("ours: aggregation", ("weighted_average",)),
    ("ours: ledger/recorder", ("ByteLedger", "_record (strategies", "RunRecorder", "write_csv", "append_jsonl")),
    ("ours: expert copies (load/expert_state)", ("load_expert_state", "expert_state (", "reset_expert")),
    ("flwr: linkstate/grid", ("linkstate", "inmemory_grid", "vce_api.py")),
    ("flwr: Message/Record objects", ("flwr/app/", "flwr/common/", "flwr/proto", "serde")),
    ("naive (c): model + tensors built per call", ("_model_and_data", "initial_arrays (_naive")),
    ("ours: other", ("fedmoe_sim/", "clients/", "strategies/", "experiments/", "_naive_client")),
    ("ray/pickle: task submit/return", ("ray/", "cloudpickle", "pickle", "serialization")),
    ("flwr: other", ("flwr/",)),
    ("benchmark (RSS sampler)", ("psutil",)),
]


def categorise(stack: str) -> str:
    """Idle if the leaf frame waits; else the first category with a needle in ANY frame
    (so a LoRA forward under train_local counts as training, not as our code)."""
    leaf = stack.rsplit(";", 1)[-1]
    if "exchange (strategies/_loop.py:51)" in leaf:
        return CATEGORIES[0][0]
    if any(n in leaf for n in IDLE_LEAVES):
        return "idle/wait"
    for name, needles in CATEGORIES[1:]:
        if any(n in stack for n in needles):
            return name
    return "other"


def summarise(raw: Path) -> tuple[int, collections.Counter, collections.Counter]:
    cats: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        cats[categorise(stack)] += n
        leaves[stack.split(";")[-1]] += n
    return total, cats, leaves


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="realistic", choices=sorted(sim_speed.WORKLOADS))
    ap.add_argument("--cohort", type=int, default=200)
    ap.add_argument("--total", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--strategy", default="fedavg")
    ap.add_argument("--duration", type=int, default=15, help="py-spy seconds")
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--out", default="", help="keep raw py-spy files here")
    ap.add_argument("--idle", action="store_true", help="count idle (waiting) samples too")
    args = ap.parse_args()

    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy:
        sys.exit("py-spy not found: .venv/bin/pip install py-spy")
    out = Path(args.out or tempfile.mkdtemp(prefix="profile_sim-"))
    out.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    procs: list[tuple[str, subprocess.Popen]] = []

    def attach() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:   # wait for the actors and the end of round 1 (rounds.jsonl)
            actors = []
            for p in me.children(recursive=True):
                try:
                    if "ClientAppActor" in " ".join(p.cmdline()[:1]):
                        actors.append(p)
                except psutil.Error:
                    pass
            done = list(out.glob("b-*/rounds.jsonl"))
            if actors and done and done[0].read_text().strip():
                break
            time.sleep(0.2)
        targets = [("driver", me.pid)] + [(f"actor{i}", p.pid) for i, p in enumerate(actors)]
        for name, pid in targets:
            cmd = [spy, "record", "--pid", str(pid), "--duration", str(args.duration), "--rate", str(args.rate),
                   "--format", "raw", "--nonblocking", "-o", str(out / f"{name}.txt")]
            if args.idle:
                cmd.insert(2, "--idle")
            procs.append((name, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))

    threading.Thread(target=attach, daemon=True).start()
    rss = sim_speed.TreeRSS()
    with rss:
        cell = (args.workload, args.cohort, args.total)
        res = sim_speed.run_ours([cell], args.strategy, args.rounds, out, rss)
    for _, p in procs:
        p.wait(timeout=60)
    times = res[cell]["times"]
    print(f"{cell}: per-round s {[round(t, 3) for t in times]}; steady median {sim_speed.steady(times):.3f}")
    for name, _ in procs:
        raw = out / f"{name}.txt"
        if not raw.exists():
            print(f"{name}: no profile")
            continue
        total, cats, leaves = summarise(raw)
        print(f"\n{name}: {total} samples ({total / args.rate:.1f} thread-s over {args.duration} s)")
        for cat, n in cats.most_common():
            print(f"  {100 * n / total:5.1f}%  {cat}")
        print("  top leaf frames:")
        for leaf, n in leaves.most_common(8):
            print(f"    {100 * n / total:5.1f}%  {leaf}")
    print(f"\nraw stacks in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
