"""A JSON-RPC connection to one stdio MCP process: many requests in flight, one pipe.

Requests get connection-local integer ids (the caller's own ids never reach the process),
responses are matched back by id, and notifications and the server's own requests are handed
to callbacks. The process's stdout is parsed in `pipe_data_received`, without a reader task,
which keeps the per-message cost to one JSON parse and one future resolution.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable
from typing import TypeVar, cast

from meshgate.wire import jsonrpc
from meshgate.wire.connection import (
    ConnectionLost,
    NotificationHandler,
    RequestHandler,
    ResponseTooLarge,
    outgoing_params,
)
from meshgate.wire.jsonrpc import JSON, JsonRpcError

log = logging.getLogger("meshgate.upstream.stdio")

H = TypeVar("H")

_FRAGMENT = 256
_EXIT_DRAIN_S = 0.2


class StdioConnection(asyncio.SubprocessProtocol):
    """Protocol for one MCP server process; `spawn()` in `upstream.process` builds it."""

    def __init__(
        self,
        *,
        label: str,
        max_line_bytes: int,
        stderr_lines: int,
        on_notification: NotificationHandler | None = None,
        on_request: RequestHandler | None = None,
    ) -> None:
        self.label = label
        self.max_line_bytes = max_line_bytes
        self.stderr: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self.on_notification = on_notification
        self.on_request = on_request
        self.handshake = False  # set once `initialize` succeeded: no stateless envelope
        self.meta: JSON | None = None  # per-request `_meta` for stateless-era servers
        self.garbage_lines = 0
        self.exit_code: int | None = None
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[int | None] = loop.create_future()  # no more messages
        self.exited: asyncio.Future[int | None] = loop.create_future()  # process reaped
        self._transport: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._pending: dict[int, asyncio.Future[JSON]] = {}
        self._progress: dict[int, NotificationHandler] = {}
        self._internal: set[int] = set()  # the gateway's own requests (health probes)
        self._askers: dict[int, RequestHandler] = {}  # who answers requests from the server
        self._next_id = 0
        self._buf = bytearray()
        self._out: list[bytes] = []  # messages written in this turn of the loop, not yet sent
        self._overflow_head: bytes | None = None
        self._err_buf = bytearray()
        self._tasks: set[asyncio.Task[None]] = set()
        self._can_write = asyncio.Event()
        self._can_write.set()

    # -- asyncio.SubprocessProtocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's: no isinstance checks here.
        self._transport = cast(asyncio.SubprocessTransport, transport)
        self._stdin = cast(asyncio.WriteTransport, self._transport.get_pipe_transport(0))

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self._feed_stdout(data)
        else:
            self._feed_stderr(data)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def process_exited(self) -> None:
        if self._transport is not None:
            self.exit_code = self._transport.get_returncode()
        if not self.exited.done():
            self.exited.set_result(self.exit_code)
        # Output may still be in the pipes; connection_lost follows once they are drained. A
        # grandchild that holds stdout open must not keep the instance half-alive, though: the
        # supervisor kills the process group on `exited` (the pipe then closes at once), and
        # this timer covers a holder outside the group.
        asyncio.get_running_loop().call_later(_EXIT_DRAIN_S, self._finish)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        # stdout closing means the process died (or broke the protocol): stop routing to it
        # now rather than when it is reaped.
        if fd == 1:
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.closed.done():
            return
        if self.exit_code is None and self._transport is not None:
            self.exit_code = self._transport.get_returncode()
        self._flush_stderr()
        self._fail_pending(
            f"process exited with code {self.exit_code}"
            if self.exit_code is not None
            else "process closed its stdout"
        )
        for task in self._tasks:
            task.cancel()
        self.closed.set_result(self.exit_code)

    # -- reading ------------------------------------------------------------------------------

    def _feed_stdout(self, data: bytes) -> None:
        start = 0
        while (nl := data.find(b"\n", start)) >= 0:
            piece = data[start:nl]
            start = nl + 1
            if self._overflow_head is not None:
                self._finish_overflow(bytes(self._buf[-_FRAGMENT:]) + piece[-_FRAGMENT:])
                continue
            if self._buf:
                self._buf += piece
                piece = bytes(self._buf)
                self._buf.clear()
            if len(piece) > self.max_line_bytes:
                self._overflow_head = piece[:_FRAGMENT]
                self._finish_overflow(piece[-_FRAGMENT:])
            else:
                self._handle_line(piece)
        rest = data[start:]
        if not rest:
            return
        if self._overflow_head is not None:
            # Keep only a tail: enough to find the id of an over-long response.
            self._buf = bytearray((bytes(self._buf) + rest)[-_FRAGMENT:])
            return
        self._buf += rest
        if len(self._buf) > self.max_line_bytes:
            self._overflow_head = bytes(self._buf[:_FRAGMENT])
            self._buf = bytearray(self._buf[-_FRAGMENT:])

    def _finish_overflow(self, tail: bytes) -> None:
        head = self._overflow_head or b""
        self._overflow_head = None
        self._buf.clear()
        self.garbage_lines += 1
        id_ = jsonrpc.sniff_id(tail) if b'"id"' in tail else jsonrpc.sniff_id(head)
        log.warning(
            "%s: dropped a line over %d bytes (id %r)", self.label, self.max_line_bytes, id_
        )
        fut = self._pending.pop(id_, None) if isinstance(id_, int) else None
        if fut is not None and not fut.done():
            fut.set_exception(ResponseTooLarge(f"response larger than {self.max_line_bytes} bytes"))

    def _handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        msg = jsonrpc.decode(line)
        if msg is None:
            self.garbage_lines += 1
            n = self.garbage_lines
            if n <= 10 or n & (n - 1) == 0:  # the first ten, then at powers of two
                log.warning(
                    "%s: ignored a stdout line that is not JSON-RPC (%d so far): %.200r",
                    self.label,
                    n,
                    line,
                )
            return
        method = msg.get("method")
        if method is None:
            self._handle_response(msg)
        elif "id" in msg:
            # Asked while one request is in flight: its caller answers (it may ask its client).
            handler = self._attributed(self._askers) or self.on_request
            self._spawn(self._answer(msg, handler))
        else:
            self._handle_notification(method, msg.get("params") or {})

    def _handle_response(self, msg: JSON) -> None:
        id_ = msg.get("id")
        fut = self._pending.pop(id_, None) if isinstance(id_, int) else None
        if fut is None:
            log.debug("%s: response to unknown or finished request %r", self.label, id_)
            return
        self._progress.pop(id_, None)  # type: ignore[arg-type]
        if fut.done():
            return
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            fut.set_exception(
                JsonRpcError(
                    int(err.get("code", jsonrpc.INTERNAL_ERROR)),
                    str(err.get("message", "error")),
                    err.get("data"),
                )
            )
        elif isinstance(msg.get("result"), dict):
            fut.set_result(msg["result"])
        else:
            fut.set_exception(JsonRpcError(jsonrpc.INTERNAL_ERROR, "response without a result"))

    def _handle_notification(self, method: str, params: JSON) -> None:
        if method == "notifications/progress":
            token = params.get("progressToken")
            handler = self._progress.get(token) if isinstance(token, int) else None
            if handler is not None:
                handler(method, params)
            return
        if method == "notifications/message":
            # Log messages name no request either: they go to the one request in flight.
            handler = self._attributed(self._progress)
            if handler is not None:
                handler(method, params)
        if self.on_notification is not None:
            self.on_notification(method, params)

    def _attributed(self, handlers: dict[int, H]) -> H | None:
        """The handler of the one request in flight (health probes aside), if it has one.

        A stdio server names no request in what it sends on its own (log messages, requests to
        the client): only while a single request is in flight is it known whose they are.
        Requests parked until their client answers a question (`waiting`) do not count.
        """
        calls = [
            i
            for i in self._pending
            if i not in self._internal and not getattr(self._askers.get(i), "waiting", False)
        ]
        return handlers.get(calls[0]) if len(calls) == 1 else None

    async def _answer(self, msg: JSON, handler: RequestHandler | None) -> None:
        method, id_ = msg["method"], msg["id"]
        try:
            if handler is None:
                raise JsonRpcError(jsonrpc.METHOD_NOT_FOUND, f"{method} is not supported")
            reply = jsonrpc.result(id_, await handler(method, msg.get("params") or {}))
        except JsonRpcError as e:
            reply = jsonrpc.error(id_, e.code, e.message, e.data)
        except Exception as e:  # a failing handler must still answer the server
            log.exception("%s: answering %s failed", self.label, method)
            reply = jsonrpc.error(id_, jsonrpc.INTERNAL_ERROR, f"{method} failed: {e}")
        self._write(reply)

    def _feed_stderr(self, data: bytes) -> None:
        self._err_buf += data
        while (nl := self._err_buf.find(b"\n")) >= 0:
            self._stderr_line(bytes(self._err_buf[:nl]))
            del self._err_buf[: nl + 1]
        if len(self._err_buf) > 8192:
            self._stderr_line(bytes(self._err_buf))
            self._err_buf.clear()

    def _flush_stderr(self) -> None:
        if self._err_buf:
            self._stderr_line(bytes(self._err_buf))
            self._err_buf.clear()

    def _stderr_line(self, raw: bytes) -> None:
        line = raw.decode(errors="replace").rstrip()
        if line:
            self.stderr.append(line)
            log.info("%s stderr: %s", self.label, line)

    # -- writing ------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return (
            self.exit_code is None
            and not self.closed.done()
            and self._stdin is not None
            and not self._stdin.is_closing()
        )

    def _write(self, msg: JSON) -> bool:
        if not self.alive:
            return False
        # Messages written in one turn of the event loop go out in one write at its end:
        # calls arriving together (concurrent clients) cost the pipe one system call and the
        # server one wake-up.
        self._out.append(jsonrpc.encode(msg))
        if len(self._out) == 1:
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(out[0] if len(out) == 1 else b"".join(out))

    def notify(self, method: str, params: JSON | None = None) -> None:
        """Send a notification; a dead process drops it."""
        self._write(jsonrpc.notification(method, params))

    async def request(
        self,
        method: str,
        params: JSON | None = None,
        *,
        timeout: float,
        on_progress: NotificationHandler | None = None,
        on_server_request: RequestHandler | None = None,
        internal: bool = False,
    ) -> JSON:
        """Send a request and wait for its result.

        Raises JsonRpcError (the server answered with an error), ConnectionLost, ResponseTooLarge
        or TimeoutError. On timeout or cancellation the server is sent `notifications/cancelled`.
        """
        if not self.alive:
            raise ConnectionLost(f"{self.label} is not running", sent=False)
        if not self._can_write.is_set():
            async with asyncio.timeout(timeout):
                await self._can_write.wait()
        self._next_id += 1
        id_ = self._next_id
        params = outgoing_params(self, params, id_ if on_progress is not None else None)
        if on_progress is not None:
            self._progress[id_] = on_progress
        fut: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self._pending[id_] = fut
        if internal:
            self._internal.add(id_)
        if on_server_request is not None:
            self._askers[id_] = on_server_request
        if not self._write(jsonrpc.request(id_, method, params)):
            self._pending.pop(id_, None)
            raise ConnectionLost(f"{self.label} is not running", sent=False)
        # A timer that fails the future, not `asyncio.timeout` (which cancels the task and
        # takes the cancellation back): a third of the cost, on every call.
        timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
        try:
            return await fut
        except (TimeoutError, asyncio.CancelledError):
            if self._pending.pop(id_, None) is not None:
                reason = "deadline exceeded" if not fut.cancelled() else "caller went away"
                self.notify("notifications/cancelled", {"requestId": id_, "reason": reason})
            raise
        finally:
            timer.cancel()
            self._progress.pop(id_, None)
            self._internal.discard(id_)
            self._askers.pop(id_, None)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._transport.get_pid() if self._transport is not None else None

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(f"{self.label}: {reason}", sent=True))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: answering a server request failed", self.label, exc_info=task.exception()
            )

    def close_stdin(self) -> None:
        if self._stdin is not None and not self._stdin.is_closing():
            self._flush()
            self._stdin.close()

    @property
    def pending(self) -> int:
        return len(self._pending)


def _expire(fut: asyncio.Future[JSON]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
