"""What the control server asks of the engine (the :class:`Controller` protocol), and the one place where
the engine's refusals become HTTP status codes.

The engine raises its domain errors (``supervisor.engine.errors``) and knows nothing of HTTP; the server
answers each kind with the status :func:`refusal_status` gives it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from supervisor.engine.errors import Conflict, EngineError, Rejected, Unavailable, UnknownService

if TYPE_CHECKING:
    from supervisor.protocol import StatusPayload

__all__ = ["REFUSALS", "Controller", "refusal_message", "refusal_status"]


class Controller(Protocol):
    """What the engine offers the API. Only ``EngineError`` should escape
    these methods; anything else is answered as an internal error (500)."""

    def status(self, names: Sequence[str] = ()) -> StatusPayload:
        """The status JSON of interface.md, restricted to ``names`` when given (all services otherwise)."""

    def has_service(self, name: str) -> bool:
        """Whether a service (unit) of this name exists, enabled or not."""

    async def start(self, name: str) -> dict[str, Any]:
        """Start a service; raises UnknownService or Conflict."""

    async def stop(self, name: str) -> dict[str, Any]:
        """Stop a service; raises UnknownService or Conflict."""

    async def restart(self, name: str, with_dependents: bool = False) -> dict[str, Any]:
        """Restart a service (and, with ``with_dependents``, what requires it)."""

    def log_path(self, name: str) -> Path:
        """The service's current log file."""

    def subscribe_events(self) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        """Each state transition, as a dict, from the moment the context is entered."""

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration: ``{"changed": [...], ...}``; Rejected or Unavailable when it cannot."""

    async def shutdown(self) -> None:
        """Begin the ordered shutdown and return at once."""


REFUSALS = (EngineError,)
"""What a Controller raises to refuse a request (rather than fail)."""

_STATUS_OF: tuple[tuple[type[EngineError], int], ...] = (
    (UnknownService, 404),
    (Conflict, 409),
    (Unavailable, 400),
    (Rejected, 400),
)


def refusal_status(exc: EngineError) -> int:
    """The HTTP status that answers a refusal: 404 unknown service, 409 conflict, 400 unavailable or
    rejected, 409 for any other engine error."""
    for kind, status in _STATUS_OF:
        if isinstance(exc, kind):
            return status
    return 409


def refusal_message(exc: EngineError) -> str:
    """The ``error`` text of the answer to a refusal."""
    return str(exc)
