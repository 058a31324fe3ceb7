"""Multi round-trip requests (2026-07-28 `input_required`) for servers that ask mid-call.

A handshake-era server asks its client questions (`sampling/createMessage`,
`elicitation/create`, `roots/list`) as JSON-RPC requests in the middle of a call. A stateless
client cannot receive requests; it gets an `input_required` result instead, carrying the
questions and an opaque `requestState`, and retries its request with `inputResponses`.

The gateway keeps the upstream call running in between: a `Parked` call holds the questions the
server is waiting on. `requestState` names the parked call and is signed (HMAC-SHA256 with a key
made at start-up), so a tampered, expired or foreign state is refused. A parked call nobody
comes back to is cancelled after `ttl_s` (the server gets `notifications/cancelled` and an error
for its questions).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Container
from typing import Any

from meshgate.wire.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    JSON,
    REQUEST_CANCELLED,
    JsonRpcError,
)

log = logging.getLogger("meshgate.input_required")

_KEY = secrets.token_bytes(32)  # signs request states; made anew at each start
WRAPPED_PREFIX = "u."


def _signature(text: str) -> str:
    digest = hmac.new(_KEY, text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def wrap_state(instance_id: str, state: Any) -> str:
    """A stateless server's `requestState`, wrapped to name (and sign) the instance whose call
    it continues."""
    body = base64.urlsafe_b64encode(json.dumps([instance_id, state]).encode()).decode()
    return f"{WRAPPED_PREFIX}{body}.{_signature(body)}"


def unwrap_state(token: str) -> tuple[str, str | None] | None:
    """(instance id, the server's own state) of a wrapped state, or None if it was altered."""
    body, _, sig = token.removeprefix(WRAPPED_PREFIX).rpartition(".")
    if not body or not hmac.compare_digest(sig, _signature(body)):
        return None
    try:
        instance_id, state = json.loads(base64.urlsafe_b64decode(body.encode()))
    except (ValueError, TypeError):
        return None
    if not isinstance(instance_id, str) or not (state is None or isinstance(state, str)):
        return None
    return instance_id, state


INPUT_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})
INPUT_KEY = "dev.meshgate/inputKey"
SETTLE_S = 0.005  # questions asked together are sent together
_KEY_PREFIX = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation"}


def name_question(method: str, params: JSON, taken: Container[str], n: int) -> tuple[str, JSON]:
    """(key, params) of a server's question in `inputRequests`: `<kind>-<n>`, unless the server
    names it in `params._meta["dev.meshgate/inputKey"]` (removed before the client sees it)."""
    key = f"{_KEY_PREFIX.get(method, method.split('/')[0])}-{n}"
    meta = params.get("_meta")
    if isinstance(meta, dict) and INPUT_KEY in meta:
        named = meta[INPUT_KEY]
        if isinstance(named, str) and named and named not in taken:
            key = named
        rest = {k: v for k, v in meta.items() if k != INPUT_KEY}
        params = {k: v for k, v in params.items() if k != "_meta"}
        if rest:
            params["_meta"] = rest
    return key, params


def answer_of(value: Any) -> JSON:
    """A client's answer to a question as the server gets it: the result, or JsonRpcError for
    an `{"error": ...}` answer; ValueError for what is neither."""
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        err = value["error"]
        raise JsonRpcError(int(err.get("code", INTERNAL_ERROR)), str(err.get("message", "error")))
    if not isinstance(value, dict):
        raise ValueError("an answer must be an object")
    return value


class Parked:
    """One client request whose upstream call waits for the client's answers."""

    def __init__(
        self,
        id_: str,
        method: str,
        name: Any,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = id_
        self.method = method
        self.name = name
        self.ttl_s = ttl_s
        self.clock = clock
        self.expires_at = clock() + ttl_s
        self.task: asyncio.Future[Any] | None = None
        self.questions: dict[str, tuple[str, JSON, asyncio.Future[JSON]]] = {}
        self.emit: Callable[[JSON], None] | None = None  # the current round's event stream
        self.round = 0
        self.waiting = False  # a round went back to the client; its answers are awaited
        self._keys = itertools.count(1)
        self._changed: asyncio.Future[None] | None = None  # awaited by `next`

    # -- the upstream side -----------------------------------------------------------------------

    async def ask(self, method: str, params: JSON) -> JSON:
        """Called for a server's question: wait until a client round answers it."""
        key, params = name_question(method, params, self.questions, next(self._keys))
        fut: asyncio.Future[JSON] = asyncio.get_running_loop().create_future()
        self.questions[key] = (method, params, fut)
        self._wake()
        try:
            return await fut
        finally:
            self.questions.pop(key, None)

    def relay(self, note: JSON) -> None:
        if self.emit is not None:
            self.emit(note)

    # -- the client side -------------------------------------------------------------------------

    def open_questions(self) -> dict[str, JSON]:
        return {
            key: {"method": method, "params": params}
            for key, (method, params, fut) in self.questions.items()
            if not fut.done()
        }

    def is_waiting(self) -> bool:
        return self.waiting

    def answer(self, responses: Any) -> None:
        """Hand the client's answers to the questions they are keyed by; others are ignored."""
        self.waiting = False
        if not isinstance(responses, dict):
            return
        for key, value in responses.items():
            question = self.questions.get(key)
            if question is None or question[2].done():
                continue
            fut = question[2]
            try:
                fut.set_result(answer_of(value))
            except JsonRpcError as e:
                fut.set_exception(e)
            except ValueError:
                pass

    async def next(self) -> bool:
        """Wait until the call is done (True) or asks something not yet answered (False)."""
        assert self.task is not None
        while True:
            if self.task.done():
                return True
            if self.open_questions():
                # A server asking several things at once writes them back to back.
                await asyncio.sleep(SETTLE_S)
                return self.task.done()
            self._changed = asyncio.get_running_loop().create_future()
            waits: set[asyncio.Future[Any]] = {self.task, self._changed}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def touch(self) -> None:
        self.expires_at = self.clock() + self.ttl_s

    def cancel(self, reason: str) -> None:
        for _, _, fut in self.questions.values():
            if not fut.done():
                fut.set_exception(JsonRpcError(REQUEST_CANCELLED, reason))
        if self.task is not None and not self.task.done():
            self.task.cancel()


class ParkedCalls:
    """The parked calls of this gateway, by signed `requestState`."""

    def __init__(
        self,
        *,
        ttl_s: float = 120.0,
        limit: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self.clock = clock
        self.calls: dict[str, Parked] = {}

    def park(self, method: str, name: Any) -> Parked:
        """A call that may ask its client something; registered only once it does."""
        return Parked("", method, name, self.ttl_s, self.clock)

    def state(self, parked: Parked) -> str:
        """The `requestState` that names a parked call at its current round."""
        if not parked.id:
            self.expire()
            if len(self.calls) >= self.limit:
                raise JsonRpcError(INTERNAL_ERROR, "too many requests are waiting for client input")
            parked.id = secrets.token_urlsafe(12)
            self.calls[parked.id] = parked
        parked.touch()
        parked.round += 1
        parked.waiting = True
        return self._sign(f"{parked.id}.{parked.round}")

    def _sign(self, text: str) -> str:
        return f"{text}.{_signature(text)}"

    def claim(self, state: Any, method: str, name: Any) -> Parked:
        """The parked call a client's `requestState` names, for the same request."""
        self.expire()
        parked = None
        if isinstance(state, str) and state.count(".") == 2:
            id_, round_, _ = state.split(".")
            if hmac.compare_digest(state, self._sign(f"{id_}.{round_}")):
                parked = self.calls.get(id_)
                if parked is not None and str(parked.round) != round_:
                    parked = None  # an earlier round's state: its questions are answered
        if parked is None:
            raise JsonRpcError(
                INVALID_PARAMS,
                "requestState is not valid: altered, expired, or issued by another gateway; "
                "send the request again without it",
            )
        if parked.method != method or parked.name != name:
            raise JsonRpcError(INVALID_PARAMS, "requestState belongs to a different request")
        parked.touch()
        return parked

    def release(self, parked: Parked) -> None:
        if parked.id:
            self.calls.pop(parked.id, None)

    def expire(self) -> None:
        now = self.clock()
        for id_, parked in list(self.calls.items()):
            if parked.expires_at < now:
                log.info("a request waiting for client input expired (%s)", parked.method)
                parked.cancel("the client did not come back with the input in time")
                del self.calls[id_]

    def close(self) -> None:
        for parked in self.calls.values():
            parked.cancel("the gateway is shutting down")
        self.calls.clear()
