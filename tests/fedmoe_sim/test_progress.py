"""Progress of a sweep: exact per-round lines in logs, one live display on a terminal."""

import io
import logging
import re
import sys

import pytest
from rich.console import Console

from fedmoe_sim import progress
from fedmoe_sim.progress import SweepProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def clock(monkeypatch):
    """A settable clock for every tracker: `clock.t = 30` is thirty seconds after the start."""
    class Clock:
        t = 0.0

        def __call__(self):
            return self.t

    c = Clock()
    monkeypatch.setattr(progress, "_now", c)
    return c


def _terminal() -> tuple[io.StringIO, Console]:
    buf = io.StringIO()
    return buf, Console(file=buf, force_terminal=True, width=160)


def test_a_log_gets_one_line_per_round_with_the_runs_place_in_the_sweep(clock):
    out = io.StringIO()
    with SweepProgress(["fedavg seed 0", "local seed 0"], done_before=1, stream=out) as sweep:
        run = sweep.run(0, 2)
        run.update(1, "train", 2, 4)                 # a log gets no partial lines
        clock.t = 10
        run.round_done(1, 4, "acc 50.0%")
        clock.t = 20
        run.round_done(2, 4)
        run = sweep.run(1, 4, first_round=3)         # resumed after round 2: its ETA counts round 3 only
        clock.t = 50
        run.round_done(3, 4, "acc 60.0%")
    assert out.getvalue().splitlines() == [
        "[run 2/3 fedavg seed 0, sweep ETA ?] round 1/2 | done: clients 4/4 | elapsed 10s | ETA 10s | acc 50.0%",
        "[run 2/3 fedavg seed 0, sweep ETA ?] round 2/2 | done: clients 4/4 | elapsed 20s | ETA 0s",
        "[run 3/3 local seed 0, sweep ETA 20s] round 3/4 | done: clients 4/4 | elapsed 30s | ETA 30s | acc 60.0%",
    ]


def test_disabled_progress_writes_nothing(clock):
    out = io.StringIO()
    with SweepProgress(["fedavg seed 0"], stream=out, enabled=False) as sweep:
        sweep.run(0, 2).round_done(1, 4)
    assert out.getvalue() == ""


def test_a_terminal_gets_one_live_display_of_the_sweep_and_the_current_run(clock):
    buf, console = _terminal()
    with SweepProgress(["fedavg seed 0", "fedmoe-da[P=1] seed 0"], done_before=2, console=console) as sweep:
        assert sweep.live
        sweep.run(0, 2).round_done(2, 8, "acc 40.0%")     # the first run: 2 rounds in 20 s
        clock.t = 20
        run = sweep.run(1, 10, first_round=5)             # resumed from its round-4 checkpoint
        clock.t = 50
        run.round_done(5, 8, "acc 53.0%")                 # 30 s for the one round run here
        run.update(6, "train", 5, 8)
        shown = ANSI.sub("", _text(console, sweep))
    assert "runs 3/4" in shown and "elapsed 50s" in shown
    assert "[run 4/4] fedmoe-da[P=1] seed 0" in shown
    assert "round 6/10 | train clients 5/8 | elapsed 30s | ETA 2m30s | acc 53.0%" in shown   # 5 rounds x 30 s
    assert "ETA 2m30s" in shown.splitlines()[0]             # the last run: the sweep ends with it
    final = ANSI.sub("", buf.getvalue())                     # what the display itself drew, last frame on stop
    assert "fedmoe-da[P=1] seed 0" in final and "runs 4/4" in final and "train clients 5/8" in final


def _text(console: Console, sweep: SweepProgress) -> str:
    with console.capture() as cap:
        console.print(sweep.render())
    return cap.get()


def test_the_sweep_eta_adds_an_average_run_for_each_run_left(clock):
    buf, console = _terminal()
    with SweepProgress(["a", "b", "c"], console=console) as sweep:
        run = sweep.run(0, 4)
        clock.t = 10
        run.round_done(1, 2)                 # 10 s a round: 30 s left of this run, a 40 s run after it twice
        assert sweep.eta() == pytest.approx(30 + 2 * 40)


def test_log_lines_print_above_the_display_and_the_display_stops_on_an_exception(clock):
    buf, console = _terminal()
    logger = logging.getLogger("test_progress_rehome")
    handler = logging.StreamHandler(sys.stderr)       # made before the display, like basicConfig's
    logger.addHandler(handler)
    saved = sys.stderr
    try:
        with pytest.raises(KeyboardInterrupt):
            with SweepProgress(["fedavg seed 0"], console=console) as sweep:
                sweep.run(0, 3)
                logger.warning("node 3 did not reply")
                raise KeyboardInterrupt
    finally:
        logger.removeHandler(handler)
    assert not sweep._display.is_started
    assert sys.stderr is saved and handler.stream is saved        # the terminal is handed back as it was
    assert "node 3 did not reply" in buf.getvalue()              # drawn by the display's console, not torn through it
