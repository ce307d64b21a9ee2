"""The HTTP readiness probe: a 2xx answer, and the ``expect`` regex in the first 64 KiB of its body when set.

What one try may cost is bounded, whatever the server does:

* **time**: a try has ``max(interval, 2s)`` for everything (connect, request, status line and headers, the
  body prefix); past it the try is abandoned, its connection closed, and the next one follows the usual
  back-off;
* **memory**: the answer is streamed.  Without ``expect`` only the status line and headers are read (h11
  bounds those to 100 KiB) and the connection is closed without reading the body; with ``expect`` at most
  ``BODY_LIMIT`` bytes of the body are read (and at most as many once decompressed, for a server that
  gzips although the probe asks for ``identity``), then the connection is closed.

httpx is imported only when an HTTP probe runs (it costs ~50 ms of start-up).  An ``http://`` URL gets
:class:`~supervisor.readiness.transport.PlainHTTPTransport`, which makes no TLS context and so does not load
OpenSSL (see :mod:`supervisor.lazyssl`); ``https://`` URLs get httpx's default transport and certificate checks.
"""

from __future__ import annotations

import codecs
import contextlib
import zlib
from typing import Any

import anyio

from supervisor.config.patterns import LinePattern, compile_line_pattern
from supervisor.readiness.base import Polled

BODY_LIMIT = 64 * 1024      # body bytes one try reads at most (before and after content decoding)
MIN_TRY_S = 2.0             # a try's time limit is the unit's interval, but never less than this
SEARCH_EVERY = 4096         # search the prefix again once this many characters came since the last search,
SEARCH_PAUSE = 0.05         # or this many seconds passed (a server that trickles cannot make the search quadratic)
_DECODED = ("gzip", "x-gzip", "deflate")
_HEADERS = {"Accept-Encoding": "identity"}


class BodyPrefix:
    """The first ``BODY_LIMIT`` bytes of a body, decoded to text and searched for ``pattern`` as they come (with
    the log patterns' linear-time engine: a pattern built to backtrack cannot stall the daemon on a 64 KiB body;
    ``^ $`` match at every line start and end)."""

    def __init__(self, pattern: LinePattern | str, charset: str = "utf-8", encoding: str = "identity") -> None:
        self.pattern = compile_line_pattern(pattern) if isinstance(pattern, str) else pattern
        self.raw = 0           # body bytes taken, as sent (at most BODY_LIMIT)
        self.size = 0          # bytes after content decoding (at most BODY_LIMIT)
        self.full = False      # a limit was reached: the probe wants no more
        self.text = ""
        self._searched = -1    # len(text) at the last search
        self._last = float("-inf")
        self._unzip = zlib.decompressobj(wbits=47) if encoding in _DECODED else None  # gzip or zlib header
        self._decoder = codecs.getincrementaldecoder(charset)(errors="replace")

    def feed(self, chunk: bytes, now: float) -> bool:
        """Take the next piece of the body; True once the pattern is found."""
        take = chunk[:BODY_LIMIT - self.raw]
        self.raw += len(take)
        data = take
        if self._unzip is not None and take:
            data = self._unzip.decompress(take, BODY_LIMIT - self.size)  # the room left is never 0 here
        self.size += len(data)
        self.text += self._decoder.decode(data)
        self.full = self.raw >= BODY_LIMIT or self.size >= BODY_LIMIT
        if self.full or len(self.text) - self._searched >= SEARCH_EVERY or now - self._last >= SEARCH_PAUSE:
            return self.search(now)
        return False

    def search(self, now: float = 0.0) -> bool:
        self._searched, self._last = len(self.text), now
        return self.pattern.search_text(self.text.encode("utf-8", "surrogateescape"))

    def finish(self) -> bool:
        """The body ended (or the try's time did): search what came, a last time."""
        self.text += self._decoder.decode(b"", final=True)
        return len(self.text) != self._searched and self.search()


class _Try:
    """What one try got so far (kept outside its time limit, so a timed-out try can still be judged)."""

    status: int | None = None
    body: BodyPrefix | None = None


def _charset(response: Any) -> str:
    name = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        return "utf-8"
    return name


def _seconds(s: float) -> str:
    return f"{s:g}s"


class HttpProbe(Polled):
    name = "http"

    def __init__(self, url: str, method: str, expect: str | None, interval: float) -> None:
        super().__init__(interval)
        self.url, self.method = url, method
        # checked at plan time (plan/resolve.py): a pattern the linear-time engine refuses never gets here
        self.expect = compile_line_pattern(expect) if expect else None
        self.expect_source = expect or ""
        self.try_limit = max(interval, MIN_TRY_S)
        self._client: Any = None   # an httpx.AsyncClient, made at the first try (httpx is imported then)

    async def once(self) -> bool:
        import httpx

        if self._client is None:
            # httpx's own timeouts (per operation) only back up the try's limit
            self._client = make_client(httpx, self.url, self.try_limit + 1.0)
        got = _Try()
        try:
            with anyio.fail_after(self.try_limit):
                why = await self._try(got)
        except TimeoutError:
            if got.body is not None and got.body.finish():
                return True
            self.last_error = self._late(got)
            return False
        except httpx.HTTPError as e:
            self.last_error = f"{self.method} {self.url}: {type(e).__name__}: {e or 'no answer'}"
            return False
        self.last_error = why
        return why is None

    async def _try(self, got: _Try) -> str | None:
        """One request; None when it passed, else why not."""
        where = f"{self.method} {self.url}"
        async with self._client.stream(self.method, self.url, headers=_HEADERS) as r:
            got.status = code = r.status_code
            if not 200 <= code < 300:
                return f"{where} answered {code}"
            if self.expect is None:
                return None   # leaving the block closes the connection: the body is never read
            encoding = r.headers.get("content-encoding", "identity").strip().lower() or "identity"
            if encoding != "identity" and encoding not in _DECODED:
                return (f"{where} answered {code} with a body in Content-Encoding {encoding!r}, which the probe "
                        f"cannot decode (it asks for 'identity'); serve it uncompressed")
            body = got.body = BodyPrefix(self.expect, _charset(r), encoding)
            try:
                async with contextlib.aclosing(r.aiter_raw()) as chunks:
                    async for chunk in chunks:
                        if body.feed(chunk, anyio.current_time()):
                            return None
                        if body.full:
                            break
            except zlib.error as e:
                return f"{where} answered {code} with a body that is not valid {encoding}: {e}"
            if body.finish():
                return None
            pattern = self.expect_source
            if body.full:
                return (f"{where} answered {code}, but {pattern!r} was not in the first {BODY_LIMIT // 1024} KiB "
                        f"of its body (the probe reads no further)")
            return f"{where} answered {code} without {pattern!r} in its body ({body.raw} bytes)"

    def _late(self, got: _Try) -> str:
        where, limit = f"{self.method} {self.url}", _seconds(self.try_limit)
        if got.status is None:
            return f"{where}: no status line and headers within {limit} (the probe's time limit per try)"
        if self.expect is None or got.body is None:
            return f"{where} answered {got.status}, but the try did not end within {limit}"
        return (f"{where} answered {got.status}, but {self.expect_source!r} was not in the {got.body.raw} "
                f"bytes of body that came within {limit} (the probe's time limit per try)")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def make_client(httpx: Any, url: str, timeout: float) -> Any:
    """An httpx client for probing ``url``: for ``http://`` one whose transport has no TLS context.

    httpx's default transport builds an ``ssl.SSLContext`` when it is made, whatever the URL; that loads
    OpenSSL to probe ``http://localhost``.  Redirects are not followed, so an ``http://`` client never needs TLS.
    """
    if not url.lower().startswith("http://"):
        return httpx.AsyncClient(timeout=timeout, trust_env=False)
    from supervisor.readiness.transport import PlainHTTPTransport

    return httpx.AsyncClient(timeout=timeout, trust_env=False, transport=PlainHTTPTransport())
