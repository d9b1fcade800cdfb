"""Progress lines for long runs: round, clients done, elapsed, ETA.

Written to stderr so that stdout stays for results (tables). On a terminal the
line is redrawn in place; otherwise (CI logs, files) one line per round.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(s: float) -> str:
    if s != s or s == float("inf"):  # nan / inf
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Tracks rounds of one run; `prefix` lets a sweep say which run this is."""

    def __init__(self, total_rounds: int, prefix: str = "", stream: TextIO | None = None, enabled: bool = True,
                 first_round: int = 1) -> None:
        self.total = max(total_rounds, 1)
        self.first = first_round          # a resumed run: the ETA counts only rounds run by this process
        self.prefix = prefix
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.start = time.monotonic()
        self.rounds_done = 0
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def eta(self) -> float:
        elapsed = time.monotonic() - self.start
        ran = self.rounds_done - self.first + 1
        if ran <= 0:
            return float("nan")
        return elapsed / ran * (self.total - self.rounds_done)

    def line(self, server_round: int, phase: str, done: int, asked: int, extra: str = "") -> str:
        elapsed = time.monotonic() - self.start
        parts = [
            f"{self.prefix}round {server_round}/{self.total}",
            f"{phase} clients {done}/{asked}",
            f"elapsed {format_seconds(elapsed)}",
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
