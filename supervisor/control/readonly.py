"""The read-only HTTP listener (``qasup up --http HOST:PORT``, ``[stack] http``): the status page and what it
reads, without a token, and nothing that changes anything.

It answers ``GET /`` (the status page, :mod:`supervisor.control.page`), ``GET /metrics``, ``GET /v1/status``,
``GET /v1/events`` and ``GET /v1/services/NAME/logs`` (the page's log view), each exactly as the control API
does (same handlers, same limits: it is served by the same server code with a connection cap, stream budget
and time-outs of its own, so browsers cannot take the control socket's room). Every other request is refused
before any handler runs: a known path asked with another method (``POST /v1/services/web/stop``,
``POST /v1/status``, ``GET /v1/shutdown``) gets 405, anything else 404. There is no route from here to the
controller's start, stop, restart, reload or shutdown, so no request can change state, whatever it carries.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.control.controller import Controller
from supervisor.control.http import Answer, Channel, Limits, Request, allow, check_query
from supervisor.control.metrics import Observed
from supervisor.control.page import page_answer
from supervisor.control.refusals import Refusals
from supervisor.control.routes import Routes

__all__ = ["READ_PATHS", "ReadOnlyRoutes"]

READ_PATHS = ("/", "/metrics", "/v1/status", "/v1/events", "/v1/services/NAME/logs")
_WRITE_ACTIONS = ("start", "stop", "restart")
_READ_ONLY = ("this listener (--http) is read-only: use the qasup CLI on the control socket, or --listen with "
              "a token, to change anything")


def _is_read_path(seg: list[str]) -> bool:
    return (seg in (["metrics"], ["v1", "status"], ["v1", "events"])
            or (len(seg) == 4 and seg[0] == "v1" and seg[1] == "services" and seg[3] == "logs"))


def _is_write_path(seg: list[str]) -> bool:
    return (seg in (["v1", "reload"], ["v1", "shutdown"])
            or (len(seg) == 4 and seg[0] == "v1" and seg[1] == "services" and seg[3] in _WRITE_ACTIONS))


class ReadOnlyRoutes(Routes):
    """The control API's routes restricted to reading, without a token (see the module's docstring)."""

    def __init__(self, controller: Controller, log: Callable[[str], None], limits: Limits,
                 observed: Observed | None = None, refusals: Refusals | None = None) -> None:
        super().__init__(controller, log, limits, None, observed, refusals)

    async def dispatch(self, ch: Channel, request: Request, is_tcp: bool) -> bool:
        return await super().dispatch(ch, request, False)   # no token here: nothing here needs one

    async def _route(self, ch: Channel, req: Request) -> bool:
        seg = req.segments
        if seg == [""]:
            allow(req, "GET")
            check_query(req.query, [])
            body, headers = page_answer()
            await ch.respond(200, body, content_type="text/html; charset=utf-8", headers=headers)
            return True
        if _is_read_path(seg):
            if req.method != "GET":
                raise Answer(405, _READ_ONLY, [("Allow", "GET")])
            return await super()._route(ch, req)
        if _is_write_path(seg):
            raise Answer(405, _READ_ONLY, [("Allow", "")])
        raise Answer(404, f"no such endpoint here (the read-only listener serves GET {', '.join(READ_PATHS)})")
