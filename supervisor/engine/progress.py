"""Progress while the stack starts, and qasup's own sd_notify messages to whoever started it.

While a service is still starting, ``qasup up`` says, every :data:`PERIOD` seconds and at a state change (at
most once per :data:`MIN_GAP`, and never in the first second), what it still waits for::

    [qasup] waiting: triton-llm 45s/300s: no line matching 'Started HTTPService' yet; sanic: waiting for triton-llm (starting)

A starting service shows how long it has been starting against its ``[ready] timeout`` and its probes' own
words (:func:`~supervisor.readiness.probes.why_not_ready`); a waiting one what it waits for. The same text is
the ``waiting_on`` field of the status JSON. Once nothing starts the reporter waits for a state change only: no
timer runs in a ready stack.

The same task tells a service manager above qasup (``NOTIFY_SOCKET``, see :mod:`supervisor.proc.notify`):
``STATUS=N/M services ready`` at each change of that count, ``READY=1`` once the stack is ready, ``STOPPING=1``
when the shutdown begins (sent by the engine itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

import anyio

from supervisor.engine.states import DepVerdict, ServiceState, StackState

if TYPE_CHECKING:
    from supervisor.engine.service import Service

S = ServiceState
PERIOD = 10.0    # seconds between two lines while something starts
MIN_GAP = 1.0    # at most one line a second (state changes come in bursts)
STARTING = (S.PREPARING, S.STARTING)

__all__ = ["MIN_GAP", "PERIOD", "pending", "report", "waiting_on"]


class Engine(Protocol):
    """What progress asks of the engine (:class:`supervisor.engine.engine.Engine`)."""

    shutting_down: bool
    ready_once: bool
    clock: Callable[[], float]

    @property
    def changed(self) -> anyio.Event: ...
    def enabled_services(self) -> list[Service]: ...
    def deps_verdict(self, name: str) -> tuple[DepVerdict, str]: ...
    def stack_state(self) -> StackState: ...
    def say(self, text: str) -> None: ...


def _seconds(value: float) -> str:
    return f"{value:.0f}s" if value >= 10 or value == int(value) else f"{value:.1f}s"


def waiting_on(engine: Engine, svc: Service) -> str | None:
    """What a starting or waiting service waits on, in words (``None`` for any other state)."""
    state = svc.state
    if svc.removed or svc.hold is not None and state == S.WAITING:
        return None
    if state == S.WAITING and svc.inst is None:
        _, why = engine.deps_verdict(svc.name)
        return why or None
    inst = svc.inst
    if state not in STARTING or inst is None:
        return None
    now = engine.clock()
    if state == S.PREPARING:
        prep = svc.spec.prepare
        limit = f"/{_seconds(prep.timeout)}" if prep is not None else ""
        return f"{_seconds(now - svc.state_since)}{limit}: prepare still running"
    since = inst.spawned_at if inst.spawned_at is not None else svc.state_since
    reason: str | None = None
    probe = getattr(svc.host, "waiting_on", None)   # the real host knows its probes; a fake one may not
    if callable(probe):
        reason = probe(inst)
    return f"{_seconds(now - since)}/{_seconds(svc.unit.ready.timeout)}: {reason or 'not ready yet'}"


def pending(engine: Engine) -> list[Service]:
    """The services worth a progress line now (empty once the stack is up, or stopping)."""
    if engine.shutting_down:
        return []
    svcs = [s for s in engine.enabled_services()
            if s.state in STARTING or (s.state == S.WAITING and s.hold is None and s.inst is None)]
    if any(s.state in STARTING for s in svcs) or (svcs and not engine.ready_once):
        return svcs
    return []


LINE_SERVICES = 12
"""At most this many services named in one progress line; the rest are counted (``and 988 more``)."""


def line(engine: Engine, svcs: Iterable[Service]) -> str:
    parts: list[str] = []
    more = 0
    for s in svcs:
        if len(parts) >= LINE_SERVICES:
            more += 1
            continue
        why = waiting_on(engine, s)
        if why is None:
            continue
        parts.append(f"{s.name} {why}" if s.state in STARTING else f"{s.name}: {why}")
    if more:
        parts.append(f"and {more} more (qasup status)")
    return "waiting: " + "; ".join(parts)


async def report(engine: Engine, notify: Callable[[str], object] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
    """Run for the engine's life: progress lines while something starts, sd_notify STATUS/READY to ``notify``."""
    last = monotonic()            # the first line no sooner than a second after the start
    told: tuple[int, int] | None = None
    ready_told = False
    while True:
        ev = engine.changed
        if notify is not None and not engine.shutting_down:
            svcs = engine.enabled_services()
            counts = (sum(1 for s in svcs if s.state == S.READY), len(svcs))
            if counts != told:
                told = counts
                notify(f"STATUS={counts[0]}/{counts[1]} services ready")
            if not ready_told and engine.stack_state() == StackState.READY:
                ready_told = True
                notify("READY=1")
        svcs = pending(engine)
        if not svcs:
            await ev.wait()       # nothing starts: no timer at all
            continue
        gap = last + MIN_GAP - monotonic()
        if gap > 0:
            await anyio.sleep(gap)
            continue              # look again: it may be ready by now
        text = line(engine, svcs)
        if text != "waiting: ":
            engine.say(text)
        last = monotonic()
        with anyio.move_on_after(PERIOD):
            await ev.wait()
