"""An MCP server over stdio that misbehaves on request, for tests, benchmarks and chaos drills.

    python -m meshgate.testing.fault_server [--era both|stateless|handshake] [faults...]

It speaks both protocol eras (2026-07-28 `server/discover`, and the `initialize` handshake),
handles requests concurrently, and offers tools that crash, hang, sleep, flood stdout, answer
with errors, or ask the client questions. Flags inject faults at start-up; `set_fault` flips
faults at run time. `FAULT_SERVER_ARGS` (shell-split) is appended to the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import threading
from collections import Counter
from typing import Any, TextIO

JSON = dict[str, Any]
STATELESS = "2026-07-28"
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
META_VERSION = "io.modelcontextprotocol/protocolVersion"

_TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
_SECONDS = {"type": "object", "properties": {"seconds": {"type": "number"}}}
_EMPTY: JSON = {"type": "object", "properties": {}}
_READ_ONLY = {"readOnlyHint": True}

TOOLS: dict[str, tuple[str, JSON, JSON | None]] = {
    "echo": ("Return the text", _TEXT, _READ_ONLY),
    "write": ("Increment a counter (not idempotent)", {"type": "object"}, None),
    "slow_write": ("Sleep, then increment a counter (not idempotent)", _SECONDS, None),
    "sleep": ("Answer after some seconds", _SECONDS, _READ_ONLY),
    "hang": ("Never answer", _EMPTY, _READ_ONLY),
    "crash": ("Exit at once without answering", _EMPTY, None),
    "huge": (
        "Return a text of N bytes",
        {"type": "object", "properties": {"bytes": {"type": "integer"}}},
        _READ_ONLY,
    ),
    "garbage": ("Print non-JSON-RPC lines on stdout, then answer", _EMPTY, _READ_ONLY),
    "fail": ("Answer with a JSON-RPC error", _EMPTY, _READ_ONLY),
    "tool_error": ("Answer with isError true", _EMPTY, _READ_ONLY),
    "pid": ("Return the process id", _EMPTY, _READ_ONLY),
    "meta": ("Return the request's params._meta", _EMPTY, _READ_ONLY),
    "stats": ("Return counters as JSON", _EMPTY, _READ_ONLY),
    "env": (
        "Return the sorted names of the environment's variables as JSON, or one's value",
        {"type": "object", "properties": {"name": {"type": "string"}}},
        _READ_ONLY,
    ),
    "progress": ("Send progress notifications, then answer", _EMPTY, _READ_ONLY),
    "add_tool": (
        "Add a tool and send list_changed",
        {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        None,
    ),
    "ask_roots": ("Ask the client roots/list", _EMPTY, None),
    "ask_sampling": ("Ask the client sampling/createMessage", _EMPTY, None),
    "set_fault": (
        "Set a runtime fault: hang_health, fail_calls, slow_ms",
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "value": {}},
            "required": ["name", "value"],
        },
        None,
    ),
}


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class FaultServer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.loop = asyncio.get_running_loop()
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.tool_calls = 0
        self.cancelled: list[Any] = []
        self.counter = 0
        self.sleeping = 0
        self.peak_sleeping = 0
        self.pings = 0
        self.discovers = 0
        self.extra_tools: list[str] = []
        self.faults: JSON = {"hang_health": False, "fail_calls": False, "slow_ms": 0}
        self.running: dict[Any, asyncio.Task[None]] = {}
        self.asked: dict[str, asyncio.Future[JSON]] = {}
        self.next_ask = 0
        self.initialized = False
        self.listeners: set[int] = set()  # open subscriptions/listen requests
        self.next_listen = 0
        # Opened once, written and flushed per `write`: the line is in the file before the answer.
        self.write_log: TextIO | None = None
        if args.write_log:
            self.write_log = open(args.write_log, "a", encoding="utf-8")  # noqa: SIM115

    # -- output -------------------------------------------------------------------------------

    def send(self, msg: JSON) -> None:
        self.raw((json.dumps(msg, separators=(",", ":")) + "\n").encode())

    def raw(self, data: bytes) -> None:
        with self.lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def log(self, text: str) -> None:
        print(f"[fault-server {os.getpid()}] {text}", file=sys.stderr, flush=True)

    # -- input --------------------------------------------------------------------------------

    def handle_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            msg = json.loads(line)
            if not isinstance(msg, dict):
                raise ValueError("not an object")
        except ValueError:
            self.send(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}
            )
            return
        method = msg.get("method")
        if method is None:
            fut = self.asked.pop(str(msg.get("id")), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            return
        if "id" not in msg:
            self.notification(method, msg.get("params") or {})
            return
        id_ = msg["id"]
        task = asyncio.ensure_future(self.request(msg))
        self.running[id_] = task
        task.add_done_callback(lambda _t: self.running.pop(id_, None))

    def notification(self, method: str, params: JSON) -> None:
        if method == "notifications/cancelled":
            rid = params.get("requestId")
            self.cancelled.append(rid)
            task = self.running.pop(rid, None)
            if task is not None:
                task.cancel()

    async def request(self, msg: JSON) -> None:
        id_, method = msg["id"], msg["method"]
        params = msg.get("params") or {}
        stateless = META_VERSION in (params.get("_meta") or {})
        try:
            result = await self.dispatch(method, params)
        except RpcError as e:
            self.send({"jsonrpc": "2.0", "id": id_, "error": _error_object(e)})
            return
        except asyncio.CancelledError:
            return  # cancelled by the client: no answer
        if stateless:
            result.setdefault("resultType", "complete")
        self.send({"jsonrpc": "2.0", "id": id_, "result": result})

    async def dispatch(self, method: str, params: JSON) -> JSON:
        era = self.args.era
        self.calls[method] += 1
        if method in ("server/discover", "initialize") and self.args.exit_during_handshake:
            self.log("exiting during handshake")
            os._exit(3)
        if method == "initialize":
            self.initialized = True
        elif not self.initialized and self.args.exit_before_initialize:
            # Like some older servers: any request before `initialize` kills the process.
            self.log(f"received {method} before initialize; exiting")
            os._exit(4)
        if method == "server/discover" and era != "handshake":
            self.discovers += 1
            if self.faults["hang_health"]:
                await asyncio.Event().wait()
            return {
                "supportedVersions": [STATELESS, *HANDSHAKE_VERSIONS[:1]],
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": self.args.name, "version": "1"},
                "instructions": "A server that misbehaves on request.",
            }
        if method == "initialize" and era != "stateless":
            asked = params.get("protocolVersion")
            return {
                "protocolVersion": asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0],
                "capabilities": {"tools": {"listChanged": True}},
                "serverInfo": {"name": self.args.name, "version": "1"},
            }
        if method == "ping" and era != "stateless":
            self.pings += 1
            if self.args.ping_error:
                raise RpcError(-32603, "Unknown method: ping")
            if self.faults["hang_health"]:
                await asyncio.Event().wait()
            return {}
        if method == "subscriptions/listen" and era != "handshake":
            return await self.listen(params)
        if method == "tools/list":
            result: JSON = {"tools": [self.describe(n) for n in [*TOOLS, *self.extra_tools]]}
            if META_VERSION in (params.get("_meta") or {}):
                result.update(ttlMs=0, cacheScope="private")
            return result
        if method == "tools/call":
            return await self.call(
                str(params.get("name")), params.get("arguments") or {}, params.get("_meta") or {}
            )
        raise RpcError(-32601, f"Method not found: {method}")

    async def listen(self, params: JSON) -> JSON:
        """A 2026-07-28 subscription: acknowledged, then open until cancelled."""
        wanted = params.get("notifications") or {}
        self.next_listen += 1
        sub_id = self.next_listen
        granted = {"toolsListChanged": True} if wanted.get("toolsListChanged") else {}
        self.send(
            {
                "jsonrpc": "2.0",
                "method": "notifications/subscriptions/acknowledged",
                "params": {
                    "notifications": granted,
                    "_meta": {"io.modelcontextprotocol/subscriptionId": sub_id},
                },
            }
        )
        self.listeners.add(sub_id)
        try:
            await asyncio.Event().wait()
        finally:
            self.listeners.discard(sub_id)
        raise AssertionError("unreachable")

    def describe(self, name: str) -> JSON:
        desc, schema, annotations = TOOLS.get(name, ("Echo (added at run time)", _TEXT, None))
        tool: JSON = {"name": name, "description": desc, "inputSchema": schema}
        if annotations:
            tool["annotations"] = annotations
        return tool

    async def call(self, name: str, args: JSON, meta: JSON) -> JSON:
        self.tool_calls += 1
        if self.args.crash_after is not None and self.tool_calls > self.args.crash_after:
            os._exit(1)
        if self.faults["slow_ms"]:
            await asyncio.sleep(float(self.faults["slow_ms"]) / 1000)
        if self.faults["fail_calls"] and name != "set_fault":
            raise RpcError(-32603, "injected failure (fail_calls)")
        if name in self.extra_tools:
            name = "echo"
        if name not in TOOLS:
            raise RpcError(-32602, f"Unknown tool: {name}")
        handler: Any = getattr(self, f"tool_{name}")
        result: JSON = await handler(args, meta)
        return result

    @staticmethod
    def text(value: str, is_error: bool = False) -> JSON:
        return {"content": [{"type": "text", "text": value}], "isError": is_error}

    async def tool_echo(self, args: JSON, meta: JSON) -> JSON:
        if not isinstance(args.get("text"), str):
            raise RpcError(-32602, "argument 'text' must be a string")
        return self.text(args["text"])

    async def tool_write(self, args: JSON, meta: JSON) -> JSON:
        self.counter += 1
        if self.write_log is not None:
            # One line per execution, written before the answer: a chaos drill counts what ran
            # even on a node that was killed before it could answer or mark its task done.
            self.write_log.write(str(args.get("key", "-")).replace("\n", " ") + "\n")
            self.write_log.flush()
        return self.text(str(self.counter))

    async def tool_slow_write(self, args: JSON, meta: JSON) -> JSON:
        await asyncio.sleep(float(args.get("seconds", 0.5)))
        return await self.tool_write(args, meta)

    async def tool_sleep(self, args: JSON, meta: JSON) -> JSON:
        self.sleeping += 1
        self.peak_sleeping = max(self.peak_sleeping, self.sleeping)
        try:
            await asyncio.sleep(float(args.get("seconds", 1.0)))
        finally:
            self.sleeping -= 1
        return self.text("slept")

    async def tool_hang(self, args: JSON, meta: JSON) -> JSON:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def tool_crash(self, args: JSON, meta: JSON) -> JSON:
        self.log("crashing on request")
        os._exit(int(args.get("exit_code", 1)))

    async def tool_huge(self, args: JSON, meta: JSON) -> JSON:
        return self.text("x" * int(args.get("bytes", 1_000_000)))

    async def tool_garbage(self, args: JSON, meta: JSON) -> JSON:
        lines = int(args.get("lines", 3))
        self.raw(b"".join(b"this is not json %d\n" % i for i in range(lines)) + b'{"hello": 1}\n')
        return self.text(f"printed {lines + 1} garbage lines")

    async def tool_fail(self, args: JSON, meta: JSON) -> JSON:
        raise RpcError(-32603, "injected failure")

    async def tool_tool_error(self, args: JSON, meta: JSON) -> JSON:
        return self.text("the tool failed on purpose", is_error=True)

    async def tool_meta(self, args: JSON, meta: JSON) -> JSON:
        return self.text(json.dumps(meta))

    async def tool_pid(self, args: JSON, meta: JSON) -> JSON:
        return self.text(str(os.getpid()))

    async def tool_env(self, args: JSON, meta: JSON) -> JSON:
        # Shows what the gateway let through to its servers; a missing variable is an error so
        # that it cannot be mistaken for an empty one.
        name = args.get("name")
        if name is None:
            return self.text(json.dumps(sorted(os.environ)))
        value = os.environ.get(str(name))
        if value is None:
            return self.text(f"{name} is not set", is_error=True)
        return self.text(value)

    async def tool_stats(self, args: JSON, meta: JSON) -> JSON:
        return self.text(
            json.dumps(
                {
                    "calls": dict(self.calls),
                    "tool_calls": self.tool_calls,
                    "counter": self.counter,
                    "peak_sleeping": self.peak_sleeping,
                    "cancelled": self.cancelled,
                    "pings": self.pings,
                    "discovers": self.discovers,
                    "pid": os.getpid(),
                }
            )
        )

    async def tool_progress(self, args: JSON, meta: JSON) -> JSON:
        token = meta.get("progressToken")
        steps = int(args.get("steps", 3))
        for i in range(steps):
            if token is not None:
                self.send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": i + 1, "total": steps},
                    }
                )
            await asyncio.sleep(0.01)
        return self.text(f"{steps} steps")

    async def tool_add_tool(self, args: JSON, meta: JSON) -> JSON:
        self.extra_tools.append(str(args["name"]))
        if not self.args.listen_only:
            self.send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        for sub_id in self.listeners:  # 2026-07-28: on subscriptions/listen streams
            self.send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/tools/list_changed",
                    "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": sub_id}},
                }
            )
        return self.text("added")

    async def ask(self, method: str, params: JSON) -> JSON:
        self.next_ask += 1
        id_ = f"s-{self.next_ask}"
        fut: asyncio.Future[JSON] = self.loop.create_future()
        self.asked[id_] = fut
        self.send({"jsonrpc": "2.0", "id": id_, "method": method, "params": params})
        try:
            return await asyncio.wait_for(fut, 5)
        except TimeoutError:
            return {"error": "no answer within 5s"}

    async def tool_ask_roots(self, args: JSON, meta: JSON) -> JSON:
        reply = await self.ask("roots/list", {})
        return self.text(json.dumps(reply.get("result", reply)))

    async def tool_ask_sampling(self, args: JSON, meta: JSON) -> JSON:
        reply = await self.ask(
            "sampling/createMessage",
            {
                "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
                "maxTokens": 10,
            },
        )
        return self.text(json.dumps(reply.get("result") or reply.get("error") or reply))

    async def tool_set_fault(self, args: JSON, meta: JSON) -> JSON:
        name = args.get("name")
        if name not in self.faults:
            raise RpcError(-32602, f"unknown fault {name!r}; expected {sorted(self.faults)}")
        self.faults[str(name)] = args.get("value")
        return self.text(f"ok pid={os.getpid()}")


def _error_object(e: RpcError) -> JSON:
    error: JSON = {"code": e.code, "message": e.message}
    if e.data is not None:
        error["data"] = e.data
    return error


async def serve(args: argparse.Namespace, cls: type[FaultServer] = FaultServer) -> None:
    server = cls(args)
    if args.garbage_on_start:
        server.raw(b"starting up...\nnot json either\n")
    for i in range(args.stderr_lines):
        server.log(f"stderr line {i + 1}")
    if args.startup_delay:
        await asyncio.sleep(args.startup_delay)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read_stdin() -> None:  # a thread: stdin may be a pipe, file or tty
        for line in sys.stdin.buffer:
            server.loop.call_soon_threadsafe(queue.put_nowait, line)
        server.loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    while (line := await queue.get()) is not None:
        server.handle_line(line)
    server.log("stdin closed; exiting")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fault_server", description=__doc__)
    p.add_argument("--era", choices=["both", "stateless", "handshake"], default="both")
    p.add_argument("--name", default="meshgate-fault-server")
    p.add_argument("--startup-delay", type=float, default=0.0)
    p.add_argument("--exit-during-handshake", action="store_true")
    p.add_argument(
        "--exit-before-initialize",
        action="store_true",
        help="exit on any request that comes before initialize",
    )
    p.add_argument("--exit-immediately", type=int, metavar="CODE")
    p.add_argument("--crash-after", type=int, metavar="N")
    p.add_argument("--garbage-on-start", action="store_true")
    p.add_argument(
        "--listen-only",
        action="store_true",
        help="send list_changed only on subscriptions/listen streams, as 2026-07-28 wants",
    )
    p.add_argument("--stderr-lines", type=int, default=0)
    p.add_argument(
        "--ping-error",
        action="store_true",
        help="answer ping with an error, as servers without a ping handler do",
    )
    p.add_argument(
        "--write-log",
        metavar="FILE",
        help="append each `write` call's `key` argument to FILE (executions survive a kill)",
    )
    return p.parse_args(argv)


def run(cls: type[FaultServer], args: argparse.Namespace) -> None:
    if args.exit_immediately is not None:
        print(
            f"fault server: exiting at once with code {args.exit_immediately}",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(args.exit_immediately)
    asyncio.run(serve(args, cls))
    os._exit(0)  # the stdin thread may still be blocked; do not wait for it


def main() -> None:
    run(
        FaultServer, parse_args(sys.argv[1:] + shlex.split(os.environ.get("FAULT_SERVER_ARGS", "")))
    )


if __name__ == "__main__":
    main()
