"""The control API's endpoints: authorization, routing, and one handler per endpoint.

Each handler validates what it is given (method, query, body, service names) before the controller sees
it, calls the :class:`~supervisor.control.controller.Controller`, and answers through the connection's
:class:`~supervisor.control.http.Channel`. A controller's refusal becomes its HTTP status here, any other
controller failure a 500, so that neither ever costs more than one answer. Every request ends with an
answer: a service action the controller has not finished within ``Limits.action_deadline`` gets a 504 (the
action itself may go on), and the streamed answers queue at most ``Limits.stream_buffer_bytes`` for a slow
reader, which then skips ahead and is told so (:mod:`supervisor.control.streams`)::

    GET  /v1/status[?names=a,b][&plan=1]            plan=1 adds "plan": the plan's facts (the status page's)
    GET  /v1/status?format=table[&names=a,b][&all=1][&colour=1][&columns=N]
                                                     the `qasup status` table as text/plain, and the header
                                                     X-Qasup-Not-Ready: N (enabled services not ready)
    GET  /metrics                                    the Prometheus text format (supervisor.control.metrics)
    POST /v1/services/NAME/start | stop | restart[?with_dependents=1]   (or body {"with_dependents": true})
    GET  /v1/services/NAME/logs?n=100&follow=1       text/plain; with follow=1 streamed (chunked)
                                                     (409 for an external service: no log here)
    GET  /v1/events                                  application/x-ndjson, one JSON object a line, streamed
    POST /v1/reload
    POST /v1/shutdown
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import h11

from supervisor.control.controller import REFUSALS, Controller, refusal_message, refusal_status
from supervisor.control.http import (
    Answer,
    Channel,
    Limits,
    Request,
    allow,
    check_query,
    encode_json,
    json_object_body,
    parse_bool,
    parse_target,
)
from supervisor.control.metrics import CONTENT_TYPE as METRICS_TYPE
from supervisor.control.metrics import Observed, render_metrics
from supervisor.control.refusals import Refusals
from supervisor.control.streams import StreamBuffer, StreamPool
from supervisor.control.table import not_ready, render_status
from supervisor.protocol import NAME_RE, mask_status

__all__ = ["Routes"]

_SERVICE_ACTIONS = ("start", "stop", "restart")
_PIECE = 64 * 1024  # the most a streamed answer writes at once (bounds what a stalled write holds)
_T = TypeVar("_T")


class Routes:
    """Answers requests for one server: holds the controller, the token and the count of open streams."""

    def __init__(self, controller: Controller, log: Callable[[str], None], limits: Limits, token: str | None,
                 observed: Observed | None = None, refusals: Refusals | None = None) -> None:
        self.controller = controller
        self.refusals = refusals if refusals is not None else Refusals()
        self.observed = observed or Observed()
        self.log = log
        self.limits = limits
        self._token = token.encode("utf-8") if token else None
        self._streams = 0
        self._pool = StreamPool(limits.streams_buffer_bytes)

    async def dispatch(self, ch: Channel, request: Request, is_tcp: bool) -> bool:
        """Answer one request; returns whether the connection may serve another."""
        target = request.target
        try:
            if is_tcp and not self._authorized(request.headers.get(b"authorization")):
                raise Answer(401, "missing or wrong bearer token", [("WWW-Authenticate", 'Bearer realm="qasup"')])
            request.segments, request.query = parse_target(target)
            return await self._route(ch, request)
        except Answer as answer:
            if answer.status >= 500:
                self.log(f"api: {ch.peer}: {request.method} {target[:200]!r}: {answer.message}")
            elif answer.status in (400, 401):
                self.log(f"api: {ch.peer}: {answer.status} for {request.method} {target[:200]!r}: {answer.message}")
            await ch.respond_json(answer.status, {"error": answer.message}, headers=answer.headers)
            return True

    def _authorized(self, header: bytes | None) -> bool:
        if self._token is None or header is None:
            return False
        scheme, _, credentials = header.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        import hmac  # here, not at the top: hmac loads OpenSSL (~3 MiB resident) for every daemon

        return hmac.compare_digest(credentials.strip(), self._token)

    async def _route(self, ch: Channel, req: Request) -> bool:
        seg = req.segments
        if seg == ["metrics"]:
            allow(req, "GET")
            return await self._metrics(ch, req)
        if len(seg) == 2 and seg[0] == "v1":
            if seg[1] == "status":
                allow(req, "GET")
                return await self._status(ch, req)
            if seg[1] == "events":
                allow(req, "GET")
                return await self._events(ch, req)
            if seg[1] == "reload":
                allow(req, "POST")
                return await self._reload(ch, req)
            if seg[1] == "shutdown":
                allow(req, "POST")
                return await self._shutdown(ch, req)
        if len(seg) == 4 and seg[0] == "v1" and seg[1] == "services":
            if seg[3] in _SERVICE_ACTIONS:
                allow(req, "POST")
                return await self._service_action(ch, req, self._known_name(seg[2]), seg[3])
            if seg[3] == "logs":
                allow(req, "GET")
                return await self._logs(ch, req, self._known_name(seg[2]))
        raise Answer(404, "no such endpoint")

    def _known_name(self, name: str) -> str:
        if not NAME_RE.fullmatch(name):
            raise Answer(400, f"invalid service name {name[:80]!r}: names match {NAME_RE.pattern}")
        if not self._call_sync(self.controller.has_service, name):
            raise Answer(404, f"unknown service {name!r}")
        return name

    # ----------------------------------------------------------------- endpoints

    async def _status(self, ch: Channel, req: Request) -> bool:
        check_query(req.query, ["names", "plan", "format", "all", "colour", "columns"])
        names = [n for n in req.query.get("names", "").split(",") if n]
        with_plan = parse_bool(req.query.get("plan", "0"), "plan")
        form = req.query.get("format", "json")
        if form not in ("json", "table"):
            raise Answer(400, f"format must be json or table, got {form[:40]!r}")
        if form == "json" and any(k in req.query for k in ("all", "colour", "columns")):
            raise Answer(400, "all, colour and columns go with format=table")
        for name in names:
            self._known_name(name)
        payload: dict[str, Any] = dict(self._call_sync(self.controller.status, names))
        if form == "table":   # what `qasup status` prints: it then parses no JSON (~3 ms of its start)
            columns = req.query.get("columns", "")
            if columns and not (columns.isdigit() and 0 < int(columns) <= 100_000):
                raise Answer(400, f"columns must be a positive number of characters, got {columns[:40]!r}")
            masked = mask_status(payload)
            colour = parse_bool(req.query.get("colour", "0"), "colour")
            show_disabled = parse_bool(req.query.get("all", "0"), "all") or bool(names)
            text = self._call_sync(partial(render_status, colour=colour, width=int(columns) if columns else None,
                                           show_disabled=show_disabled), masked)
            await ch.respond(200, text.encode("utf-8") + b"\n", "text/plain; charset=utf-8",
                             headers=[("X-Qasup-Not-Ready", str(not_ready(masked)))])
            return True
        if with_plan:
            payload["plan"] = self._call_sync(self.observed.plan)
        await ch.respond_json(200, mask_status(payload), masked=True)
        return True

    async def _metrics(self, ch: Channel, req: Request) -> bool:
        check_query(req.query, [])
        status = self._call_sync(self.controller.status, ())
        text = self._call_sync(render_metrics, status, self.observed)
        await ch.respond(200, text.encode("utf-8"), content_type=METRICS_TYPE)
        return True

    async def _service_action(self, ch: Channel, req: Request, name: str, action: str) -> bool:
        allowed = ["with_dependents"] if action == "restart" else []
        check_query(req.query, allowed)
        body = json_object_body(req.body, allowed)
        deadline = self.limits.action_deadline
        with anyio.move_on_after(deadline) as scope:
            if action == "restart":
                with_dependents = parse_bool(req.query.get("with_dependents", "0"), "with_dependents")
                from_body = body.get("with_dependents", False)
                if not isinstance(from_body, bool):
                    raise Answer(400, "with_dependents must be true or false")
                result = await self._call(self.controller.restart, name, with_dependents or from_body)
            elif action == "start":
                result = await self._call(self.controller.start, name)
            else:
                result = await self._call(self.controller.stop, name)
        if scope.cancelled_caught:
            raise Answer(504, f"{action} {name}: no answer within {deadline:g}s, the control API's limit for an "
                              f"action; it may still be under way: see `qasup status {name}`")
        await ch.respond_json(200, result)
        return True

    async def _reload(self, ch: Channel, req: Request) -> bool:
        check_query(req.query, [])
        json_object_body(req.body, [])
        result = await self._call(self.controller.reload)
        await ch.respond_json(200, result)
        return True

    async def _shutdown(self, ch: Channel, req: Request) -> bool:
        check_query(req.query, [])
        json_object_body(req.body, [])
        await self._call(self.controller.shutdown)
        self.log(f"api: shutdown requested by {ch.peer}")
        # The controller may cancel this server soon; make sure the client hears the answer.
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            await ch.respond_json(202, {"shutting_down": True}, close=True)
        return False

    async def _logs(self, ch: Channel, req: Request, name: str) -> bool:
        check_query(req.query, ["n", "follow"])
        raw_n = req.query.get("n", "100")
        if not raw_n.isdigit() or int(raw_n) > self.limits.max_log_lines:
            raise Answer(400, f"n must be a whole number from 0 to {self.limits.max_log_lines}, got {raw_n[:40]!r}")
        n = int(raw_n)
        follow = parse_bool(req.query.get("follow", "0"), "follow")
        row = self._call_sync(self.controller.status, [name])["services"][0]
        if row.get("external"):   # it runs elsewhere: its log is where it runs (409, as a refusal of the engine)
            raise Answer(409, f"{name} is external: it runs on another machine, and qasup here only probes it "
                              f"(no process, no log file); read its log where it runs")
        path = Path(self._call_sync(self.controller.log_path, name))
        if not follow:
            from supervisor.logs.tail import tail_lines  # imported here: only this endpoint needs it

            try:
                tail = await anyio.to_thread.run_sync(tail_lines, path, n) if n else b""
            except OSError as exc:
                raise Answer(500, f"cannot read the log of {name}: {exc.strerror or exc}") from None
            await ch.respond(200, tail, content_type="text/plain; charset=utf-8")
            return True
        self._take_stream_slot()
        try:
            return await self._follow_log(ch, name, path, n)
        finally:
            self._streams -= 1

    def _take_stream_slot(self) -> None:
        if self._streams >= self.limits.max_streams:
            self.refusals.add("stream_limit")
            raise Answer(503, f"too many streaming clients (at most {self.limits.max_streams}); try again")
        if not self._pool.room(self.limits.stream_buffer_bytes):
            self.refusals.add("stream_limit")
            raise Answer(503, f"the streams to slow readers already hold {self._pool.held} bytes (at most "
                              f"{self._pool.cap}); try again")
        self._streams += 1

    def _buffer(self, marker: Callable[[int, int], bytes]) -> StreamBuffer:
        return StreamBuffer(self._pool, self.limits.stream_buffer_bytes, marker)

    async def _pump(self, ch: Channel, buffer: StreamBuffer, scope: anyio.CancelScope) -> None:
        """Write what ``buffer`` queues to the client, a piece at a time (each within the send time-out);
        cancel ``scope`` once it is finished and empty."""
        while piece := await buffer.take(_PIECE):
            await ch.send(h11.Data(data=piece))
            buffer.release(len(piece))
        scope.cancel()

    def _budget_text(self) -> str:
        return f"{self.limits.stream_buffer_bytes // 1024} KiB"

    async def _follow_log(self, ch: Channel, name: str, path: Path, n: int) -> bool:
        from supervisor.logs.follow import follow  # imported here: only this endpoint needs it

        def marker(skipped: int, _pieces: int) -> bytes:
            return (f"[qasup] skipped {skipped} bytes of {name}'s log here: this reader fell more than "
                    f"{self._budget_text()} behind (the log file still has them)\n").encode()

        buffer = self._buffer(marker)
        await ch.start_stream("text/plain; charset=utf-8")
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ch.drain_until_eof, tg.cancel_scope)
                tg.start_soon(self._pump, ch, buffer, tg.cancel_scope)
                # initial_lines: the last n lines, then what follows, with no gap or overlap.
                await follow(path, buffer.put, from_end=True, initial_lines=n)
                tg.cancel_scope.cancel()
        finally:
            buffer.close()
            await ch.end_stream()
            if buffer.skipped_total:
                self.log(f"api: {ch.peer}: log follower of {name} read too slowly; skipped {buffer.skipped_total} "
                         f"bytes")
        return False

    async def _events(self, ch: Channel, req: Request) -> bool:
        check_query(req.query, [])
        self._take_stream_slot()
        try:
            return await self._stream_events(ch)
        finally:
            self._streams -= 1

    async def _stream_events(self, ch: Channel) -> bool:
        def marker(skipped: int, pieces: int) -> bytes:
            return encode_json({"ts": round(time.time(), 6), "skipped_events": pieces, "skipped_bytes": skipped,
                                "message": f"this reader fell more than {self._budget_text()} behind: {pieces} "
                                           "events skipped here (events.jsonl has them all, /v1/status the "
                                           "current state)"})

        buffer = self._buffer(marker)
        async with self.controller.subscribe_events() as events:
            await ch.start_stream("application/x-ndjson")
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ch.drain_until_eof, tg.cancel_scope)
                    tg.start_soon(self._pump, ch, buffer, tg.cancel_scope)
                    async for event in events:
                        buffer.put(encode_json(event))
                    buffer.finish()  # the pump sends what is queued, then ends the stream
            finally:
                buffer.close()
                await ch.end_stream()
                if buffer.skipped_total:
                    self.log(f"api: {ch.peer}: events reader read too slowly; skipped {buffer.skipped_total} bytes")
        return False

    # ----------------------------------------------------------------- controller calls

    async def _call(self, func: Callable[..., Awaitable[_T]], *args: Any) -> _T:
        try:
            return await func(*args)
        except REFUSALS as exc:
            raise Answer(refusal_status(exc), refusal_message(exc)) from None
        except Exception as exc:  # noqa: BLE001 - an engine bug must not take the API down
            raise Answer(500, f"internal error: {type(exc).__name__}: {exc}") from None

    def _call_sync(self, func: Callable[..., _T], *args: Any) -> _T:
        try:
            return func(*args)
        except REFUSALS as exc:
            raise Answer(refusal_status(exc), refusal_message(exc)) from None
        except Exception as exc:  # noqa: BLE001
            raise Answer(500, f"internal error: {type(exc).__name__}: {exc}") from None
