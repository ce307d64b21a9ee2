"""``[[on_log]]`` rules at run time: counting a rule's hits within its window, and the report of a match."""

from __future__ import annotations

from supervisor.config.spec import LogRule
from supervisor.records import dataclass


class RuleWindow:
    """The recent hits of one rule: it fires at ``count`` hits within ``within`` seconds, then starts afresh."""

    __slots__ = ("rule", "hits")

    def __init__(self, rule: LogRule) -> None:
        self.rule = rule
        self.hits: list[float] = []   # not a deque: an empty one is ~0.7 KiB, and every rule of every service has one

    def hit(self, now: float) -> bool:
        """Count a hit at ``now``; whether the rule fires."""
        hits = self.hits
        hits.append(now)
        old = 0
        while now - hits[old] > self.rule.within:   # the last one (now) always stays
            old += 1
        del hits[:old]
        if len(hits) < self.rule.count:
            return False
        hits.clear()
        return True


@dataclass(frozen=True)
class RuleReport:
    """What qasup says when a rule fires: ``text`` on its output (the matched line, the lines before it, the
    rule's advice), ``log_line`` in the service's log, ``summary`` as the service's last error."""

    text: str
    log_line: str
    summary: str

    @classmethod
    def of(cls, service: str, rule: LogRule, line: bytes, before: list[bytes]) -> RuleReport:
        text = line.decode("utf-8", "replace")
        ctx = [b.decode("utf-8", "replace") for b in before[-rule.context:]] if rule.context else []
        head = f"{service}: error rule {rule.match!r} ({rule.action})"
        if rule.count > 1:
            head += f" matched {rule.count} times within {rule.within:g}s"
        body = "".join(f"\n    | {c}" for c in ctx) + f"\n    > {text}"
        advice = f"\n    {rule.message}" if rule.message else ""
        return cls(text=f"{head}:{body}{advice}",
                   log_line=f"error rule {rule.match!r} ({rule.action}) matched: {text}",
                   summary=rule.message or f"matched {rule.match!r}: {text[:200]}")
