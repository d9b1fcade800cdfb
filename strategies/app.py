"""The ServerApp (`strategies.app:app`) for `flwr run .`, and a factory for our runner.

`flwr run . local --run-config "strategy='local' federation.rounds=3"` goes through
the same validation as the CLI: the experiment named in the run config gives the
base values, and every run-config key that is not "" (pyproject's placeholder for
"the experiment's value") overrides it.
"""

from __future__ import annotations

import logging
from functools import partial

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from experiments.catalogue import build_config
from experiments.registry import get_method
from fedmoe_sim.config import ConfigError, RunConfig
from fedmoe_sim.progress import SweepProgress
from fedmoe_sim.workspace import get_workspace
from strategies._base import check_method
from strategies._loop import run_server, warm_up

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        cfg = config_from_run_config(context.run_config)
        method = get_method(cfg.strategy)
        check_method(method.strategy, cfg, get_workspace(cfg))
    except (ConfigError, ValueError) as exc:
        log.error("bad run config: %s", exc)
        raise SystemExit(2) from None
    # lines, never a live display: Flower forwards this process's output to `flwr log`
    with SweepProgress([f"{cfg.strategy} seed {cfg.seed}"], live=False) as sweep:
        run_server(grid, cfg, method, partial(sweep.run, 0))


def config_from_run_config(run_config: dict) -> RunConfig:
    """Flower's fused run config -> validated RunConfig ("" = the experiment's value)."""
    values = {k: v for k, v in run_config.items() if v != ""}
    return build_config(str(values.pop("experiment", "digits-domains")), values)


def make_server_app(cfgs: list[RunConfig], sweep: SweepProgress | None = None,
                    results: list | None = None) -> ServerApp:
    """A ServerApp that runs already validated configs one after another (the Python runner's path).

    Run i reports to `sweep.run(i, ...)` (None: no progress output); the caller owns the sweep's
    `with`, which outlives this app. Each run's summary is appended to `results`:
    run_simulation itself returns nothing.
    """
    methods = [get_method(cfg.strategy) for cfg in cfgs]
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        warm_up(grid, cfgs[0].federation.round_timeout)
        for i, (cfg, method) in enumerate(zip(cfgs, methods, strict=True)):
            summary = run_server(grid, cfg, method, partial(sweep.run, i) if sweep is not None else None)
            if results is not None:
                results.append(summary)

    return server_app
