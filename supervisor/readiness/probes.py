"""Readiness checks: a log marker, HTTP, TCP and exec probes, combined with ``mode = "all" | "any"``.

Probes start fast (50 ms) and back off by half again each try up to the unit's ``interval``, so a service that
comes up in 300 ms is seen in about 300 ms, and one that loads a model for minutes is not hammered.
httpx is imported only when an HTTP probe runs (it costs ~50 ms of start-up). A probe of an ``http://`` URL
uses a transport without a TLS context, so that it does not load OpenSSL (see :mod:`supervisor.lazyssl`);
``https://`` URLs get httpx's default transport and certificate checks.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio

from supervisor.plan.resolve import ReadyChecks

FIRST_PAUSE = 0.05
GROWTH = 1.5

ExecRunner = Callable[[Sequence[str], float], Awaitable[int]]


class Probe:
    """One check; ``await probe.wait()`` returns once it passed. ``last_error`` says why it has not."""

    name = "probe"
    last_error: str | None = None
    passed = False

    async def wait(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class LogMarker(Probe):
    """Passes when the log scanner reports the marker (:meth:`hit` is called from the capture path)."""

    name = "log"

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.event = anyio.Event()
        self.last_error = f"no line matching {pattern!r} yet"

    def hit(self) -> None:
        self.event.set()

    async def wait(self) -> None:
        await self.event.wait()


class _Polled(Probe):
    def __init__(self, interval: float) -> None:
        self.interval = max(interval, FIRST_PAUSE)

    async def once(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    async def wait(self) -> None:
        pause = FIRST_PAUSE
        while True:
            try:
                if await self.once():
                    return
            except Exception as e:  # a probe must never kill the engine; report and try again
                self.last_error = f"{type(e).__name__}: {e}"
            await anyio.sleep(pause)
            pause = min(pause * GROWTH, self.interval)


class HttpProbe(_Polled):
    name = "http"

    def __init__(self, url: str, method: str, expect: str | None, interval: float) -> None:
        super().__init__(interval)
        self.url, self.method = url, method
        self.expect = re.compile(expect) if expect else None
        self._client: Any = None   # an httpx.AsyncClient, made at the first try (httpx is imported then)

    async def once(self) -> bool:
        import httpx

        if self._client is None:
            self._client = make_client(httpx, self.url, max(self.interval, 2.0))
        try:
            r = await self._client.request(self.method, self.url)
        except httpx.HTTPError as e:
            self.last_error = f"{self.method} {self.url}: {type(e).__name__}: {e or 'no answer'}"
            return False
        if not 200 <= r.status_code < 300:
            self.last_error = f"{self.method} {self.url} answered {r.status_code}"
            return False
        if self.expect is not None and not self.expect.search(r.text):
            self.last_error = f"{self.method} {self.url} answered without {self.expect.pattern!r}"
            return False
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def make_client(httpx, url: str, timeout: float):
    """An httpx client for probing ``url``: for ``http://`` one whose transport has no TLS context.

    httpx's default transport builds an ``ssl.SSLContext`` (and reads certifi's CA bundle) when it is made,
    whatever the URL; that loads OpenSSL, ~5 MiB of resident memory, to probe ``http://localhost``.  The
    transport here is httpx's own with its connection pool made without a context (httpcore makes one only
    for an ``https://`` connection, and this client never makes one: redirects are not followed).
    """
    if not url.lower().startswith("http://"):
        return httpx.AsyncClient(timeout=timeout, trust_env=False)
    import httpcore

    transport = httpx.AsyncHTTPTransport.__new__(httpx.AsyncHTTPTransport)
    transport._pool = httpcore.AsyncConnectionPool(ssl_context=None, http1=True, http2=False)
    return httpx.AsyncClient(timeout=timeout, trust_env=False, transport=transport)


class TcpProbe(_Polled):
    name = "tcp"

    def __init__(self, host: str, port: int, interval: float) -> None:
        super().__init__(interval)
        self.host, self.port = host, port

    async def once(self) -> bool:
        try:
            with anyio.fail_after(max(self.interval, 1.0)):
                s = await anyio.connect_tcp(self.host, self.port)
        except (OSError, TimeoutError) as e:
            self.last_error = f"tcp {self.host}:{self.port}: {getattr(e, 'strerror', None) or e or 'timed out'}"
            return False
        await s.aclose()
        return True


class ExecProbe(_Polled):
    name = "exec"

    def __init__(self, argv: Sequence[str], run: ExecRunner, interval: float) -> None:
        super().__init__(interval)
        self.argv, self.run = tuple(argv), run

    async def once(self) -> bool:
        code = await self.run(self.argv, max(self.interval, 5.0))
        if code != 0:
            self.last_error = f"{' '.join(self.argv)} exited {code}"
        return code == 0


def build_probes(checks: ReadyChecks, run_exec: ExecRunner) -> tuple[LogMarker | None, list[Probe]]:
    """The probes of a unit's ``[ready]`` table; the log marker (if any) is also returned on its own."""
    probes: list[Probe] = []
    marker = None
    if checks.log:
        marker = LogMarker(checks.log)
        probes.append(marker)
    if checks.http:
        probes.append(HttpProbe(checks.http.url, checks.http.method, checks.http.expect, checks.interval))
    if checks.tcp:
        probes.append(TcpProbe(checks.tcp[0], checks.tcp[1], checks.interval))
    if checks.exec:
        probes.append(ExecProbe(checks.exec, run_exec, checks.interval))
    return marker, probes


async def wait_ready(probes: Sequence[Probe], mode: str) -> None:
    """Return when all probes (``mode="all"``) or any one (``"any"``) passed. No probes: at once."""
    if not probes:
        return
    try:
        if mode == "any":
            async with anyio.create_task_group() as tg:
                async def one(p: Probe) -> None:
                    await p.wait()
                    p.passed = True
                    tg.cancel_scope.cancel()

                for p in probes:
                    tg.start_soon(one, p)
        else:
            async with anyio.create_task_group() as tg:
                async def each(p: Probe) -> None:
                    await p.wait()
                    p.passed = True

                for p in probes:
                    tg.start_soon(each, p)
    finally:
        with anyio.CancelScope(shield=True):
            for p in probes:
                if isinstance(p, HttpProbe):
                    await p.aclose()


def why_not_ready(probes: Sequence[Probe]) -> str:
    return "; ".join(p.last_error for p in probes if p.last_error and not p.passed) or "not ready"
