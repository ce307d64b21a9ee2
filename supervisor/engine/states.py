"""The engine's vocabulary beyond the service states of :mod:`supervisor.protocol`: why an instance is being
stopped, why a service is held (not started again by itself), and what its dependencies allow."""

from __future__ import annotations

import enum

from supervisor.protocol import RUNNING_STATES, ServiceState, StackState

__all__ = ["RUNNING_STATES", "DepVerdict", "Hold", "ServiceState", "StackState", "StopReason"]


class StopReason(enum.StrEnum):
    """Why the running instance of a service is being stopped; decides what happens after its exit."""

    USER = "user"                    # `qasup stop`: stays stopped
    SHUTDOWN = "shutdown"            # the stack is stopping
    RESTART = "restart"              # `qasup restart`: start again at once
    RELOAD = "reload"                # its unit changed on reload (or it was removed)
    DEP_WAIT = "dep-wait"            # something it requires was stopped by a user: wait for it
    DEP_FAIL = "dep-fail"            # something it requires failed: fail too
    RULE_FAIL = "rule-fail"          # an [[on_log]] rule with action "fail" matched
    RULE_RESTART = "rule-restart"    # an [[on_log]] rule with action "restart" matched
    READY_TIMEOUT = "ready-timeout"  # not ready within [ready] timeout
    LIVE_RESTART = "live-restart"    # [live] checks failed `failures` rounds in a row, action "restart"
    LIVE_FAIL = "live-fail"          # the same, action "fail"
    RESTART_WITH = "restart-with"    # a service it names in restart_with has a new instance, ready


# Stops after which the service starts again as soon as what it requires is ready.
RESTARTING = frozenset({StopReason.DEP_WAIT, StopReason.RESTART, StopReason.RELOAD, StopReason.RESTART_WITH})
# Stops a person asked for, or the stack's own: their failures are not the service's last error.
REQUESTED = frozenset({StopReason.USER, StopReason.SHUTDOWN, StopReason.RESTART, StopReason.RELOAD,
                       StopReason.RESTART_WITH})
# Stops after which the service is failed and held (not started again by itself).
FAILING = frozenset({StopReason.RULE_FAIL, StopReason.LIVE_FAIL})
# Stops that restart the service whatever its restart policy says; the restart counts as a failure (back-off,
# max_restarts and give-up apply).
FORCED_RESTARTS = frozenset({StopReason.RULE_RESTART, StopReason.LIVE_RESTART})


class Hold(enum.Enum):
    """Why a service that is not running is not started again by itself."""

    USER = "user"       # stopped by a user: waits for `qasup start`
    FAILED = "failed"   # failed by itself (gave up, policy says no restart, a fail rule)


class DepVerdict(enum.Enum):
    """What a service's dependencies allow now."""

    GO = "ok"        # everything it requires is ready, everything it comes after has settled
    WAIT = "wait"
    FAIL = "fail"    # something it requires failed
