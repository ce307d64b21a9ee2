"""A service's running totals for ``/metrics`` and the status JSON: log bytes written and dropped, error-rule
matches per rule, liveness failures. Counted where the thing happens (the log file, the runner), never sampled;
they live as long as the service (a reload that keeps it keeps them; a restart does not reset them)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from supervisor.logs.rotate import LogCounts

__all__ = ["ServiceCounters", "wall_time"]


class ServiceCounters:
    """The totals of one service. ``log`` is handed to its log files (:class:`~supervisor.logs.rotate.RotatingFile`)."""

    __slots__ = ("log", "rule_matches", "live_failures", "last_exit_code")

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.log = LogCounts()
        self.rule_matches: dict[str, int] = dict.fromkeys(patterns, 0)   # by the rule's pattern (0 until it matches)
        self.live_failures = 0                   # times [live] declared the service failed (threshold reached)
        self.last_exit_code: int | None = None   # kept while the next run goes on (the status's exit_code is not)

    def rule_hit(self, pattern: str) -> None:
        """An ``[[on_log]]`` rule's pattern matched a line (whether or not its count/within made it fire)."""
        self.rule_matches[pattern] = self.rule_matches.get(pattern, 0) + 1

    def exited(self, code: int | None) -> None:
        """A run ended with ``code`` (None: it never started, and the last exit stays what it was)."""
        if code is not None:
            self.last_exit_code = code

    def live_failed(self, before: int, after: int) -> None:
        """A ``LiveFailed`` was handled: the failures in a row went from ``before`` to ``after``; a run of
        failures counts once, when it begins (0 to more)."""
        if before == 0 and after > 0:
            self.live_failures += 1

    def to_json(self) -> dict[str, Any]:
        return {"log_bytes": self.log.written, "log_dropped_bytes": self.log.dropped,
                "rule_matches": dict(self.rule_matches), "live_failures": self.live_failures,
                "last_exit_code": self.last_exit_code}


def wall_time(moment: float, now: float) -> float:
    """``moment`` on the stack's clock (monotonic) as Unix time, given ``now`` on that clock."""
    return round(time.time() - (now - moment), 3)
