"""The HTTP client of the mesh: keep-alive connections to HTTP service instances, for calls
through the router (`/call/{service}/...`) and for HTTP health checks.

It is aiohttp's, not httpx's. Measured on one event loop (uvloop) against a trivial uvicorn
backend on loopback, GET with a streamed response, requests/s of the client at concurrency 1 and
16: httpx 0.28 832 and 655, httpcore 1.0 used directly 1539 and 772, aiohttp 3.14 5094 and
10 783. httpx falls as concurrency rises because httpcore's pool walks every connection (a
`poll()` of each idle socket) and every queued request on each request and each response end,
and it spends a quarter of its time failing to import `sniffio` (which the anyio installed
with it no longer requires) in `current_async_library()`, several times per request: a failed
import is not cached, so each one searches `sys.path` again. aiohttp's connector
keeps idle connections in a deque and parses in C. Behind the proxy, `bench/bench_proxy.py`
has the numbers end to end.

The client is a proxy's: it adds no headers the caller did not send (no User-Agent, Accept,
Accept-Encoding or Content-Type of its own), keeps no cookies between calls, decompresses
nothing (bodies pass as they are) and never follows redirects. Errors come out as three
kinds the router can tell apart: `Unreachable` (no connection: the request was not sent),
`ServiceTimeout` and `ServiceBroken` (the exchange failed after the request may have been sent).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence

import aiohttp
from yarl import URL

# Response heads up to 64 KiB a line (aiohttp's default, 8 KiB, is stricter than most servers).
_MAX_HEAD_LINE = 64 * 1024
_NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


class Unreachable(Exception):
    """No connection to the instance could be made: the request never left."""


class ServiceTimeout(TimeoutError):
    """The instance took longer than the deadline to connect, answer or send the next bytes."""


class ServiceBroken(Exception):
    """The exchange failed once the request may have reached the instance (connection reset,
    closed early, or not HTTP)."""


def _mapped(e: Exception) -> Exception:
    if isinstance(e, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError):
        return Unreachable(str(e) or type(e).__name__)
    if isinstance(e, TimeoutError):
        return ServiceTimeout(str(e) or "timed out")
    return ServiceBroken(f"{type(e).__name__}: {e}".rstrip(": "))


class ServiceResponse:
    """An instance's answer with its head read and its body still to come; `close` it."""

    __slots__ = ("_content", "_response", "raw_headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._content = response.content
        self.status_code = response.status
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = response.raw_headers

    @property
    def arrived(self) -> bool:
        """The whole body is in (reading it will not wait)."""
        return self._content.is_eof()

    async def read_chunk(self) -> bytes:
        """The next bytes of the body as they arrived (b"" at its end)."""
        try:
            return await self._content.readany()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _mapped(e) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read_chunk():
            yield chunk

    def close(self) -> None:
        """Done with it: the connection goes back to the pool if the body was read to its end,
        and is closed otherwise."""
        self._response.release()


class ServiceClient:
    """Pooled keep-alive connections to every instance, shared by calls and checks."""

    def __init__(
        self,
        *,
        max_connections: int = 1000,
        keepalive_s: float = 15.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.keepalive_s = keepalive_s
        self.tls = tls  # https services: the gateway's CA bundle and client certificate
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # Made on first use: aiohttp binds a session to the running loop.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.max_connections,
                keepalive_timeout=self.keepalive_s,
                ttl_dns_cache=10,
                ssl=self.tls if self.tls is not None else True,
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NOT_ADDED,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
            max_line_size=_MAX_HEAD_LINE,
            max_field_size=_MAX_HEAD_LINE,
        )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes | AsyncIterator[bytes] = b"",
        timeout: float,
    ) -> ServiceResponse:
        """Send one request and return once the answer's head is in. `timeout` bounds the
        connect and each wait for bytes (as httpx's did), not the whole exchange: a long
        stream that keeps sending is not cut off."""
        session = self._session or self._open()
        limit = aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
        try:
            response = await session.request(
                method,
                # As the caller wrote it: escapes kept (yarl would decode `%2e`, for one).
                URL(url, encoded=True),
                headers=headers,
                data=body or None,
                timeout=limit,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _mapped(e) from None
        return ServiceResponse(response)

    async def status(self, url: str, *, timeout: float) -> int:
        """GET `url`, read and drop the body, return the status (a health check)."""
        response = await self.request("GET", url, timeout=timeout)
        try:
            async for _ in response.chunks():
                pass
        finally:
            response.close()
        return response.status_code

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
