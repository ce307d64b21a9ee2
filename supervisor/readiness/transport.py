"""An httpx transport for ``http://`` URLs that never makes a TLS context.

httpx's :class:`httpx.AsyncHTTPTransport` builds an ``ssl.SSLContext`` (and reads certifi's CA bundle) when it
is made, whatever the URL it will be used for; that loads OpenSSL, ~5 MiB of resident memory, to probe
``http://localhost`` (see :mod:`supervisor.lazyssl`).  :class:`PlainHTTPTransport` is a public
:class:`httpx.AsyncBaseTransport` that drives an :class:`httpcore.AsyncConnectionPool` made with
``ssl_context=None`` through httpcore's public API, HTTP/1.1 only, and refuses any scheme but ``http``
(so httpcore never has a reason to make a default context).  httpcore's exceptions come out as httpx's
(``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``, ...), so ``except httpx.HTTPError`` holds for
requests through it as for httpx's own transport.

This module imports httpx and httpcore: import it only where an HTTP probe runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import httpcore
import httpx

# most specific first: the first entry an exception is an instance of names the httpx class raised
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def httpx_error(exc: Exception, request: httpx.Request | None = None) -> httpx.TransportError | None:
    """The httpx exception for an httpcore one (None for anything else)."""
    for core, mapped in _EXCEPTIONS:
        if isinstance(exc, core):
            err = mapped(str(exc))
            if request is not None:
                err.request = request
            return err
    return None


@contextlib.contextmanager
def _mapped(request: httpx.Request | None) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        err = httpx_error(exc, request)
        if err is None:
            raise
        raise err from exc


class _ResponseStream(httpx.AsyncByteStream):
    """httpcore's response body as httpx wants it, its errors mapped; closing it closes the response."""

    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            with _mapped(self._request):
                await close()


class PlainHTTPTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over plain TCP, with a connection pool that has no TLS context."""

    def __init__(self) -> None:
        self._pool = httpcore.AsyncConnectionPool(ssl_context=None, http1=True, http2=False)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(
                f"{request.url.scheme!r} URL given to a transport for http:// only", request=request)
        assert isinstance(request.stream, AsyncIterable)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped(request):
            resp = await self._pool.handle_async_request(req)
        assert isinstance(resp.stream, AsyncIterable)
        return httpx.Response(status_code=resp.status, headers=resp.headers,
                              stream=_ResponseStream(resp.stream, request), extensions=resp.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()
