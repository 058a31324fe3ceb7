"""The listener's HTTP/1.1 protocol: uvicorn's httptools protocol with the bounds a gateway
exposed to a network needs and uvicorn lacks, and the TLS handshake done here so that it is
bounded too and the client certificate reaches the app.

- at most `max_connections` open connections; one more is answered 503 and closed at once
  (over TLS: closed before the handshake, which would cost more than refusing);
- a connection's TLS handshake and each request's head must arrive within
  `header_timeout_s` (slowloris, and connections that never send a byte), its body within
  `body_timeout_s` of the head; an idle kept-alive connection is closed after `keep_alive_s`;
- a head over `max_header_bytes` is answered 431 (httptools itself buffers any size);
- over TLS, `scope["extensions"]["tls"]` as the ASGI TLS extension describes it, plus
  `client_cert_common_name`, `client_cert_sans` and `client_cert_fingerprint`, which
  `security.client_cert.client_certificate` reads.

uvicorn's own `limit_concurrency` does not do this: it answers 503 only once a request's head
has arrived, so connections that send nothing are held without limit."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from meshgate.config.settings import MeshSettings
from meshgate.errors import HeadersTooLarge, MeshgateError, RequestTimeout, TooManyConnections

log = logging.getLogger("meshgate.api.listener")

# How long a refused connection is kept to let the client read its 503 (closing at once
# would make the kernel answer the request it sends meanwhile with a reset).
_REFUSED_LINGER_S = 1.0

# Closing a TLS connection waits for the peer's close_notify; a peer that never sends it
# must not hold the connection for asyncio's default of 30 s.
_TLS_SHUTDOWN_S = 2.0

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

# RFC 4514 short names of the attributes Python's getpeercert() spells out.
_RDN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


@dataclass(frozen=True)
class ListenerBounds:
    """What one connection may take of the gateway."""

    max_connections: int = 1000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_header_bytes: int = 32 * 1024

    @classmethod
    def of(cls, mesh: MeshSettings) -> ListenerBounds:
        return cls(
            mesh.max_connections,
            mesh.header_timeout_s,
            mesh.body_timeout_s,
            mesh.keep_alive_s,
            mesh.max_header_bytes,
        )


def protocol_class(bounds: ListenerBounds, tls: ssl.SSLContext | None) -> type[BoundedHttpProtocol]:
    """The protocol class to pass as uvicorn's `http=`, bound to one listener's bounds, TLS
    context and count of open connections."""
    return type(
        "BoundedHttpProtocol",
        (BoundedHttpProtocol,),
        {"bounds": bounds, "tls_context": tls, "open_connections": set()},
    )


def _problem_bytes(err: MeshgateError) -> bytes:
    """A complete HTTP/1.1 response carrying `err` as problem+json, closing the connection;
    for answers the listener gives itself, outside any app."""
    body = json.dumps(err.to_problem()).encode()
    head = [
        f"HTTP/1.1 {err.status} {err.title}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if err.retry_after is not None:
        head.append(f"retry-after: {max(1, round(err.retry_after))}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _problem_app(err: MeshgateError) -> Callable[..., Any]:
    """An ASGI app answering every request with `err` and closing the connection."""
    body = json.dumps(err.to_problem()).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": err.status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def _rfc4514(subject: Any) -> str:
    def escape(v: str) -> str:
        out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in v)
        if out.startswith(("#", " ")):
            out = "\\" + out
        return out[:-1] + "\\ " if out.endswith(" ") else out

    rdns = ["+".join(f"{_RDN_NAMES.get(k, k)}={escape(v)}" for k, v in rdn) for rdn in subject]
    return ",".join(reversed(rdns))  # RFC 4514: the most specific RDN first


def tls_extension(ssl_object: ssl.SSLObject) -> dict[str, Any]:
    """The `tls` scope extension of a connection whose handshake is done."""
    ext: dict[str, Any] = {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,  # Python names the cipher, not its IANA number
    }
    der = ssl_object.getpeercert(binary_form=True)
    info: dict[str, Any] = dict(ssl_object.getpeercert() or {})
    if der and info:  # a certificate was sent and verified against tls_client_ca
        subject: tuple[tuple[tuple[str, str], ...], ...] = info.get("subject", ())
        ext["client_cert_chain"] = [ssl.DER_cert_to_PEM_cert(der)]
        ext["client_cert_name"] = _rfc4514(subject)
        ext["client_cert_common_name"] = next(
            (v for rdn in subject for k, v in rdn if k == "commonName"), None
        )
        ext["client_cert_sans"] = [f"{k}:{v}" for k, v in info.get("subjectAltName", ())]
        ext["client_cert_fingerprint"] = hashlib.sha256(der).hexdigest()
    return ext


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # what uvicorn writes before a request's body


class HeldHead:
    """The transport a request's cycle writes through: its response head is held until the
    body's first bytes and written with them, or at the end of the event loop's turn if none
    come in it. uvicorn writes the head and the body apart: two sends and two segments for
    every response, each a wake-up for the client too (8 of the 71 us a minimal gateway
    spends per call, measured with wrk at concurrency 16)."""

    __slots__ = ("held", "seen", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        # (Not the cycle itself: the two would make a reference cycle, garbage for the
        # collector to find, on every request.)
        self.transport = transport
        self.held: bytes | None = None
        self.seen = False

    def write(self, data: bytes) -> None:
        if self.held is not None:
            data, self.held = self.held + data, None
        elif not self.seen and data != CONTINUE:  # a cycle's first write is its head
            self.seen = True
            self.held = data
            asyncio.get_running_loop().call_soon(self.flush)
            return
        self.transport.write(data)

    def flush(self) -> None:
        if self.held is not None:
            data, self.held = self.held, None
            if not self.transport.is_closing():
                self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class BoundedHttpProtocol(HttpToolsProtocol):
    """One client connection (see the module's docstring); made by `protocol_class`."""

    bounds: ClassVar[ListenerBounds]
    tls_context: ClassVar[ssl.SSLContext | None]
    open_connections: ClassVar[set[BoundedHttpProtocol]]
    refused: ClassVar[int] = 0
    refused_logged: ClassVar[float] = float("-inf")

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn's keep-alive timer takes any number of seconds; its annotation says int.
        self.timeout_keep_alive = cast(int, self.bounds.keep_alive_s)
        self._raw: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._early = b""  # decrypted bytes that came before the handshake task resumed
        self._raw_early = b""  # TLS bytes read before the TLS protocol took the transport
        self._head_started = False
        self._head_bytes = 0
        self._tls: dict[str, Any] | None = None

    # Connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        self._raw = raw
        if len(self.open_connections) >= self.bounds.max_connections:
            self._refuse(raw)
            return
        self.open_connections.add(self)
        if self.tls_context is None:
            self._start(raw)
            return
        raw.pause_reading()  # the handshake reads, not the HTTP parser
        self.connections.add(self)  # so that a shutdown closes it mid-handshake too
        self.loop.create_task(self._handshake(raw, self.tls_context))
        # uvloop starts reading after connection_made whatever it said, so the ClientHello may
        # come here before the task's first step hands the transport to the TLS protocol. The
        # task's first step runs in the next round of callbacks and schedules the TLS
        # protocol's connection_made and resume_reading; this callback, in the same round after
        # it, schedules the replay after those two, before the loop reads again.
        self.loop.call_soon(self.loop.call_soon, self._replay, raw)

    async def _handshake(self, raw: asyncio.Transport, ctx: ssl.SSLContext) -> None:
        if raw.is_closing():  # closed (a shutdown, the peer) before this task ran
            self._forget()
            return
        try:
            transport = await self.loop.start_tls(
                raw,
                self,
                ctx,
                server_side=True,
                ssl_handshake_timeout=self.bounds.header_timeout_s,
                ssl_shutdown_timeout=_TLS_SHUTDOWN_S,
            )
        except Exception as e:  # whatever ended it, the connection goes, and its count with it
            log.debug("TLS handshake with %s failed: %s", raw.get_extra_info("peername"), e)
            raw.abort()
            self._forget()
            return
        if transport is None or transport.is_closing():
            self._forget()
            return
        ssl_object = transport.get_extra_info("ssl_object")
        self._tls = tls_extension(ssl_object)
        self._start(transport)

    def _replay(self, raw: asyncio.Transport) -> None:
        data, self._raw_early = self._raw_early, b""
        tls = raw.get_protocol()
        if not data or tls is self or raw.is_closing():
            return
        if isinstance(tls, asyncio.BufferedProtocol) or hasattr(tls, "get_buffer"):
            proto = cast(asyncio.BufferedProtocol, tls)
            view = memoryview(data)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                proto.buffer_updated(n)
                view = view[n:]
        else:
            cast(asyncio.Protocol, tls).data_received(data)

    def _start(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm(self.bounds.header_timeout_s, self._head_timeout)
        if self._early:
            data, self._early = self._early, b""
            self.data_received(data)

    def _refuse(self, raw: asyncio.Transport) -> None:
        """Answer 503 at once: beyond the bound no request of this connection is read."""
        self._refused = True
        refused = type(self).refused = type(self).refused + 1
        now = self.loop.time()
        if now - type(self).refused_logged >= 1.0:  # a flood: a line a second, not one each
            type(self).refused_logged = now
            log.warning(
                "refused %d connection(s) so far, the last from %s: %d connections open "
                "(max_connections)",
                refused,
                raw.get_extra_info("peername"),
                len(self.open_connections),
            )
        if self.tls_context is not None:
            raw.abort()
            return
        raw.write(
            _problem_bytes(
                TooManyConnections(
                    f"the gateway holds {self.bounds.max_connections} connections, its limit"
                )
            )
        )
        if raw.can_write_eof():
            raw.write_eof()
        self._timer = self.loop.call_later(_REFUSED_LINGER_S, raw.abort)

    def _forget(self) -> None:
        self._cancel_timer()
        self.open_connections.discard(self)
        self.connections.discard(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self.transport is None:  # refused, or lost before the TLS handshake ended
            return
        super().connection_lost(exc)

    def shutdown(self) -> None:
        if self.transport is None:
            if self._raw is not None:
                self._raw.abort()
            return
        super().shutdown()

    def eof_received(self) -> None:
        if self._refused and self._raw is not None:
            self._raw.abort()  # the client has read the 503 and is gone

    # Timers

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _head_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._head_started:  # not a byte of a request: nobody waits for an answer
            self.transport.abort()
            return
        self._answer_and_close(
            RequestTimeout(
                f"the request's head did not arrive within {self.bounds.header_timeout_s:g} s"
            )
        )

    def _body_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the app has not read what came: not the client's delay
            self._arm(self.bounds.body_timeout_s, self._body_timeout)
            return
        cycle = self.cycle
        if cycle.response_started:
            self.transport.abort()
            return
        self._answer_and_close(
            RequestTimeout(
                f"the request's body did not arrive within {self.bounds.body_timeout_s:g} s"
            )
        )

    def _answer_and_close(self, err: MeshgateError) -> None:
        """Answer with `err` in place of the app: the app, if it runs, sees a disconnect."""
        log.info("%s: %s", self.client, err.detail)
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:  # an answer is on its way: no room for another
                self.transport.abort()
                return
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(_problem_bytes(err))
        self.transport.close()

    # Parser

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read only so that the client's request does not make the kernel reset
        if self.transport is None:
            if self._raw is not None and self._raw.get_protocol() is self:
                self._raw_early += data  # TLS bytes: see connection_made
            else:
                self._early += data  # decrypted: the handshake is done, its task not resumed
            return
        if self._timer is None and self._idle():  # bytes between requests: a head is due
            self._arm(self.bounds.header_timeout_s, self._head_timeout)
        self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._head_started
            and self._head_bytes > self.bounds.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._answer_and_close(self._too_large())

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"the request's head is larger than {self.bounds.max_header_bytes} bytes"
        )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_started = True
        self._head_bytes = 0
        if self._tls is not None:
            # Each request its own copy: an app may change its scope.
            self.scope["extensions"] = {"tls": cast(dict[object, object], dict(self._tls))}
        if self._timer is None and self._idle():
            self._arm(self.bounds.header_timeout_s, self._head_timeout)

    def on_headers_complete(self) -> None:
        self._head_started = False
        self._cancel_timer()
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        if size > self.bounds.max_header_bytes:
            app, self.app = self.app, _problem_app(self._too_large())
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # a new request's cycle
            cycle.transport = cast(asyncio.Transport, HeldHead(self.transport))
        self._arm(self.bounds.body_timeout_s, self._body_timeout)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()
