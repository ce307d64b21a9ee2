"""How a stack's run ended, as one exit code and one last line: the only place that decides ``qasup up``'s
exit status (interface.md's table, the README's exit codes).

In order of precedence: an abort (an error rule, a give-up with ``on_give_up = "abort"``, a failed start-up
step) is 1; a second interrupt, which kills everything at once, is 130 (the shell convention for SIGINT); a
shutdown in which some service had to be SIGKILLed (it outlived its ``[stop] timeout``, or the stack's
``stop_budget`` ran out) is 5; a clean stop is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

from supervisor.protocol import Exit
from supervisor.records import dataclass

__all__ = ["Outcome", "outcome"]


@dataclass(frozen=True)
class Outcome:
    code: int
    line: str      # said on qasup's stdout as its last line, and recorded in events.jsonl


def outcome(abort_reason: str | None, interrupted: bool, forced: Sequence[str]) -> Outcome:
    if abort_reason is not None:
        return Outcome(Exit.FAILED, f"stack stopped: aborted ({abort_reason}); exit {int(Exit.FAILED)}")
    if interrupted:
        return Outcome(Exit.INTERRUPTED, "stack stopped: killed at once by a second interrupt; "
                                         f"exit {int(Exit.INTERRUPTED)}")
    if forced:
        names = ", ".join(forced)
        return Outcome(Exit.KILLED, f"stack stopped: {names} had to be killed (SIGKILL) after "
                                    f"{'its' if len(forced) == 1 else 'their'} stop timeout or the stop budget; "
                                    f"exit {int(Exit.KILLED)}")
    return Outcome(Exit.OK, "stack stopped cleanly; exit 0")
