"""Progress of long runs and sweeps: round, clients done, elapsed, ETA.

Written to stderr so that stdout stays for results (tables). On a terminal a
sweep gets one live display (rich), redrawn in place: the sweep (runs done,
elapsed, ETA) above the current run (round, phase and clients, elapsed, ETA,
last accuracy). Elsewhere (CI logs, files) one plain line per round, prefixed
with the run's place in the sweep, so logs stay greppable and diffable.

Threads: Flower's `run_simulation` runs the ServerApp, and with it every
`update`, in a thread of its own, while rich redraws from its refresh thread.
Updates only assign plain attributes and the display reads them when it draws,
so the round loop never waits on the terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console, RenderableType
from rich.file_proxy import FileProxy
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

_now = time.monotonic     # the one clock of this module; tests replace it to get exact lines
REFRESH_PER_SECOND = 4    # redraws of the live display: enough for a round counter, cheap for the server thread


def format_seconds(s: float) -> str:
    if s != s or s == float("inf"):  # nan / inf
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _isatty(stream: TextIO) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


class Progress:
    """Tracks rounds of one run; `prefix` lets a sweep say which run this is."""

    def __init__(self, total_rounds: int, prefix: str = "", stream: TextIO | None = None, enabled: bool = True,
                 first_round: int = 1) -> None:
        self.total = max(total_rounds, 1)
        self.first = first_round          # a resumed run: the ETA counts only rounds run by this process
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = _now()
        self.rounds_done = first_round - 1
        self._tty = _isatty(self.stream)

    def elapsed(self) -> float:
        return _now() - self.start

    def eta(self) -> float:
        ran = self.rounds_done - self.first + 1
        if ran <= 0:
            return float("nan")
        return self.elapsed() / ran * (self.total - self.rounds_done)

    def line(self, server_round: int, phase: str, done: int, asked: int, extra: str = "") -> str:
        parts = [
            f"{self.prefix}round {server_round}/{self.total}",
            f"{phase} clients {done}/{asked}",
            f"elapsed {format_seconds(self.elapsed())}",
            f"ETA {format_seconds(self.eta())}",
        ]
        if extra:
            parts.append(extra)
        return " | ".join(parts)

    def update(self, server_round: int, phase: str, done: int, asked: int) -> None:
        if self.enabled and self._tty:
            self.stream.write("\r" + self.line(server_round, phase, done, asked) + "\033[K")
            self.stream.flush()

    def round_done(self, server_round: int, asked: int, extra: str = "") -> None:
        self.rounds_done = server_round
        if self.enabled:
            end = "\n"
            text = self.line(server_round, "done:", asked, asked, extra)
            self.stream.write(("\r" + text + "\033[K" if self._tty else text) + end)
            self.stream.flush()


class _LiveRun(Progress):
    """One run as the sweep's live display shows it: calls only record state; the display draws it."""

    def __init__(self, total_rounds: int, first_round: int, label: str) -> None:
        super().__init__(total_rounds, enabled=False, first_round=first_round)
        self.label = label
        self.round, self.phase, self.done, self.asked, self.extra = first_round, "", 0, 0, ""
        self.finished_at: float | None = None

    def update(self, server_round: int, phase: str, done: int, asked: int) -> None:
        self.round, self.phase, self.done, self.asked = server_round, phase, done, asked

    def round_done(self, server_round: int, asked: int, extra: str = "") -> None:
        self.rounds_done = server_round
        self.round, self.phase, self.done, self.asked = server_round, "done:", asked, asked
        self.extra = extra or self.extra
        if server_round >= self.total:
            self.finished_at = _now()

    def status(self) -> str:
        if not self.asked:    # nothing pushed yet: the round is being configured (or the model built)
            return f"round {self.round}/{self.total} | starting | elapsed {format_seconds(self.elapsed())}"
        return self.line(self.round, self.phase, self.done, self.asked, self.extra)


class SweepProgress:
    """Progress of a sweep: `labels` are the runs still to do, in order (e.g. "fedmoe-da[P=1] seed 0");
    `done_before` runs of the sweep were complete before this process started (they count as done).

    `live`: None = a live display exactly when the stream is a terminal. Use as a context manager:
    the display runs inside the `with` and is stopped on the way out, exceptions and Ctrl-C
    included, so the terminal is left clean. `console` replaces the stream's own rich console
    (a forced terminal in tests). Without a live display `run(i, ...)` gives one line per round,
    prefixed `[run k/N label, sweep ETA x] `.
    """

    def __init__(self, labels: Sequence[str], done_before: int = 0, stream: TextIO | None = None,
                 enabled: bool = True, live: bool | None = None, console: Console | None = None) -> None:
        self.labels = list(labels)
        self.done_before = done_before
        self.total = done_before + len(self.labels)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.console = console or Console(file=self.stream, force_terminal=True if live else None)
        auto = self.console.is_terminal and not self.console.is_dumb_terminal   # TERM=dumb: no cursor moves
        self.live = enabled and (auto if live is None else live)
        self.start = _now()
        self.index = 0                         # the current run, counted in `labels`
        self.current: _LiveRun | None = None
        self._durations: list[float] = []      # of runs finished here: the sweep ETA's estimate per run
        self._complete = False
        self._display: Live | None = None
        self._rehomed: list[tuple[logging.StreamHandler, TextIO]] = []

    # -- per run -----------------------------------------------------------
    def prefix(self, i: int) -> str:
        """Run i's line prefix; the sweep ETA extrapolates the runs finished so far (fixed for the run)."""
        eta = (_now() - self.start) / i * (len(self.labels) - i) if i else float("nan")
        return f"[run {self.done_before + i + 1}/{self.total} {self.labels[i]}, sweep ETA {format_seconds(eta)}] "

    def run(self, i: int, total_rounds: int, first_round: int = 1) -> Progress:
        """The tracker of run i (an index into `labels`); `first_round` > 1 for a resumed run."""
        if not self.enabled:
            return Progress(total_rounds, enabled=False, first_round=first_round)
        if not self.live:
            return Progress(total_rounds, prefix=self.prefix(i), stream=self.stream, first_round=first_round)
        if self.current is not None:
            self._durations.append((self.current.finished_at or _now()) - self.current.start)
        self.index, self.current = i, _LiveRun(total_rounds, first_round, self.labels[i])
        return self.current

    # -- the sweep ---------------------------------------------------------
    def runs_done(self) -> int:
        if self._complete:
            return self.total
        finished = self.current is not None and self.current.finished_at is not None
        return self.done_before + self.index + int(finished)

    def eta(self) -> float:
        """Seconds left: the current run's own ETA, then an average run for each run after it."""
        run = self.current
        if self._complete:
            return 0.0
        if run is None:
            return float("nan")
        left_after = len(self.labels) - self.index - 1
        this = 0.0 if run.finished_at is not None else run.eta()
        if this != this:                       # no round finished yet: an average run minus its elapsed
            if not self._durations:
                return float("nan")
            per_run = sum(self._durations) / len(self._durations)
            return max(per_run - run.elapsed(), 0.0) + per_run * left_after
        per_run = (sum(self._durations) + run.elapsed() + this) / (len(self._durations) + 1)
        return this + per_run * left_after

    def render(self) -> RenderableType:
        """The live display: a bar and a line for the sweep, then for the current run; a narrow
        terminal wraps the lines, never cuts them (labels like "fedmoe-da[P=1] seed 0" are Text,
        not markup, for their brackets)."""
        grid = Table.grid(padding=(0, 1))
        grid.add_column(width=20, no_wrap=True)
        grid.add_column()
        done = self.runs_done()
        grid.add_row(ProgressBar(total=max(self.total, 1), completed=done, width=20),
                     Text(f"sweep: runs {done}/{self.total} | elapsed {format_seconds(_now() - self.start)} | "
                          f"ETA {format_seconds(self.eta())}"))
        run = self.current
        if run is not None:
            grid.add_row(ProgressBar(total=run.total, completed=run.rounds_done, width=20),
                         Text(f"[run {self.done_before + self.index + 1}/{self.total}] {run.label}: {run.status()}"))
        return grid

    def __enter__(self) -> SweepProgress:
        if self.live:
            # stdout is taken over only when it shares the terminal: `compare > table.md` keeps its file
            self._display = Live(console=self.console, get_renderable=self.render,
                                 refresh_per_second=REFRESH_PER_SECOND,
                                 redirect_stdout=_isatty(sys.stdout), redirect_stderr=True)
            self._display.start()
            self._rehome_log_handlers()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._display is None:
            return
        self._complete = exc_type is None    # the caller's runs all returned: the last frame says so
        try:
            for handler, stream in self._rehomed:
                handler.setStream(stream)
            self._rehomed = []
        finally:
            self._display.stop()

    def _rehome_log_handlers(self) -> None:
        """Logging handlers made before the display (basicConfig's, Flower's) hold the real
        stderr/stdout, and their lines would tear the display: while it runs, send them through
        rich's proxies (sys.stderr/stdout now), which print above the display instead."""
        proxied = {id(s.rich_proxied_file): s for s in (sys.stdout, sys.stderr) if isinstance(s, FileProxy)}
        if not proxied:
            return
        known = list(logging.Logger.manager.loggerDict.values())   # one C-level copy: other threads add loggers
        loggers = [logging.getLogger()] + [lg for lg in known if isinstance(lg, logging.Logger)]
        for handler in {h for lg in loggers for h in lg.handlers}:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                proxy = proxied.get(id(handler.stream))
                if proxy is not None:
                    self._rehomed.append((handler, handler.setStream(proxy)))
