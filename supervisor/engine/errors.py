"""The engine's domain errors: what a control request can be refused for. They say nothing of HTTP; the
control server alone maps each kind to a status code."""

from __future__ import annotations


class EngineError(Exception):
    """A control request the engine refuses; the message says why, for a person."""


class UnknownService(EngineError):
    """No service of that name exists (enabled or not)."""


class Conflict(EngineError):
    """The request cannot be carried out in the present state (disabled by the plan, shutting down, the
    service failed to start or stop, ...)."""


class Unavailable(EngineError):
    """The engine was built without what this request needs (a reload without a planner)."""


class Rejected(EngineError):
    """A new configuration or plan was refused; the running one stays."""


class ReloadRejected(Exception):
    """Raised by the planner the daemon hands the engine: the configuration could not be loaded (the message
    says why). The engine answers the reload with :class:`Rejected`."""
