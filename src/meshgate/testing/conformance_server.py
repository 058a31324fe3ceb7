"""A stdio MCP server with the fixtures the MCP conformance suite calls.

    python -m meshgate.testing.conformance_server [--era handshake|both|stateless]

`@modelcontextprotocol/conformance server --url URL` expects the server under test to offer
tools such as `test_simple_text` and `test_tool_with_progress`, prompts such as
`test_simple_prompt`, and `test://` resources. Behind meshgate at `/mcp/{name}`, this server
lets the suite check the gateway's MCP front end end to end: every scenario reaches a real
stdio process through the router.

It builds on the fault server's JSON-RPC loop (concurrent requests, both eras, requests to the
client) and adds prompts, resources, resource templates, completions and logging.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from typing import Any

from meshgate.testing.fault_server import (
    HANDSHAKE_VERSIONS,
    META_VERSION,
    STATELESS,
    FaultServer,
    RpcError,
    parse_args,
    run,
)

JSON = dict[str, Any]

PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5E"
    "rkJggg=="
)
WAV_EMPTY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
_NONE: JSON = {"type": "object", "properties": {}}


def _string_args(*names: str) -> JSON:
    return {
        "type": "object",
        "properties": {n: {"type": "string"} for n in names},
        "required": list(names),
    }


JSON_SCHEMA_2020_12: JSON = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

TOOLS: dict[str, tuple[str, JSON]] = {
    "test_simple_text": ("Returns simple text content", _NONE),
    "test_image_content": ("Returns image content", _NONE),
    "test_audio_content": ("Returns audio content", _NONE),
    "test_embedded_resource": ("Returns an embedded resource", _NONE),
    "test_multiple_content_types": ("Returns text, image and resource content", _NONE),
    "test_tool_with_logging": ("Sends log messages while it runs", _NONE),
    "test_tool_with_progress": ("Sends progress notifications while it runs", _NONE),
    "test_error_handling": ("Always fails with isError", _NONE),
    "test_sampling": ("Asks the client for an LLM completion", _string_args("prompt")),
    "test_elicitation": ("Asks the user for input", _string_args("message")),
    "test_elicitation_sep1034_defaults": ("Elicitation with defaults for every type", _NONE),
    "test_elicitation_sep1330_enums": ("Elicitation with enum schema variants", _NONE),
    "json_schema_2020_12_tool": ("Its input schema uses JSON Schema 2020-12", JSON_SCHEMA_2020_12),
    "test_logging_tool": ("Sends log messages while it runs", _NONE),
    "test_missing_capability": ("Needs the client's sampling capability", _NONE),
    "test_custom_headers": (
        "Its region argument travels in an Mcp-Param-Region header too (SEP-2243)",
        {
            "type": "object",
            "properties": {"region": {"type": "string", "x-mcp-header": "Region"}},
            "required": ["region"],
        },
    ),
    "test_streaming_elicitation": ("Asks the user mid-call", _NONE),
    "test_input_required_result_elicitation": ("Asks the user's name", _NONE),
    "test_input_required_result_sampling": ("Asks the client's model", _NONE),
    "test_input_required_result_list_roots": ("Asks the client's roots", _NONE),
    "test_input_required_result_request_state": ("Asks for a confirmation", _NONE),
    "test_input_required_result_multiple_inputs": ("Asks three questions at once", _NONE),
    "test_input_required_result_multi_round": ("Asks two questions in turn", _NONE),
    "test_input_required_result_tampered_state": ("Asks for a confirmation", _NONE),
    "test_input_required_result_capabilities": ("Asks only what the client can answer", _NONE),
    "test_trigger_tool_change": ("Adds a tool and sends tools/list_changed", _NONE),
    "test_trigger_prompt_change": ("Adds a prompt and sends prompts/list_changed", _NONE),
    # The tasks extension's scenarios; the gateway's policy says which run as tasks.
    "greet": ("Says hello at once", _string_args("name")),
    "slow_compute": (
        "Works for `seconds`",
        {
            "type": "object",
            "properties": {"seconds": {"type": "number"}, "label": {"type": "string"}},
        },
    ),
    "failing_job": ("Fails (isError) after a second", _NONE),
    "protocol_error_job": ("Ends with a JSON-RPC error", _NONE),
    "confirm_delete": ("Asks for a confirmation, then deletes", _string_args("filename")),
    "multi_input": ("Asks two questions at once", _NONE),
    "test_tool_with_task": ("Asks the user's name, then works on it", _NONE),
}

PROMPTS: list[JSON] = [
    {"name": "test_simple_prompt", "description": "A prompt without arguments"},
    {
        "name": "test_prompt_with_arguments",
        "description": "A prompt with required arguments",
        "arguments": [
            {"name": "arg1", "description": "First argument", "required": True},
            {"name": "arg2", "description": "Second argument", "required": True},
        ],
    },
    {
        "name": "test_prompt_with_embedded_resource",
        "description": "A prompt with an embedded resource",
        "arguments": [{"name": "resourceUri", "description": "URI to embed", "required": True}],
    },
    {"name": "test_prompt_with_image", "description": "A prompt with an image"},
    {"name": "test_input_required_result_prompt", "description": "Asks the user for context"},
]

RESOURCES: list[JSON] = [
    {"uri": "test://static-text", "name": "static-text", "mimeType": "text/plain"},
    {"uri": "test://static-binary", "name": "static-binary", "mimeType": "image/png"},
    {"uri": "test://watched-resource", "name": "watched-resource", "mimeType": "text/plain"},
]
TEMPLATES: list[JSON] = [
    {
        "uriTemplate": "test://template/{id}/data",
        "name": "template",
        "mimeType": "application/json",
    }
]

SEP1034_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {
            "type": "string",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "default": True},
    },
}
SEP1330_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["active", "inactive", "pending"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "low", "title": "Low Priority"},
                {"const": "medium", "title": "Medium Priority"},
                {"const": "high", "title": "High Priority"},
            ],
        },
        "untitledMulti": {
            "type": "array",
            "items": {"type": "string", "enum": ["read", "write", "execute"]},
        },
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "feature", "title": "New Feature"},
                    {"const": "bug", "title": "Bug Fix"},
                    {"const": "docs", "title": "Documentation"},
                ]
            },
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["small", "medium", "large"],
            "enumNames": ["Small Size", "Medium Size", "Large Size"],
        },
    },
    "required": ["untitledSingle", "titledSingle", "untitledMulti", "titledMulti", "legacyEnum"],
}


def _text(value: str) -> JSON:
    return {"type": "text", "text": value}


def _user(content: JSON) -> JSON:
    return {"role": "user", "content": content}


class ConformanceServer(FaultServer):
    CAPABILITIES: JSON = {
        "tools": {"listChanged": True},
        "prompts": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "completions": {},
        "logging": {},
    }

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.extra_prompts: list[JSON] = []

    async def dispatch(self, method: str, params: JSON) -> JSON:
        self.calls[method] += 1
        era = self.args.era
        stateless = META_VERSION in (params.get("_meta") or {})
        if method == "server/discover" and era != "handshake":
            return {
                "supportedVersions": [STATELESS],
                "capabilities": self.CAPABILITIES,
                "serverInfo": {"name": self.args.name, "version": "1"},
            }
        if method == "initialize" and era != "stateless":
            self.initialized = True
            asked = params.get("protocolVersion")
            return {
                "protocolVersion": asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0],
                "capabilities": self.CAPABILITIES,
                "serverInfo": {"name": self.args.name, "version": "1"},
            }
        if method in ("ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe"):
            return {}
        cache = {"ttlMs": 0, "cacheScope": "private"} if stateless else {}
        if method == "tools/list":
            tools = [{"name": n, "description": d, "inputSchema": s} for n, (d, s) in TOOLS.items()]
            tools += [
                {"name": n, "description": "Added at run time", "inputSchema": _NONE}
                for n in self.extra_tools
            ]
            return {"tools": tools, **cache}
        if method == "tools/call":
            name = str(params.get("name"))
            if name in self.extra_tools:
                return await self.test_simple_text({}, {})
            if name not in TOOLS:
                raise RpcError(-32602, f"Unknown tool: {name}")
            handler: Any = getattr(self, name)
            result: JSON = await handler(params.get("arguments") or {}, params.get("_meta") or {})
            return result
        if method == "prompts/list":
            return {"prompts": PROMPTS + self.extra_prompts, **cache}
        if method == "prompts/get":
            name = str(params.get("name"))
            if name == "test_input_required_result_prompt":
                answer = await self.elicit("user_context", "What context should the prompt use?")
                context = (answer.get("content") or {}).get("context", "")
                return {"messages": [_user(_text(f"Use this context: {context}"))]}
            return self.prompt(name, params.get("arguments") or {})
        if method == "resources/list":
            return {"resources": RESOURCES, **cache}
        if method == "resources/templates/list":
            return {"resourceTemplates": TEMPLATES, **cache}
        if method == "resources/read":
            return {"contents": [self.resource(str(params.get("uri")), stateless)], **cache}
        if method == "completion/complete":
            return {"completion": {"values": [], "total": 0, "hasMore": False}}
        raise RpcError(-32601, f"Method not found: {method}")

    # -- tools ---------------------------------------------------------------------------------

    async def test_simple_text(self, args: JSON, meta: JSON) -> JSON:
        return {"content": [_text("This is a simple text response for testing.")]}

    async def test_image_content(self, args: JSON, meta: JSON) -> JSON:
        return {"content": [{"type": "image", "data": PNG_1PX, "mimeType": "image/png"}]}

    async def test_audio_content(self, args: JSON, meta: JSON) -> JSON:
        return {"content": [{"type": "audio", "data": WAV_EMPTY, "mimeType": "audio/wav"}]}

    async def test_embedded_resource(self, args: JSON, meta: JSON) -> JSON:
        resource = {
            "uri": "test://embedded-resource",
            "mimeType": "text/plain",
            "text": "This is an embedded resource content.",
        }
        return {"content": [{"type": "resource", "resource": resource}]}

    async def test_multiple_content_types(self, args: JSON, meta: JSON) -> JSON:
        resource = {
            "uri": "test://mixed-content-resource",
            "mimeType": "application/json",
            "text": '{"test": "data", "value": 123}',
        }
        return {
            "content": [
                _text("Multiple content types test:"),
                {"type": "image", "data": PNG_1PX, "mimeType": "image/png"},
                {"type": "resource", "resource": resource},
            ]
        }

    async def test_tool_with_logging(self, args: JSON, meta: JSON) -> JSON:
        for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            self.notify("notifications/message", {"level": "info", "data": text})
            await asyncio.sleep(0.05)
        return {"content": [_text("Tool with logging executed successfully")]}

    async def test_tool_with_progress(self, args: JSON, meta: JSON) -> JSON:
        token = meta.get("progressToken")
        for step in (0, 50, 100):
            if token is not None:
                self.notify(
                    "notifications/progress",
                    {
                        "progressToken": token,
                        "progress": step,
                        "total": 100,
                        "message": f"Completed step {step} of 100",
                    },
                )
            await asyncio.sleep(0.05)
        return {"content": [_text(str(token if token is not None else 0))]}

    async def test_error_handling(self, args: JSON, meta: JSON) -> JSON:
        text = "This tool intentionally returns an error for testing"
        return {"content": [_text(text)], "isError": True}

    async def test_sampling(self, args: JSON, meta: JSON) -> JSON:
        reply = await self.ask(
            "sampling/createMessage",
            {"messages": [_user(_text(str(args.get("prompt", ""))))], "maxTokens": 100},
        )
        result = reply.get("result")
        if not isinstance(result, dict):
            return {"content": [_text(f"Sampling not supported or error: {_error(reply)}")]}
        content = result.get("content") or {}
        said = content.get("text") if content.get("type") == "text" else "No response"
        return {"content": [_text(f"LLM response: {said}")]}

    async def _elicit(self, message: str, schema: JSON, prefix: str) -> JSON:
        reply = await self.ask(
            "elicitation/create", {"message": message, "requestedSchema": schema}
        )
        result = reply.get("result")
        if not isinstance(result, dict):
            return {"content": [_text(f"Elicitation not supported or error: {_error(reply)}")]}
        action = result.get("action")
        content = json.dumps(result.get("content") or {}) if action == "accept" else "{}"
        return {"content": [_text(f"{prefix}: action={action}, content={content}")]}

    async def test_elicitation(self, args: JSON, meta: JSON) -> JSON:
        schema = {
            "type": "object",
            "properties": {"response": {"type": "string", "description": "User's response"}},
            "required": ["response"],
        }
        return await self._elicit(str(args.get("message", "")), schema, "User response")

    async def test_elicitation_sep1034_defaults(self, args: JSON, meta: JSON) -> JSON:
        return await self._elicit(
            "Please provide user information", SEP1034_SCHEMA, "Elicitation result"
        )

    async def test_elicitation_sep1330_enums(self, args: JSON, meta: JSON) -> JSON:
        return await self._elicit(
            "Please select values using different enum schema types",
            SEP1330_SCHEMA,
            "Elicitation completed",
        )

    async def json_schema_2020_12_tool(self, args: JSON, meta: JSON) -> JSON:
        return {"content": [_text("ok")]}

    async def test_logging_tool(self, args: JSON, meta: JSON) -> JSON:
        return await self.test_tool_with_logging(args, meta)

    async def test_trigger_tool_change(self, args: JSON, meta: JSON) -> JSON:
        self.extra_tools.append(f"test_dynamic_tool_{len(self.extra_tools) + 1}")
        self.notify("notifications/tools/list_changed", {})
        return {"content": [_text("tool list changed")]}

    async def test_trigger_prompt_change(self, args: JSON, meta: JSON) -> JSON:
        name = f"test_dynamic_prompt_{len(self.extra_prompts) + 1}"
        self.extra_prompts.append({"name": name, "description": "Added at run time"})
        self.notify("notifications/prompts/list_changed", {})
        return {"content": [_text("prompt list changed")]}

    # -- questions to the client, in the shape the suite's input_required scenarios expect ---

    async def question(self, key: str, method: str, params: JSON) -> JSON:
        """Ask the client; the key names the question in an input_required result, through
        meshgate's `dev.meshgate/inputKey` hint. An error answer raises RpcError."""
        reply = await self.ask(method, {**params, "_meta": {"dev.meshgate/inputKey": key}})
        if isinstance(reply.get("result"), dict):
            result: JSON = reply["result"]
            return result
        error: JSON = reply["error"] if isinstance(reply.get("error"), dict) else {}
        raise RpcError(
            int(error.get("code", -32603)), str(error.get("message", reply)), error.get("data")
        )

    async def elicit(self, key: str, message: str, field: str = "context") -> JSON:
        schema = {"type": "object", "properties": {field: {"type": "string"}}, "required": [field]}
        return await self.question(
            key, "elicitation/create", {"message": message, "requestedSchema": schema}
        )

    async def sample(self, key: str, text: str, max_tokens: int = 100) -> str:
        result = await self.question(
            key,
            "sampling/createMessage",
            {"messages": [_user(_text(text))], "maxTokens": max_tokens},
        )
        content = result.get("content") or {}
        return str(content.get("text", "")) if isinstance(content, dict) else ""

    async def greet(self, args: JSON, meta: JSON) -> JSON:
        return {"content": [_text(f"Hello, {args.get('name')}!")]}

    async def slow_compute(self, args: JSON, meta: JSON) -> JSON:
        seconds = float(args.get("seconds", 1))
        await asyncio.sleep(seconds)
        return {"content": [_text(f"{args.get('label') or 'computed'}: done in {seconds} s")]}

    async def failing_job(self, args: JSON, meta: JSON) -> JSON:
        await asyncio.sleep(1)
        return {"content": [_text("the job failed")], "isError": True}

    async def protocol_error_job(self, args: JSON, meta: JSON) -> JSON:
        raise RpcError(-32602, "the job's parameters are refused (on purpose)")

    async def confirm_delete(self, args: JSON, meta: JSON) -> JSON:
        answer = await self.elicit("confirm", f"Delete {args.get('filename')}?", "confirm")
        done = answer.get("action") == "accept"
        return {"content": [_text(f"deleted {args.get('filename')}" if done else "kept")]}

    async def multi_input(self, args: JSON, meta: JSON) -> JSON:
        first, second = await asyncio.gather(
            self.elicit("first", "First value?", "value"),
            self.elicit("second", "Second value?", "value"),
        )
        return {"content": [_text(f"got {first.get('action')} and {second.get('action')}")]}

    async def test_tool_with_task(self, args: JSON, meta: JSON) -> JSON:
        answer = await self.elicit("user_name", "What is your name?", "name")
        name = (answer.get("content") or {}).get("name", "unknown")
        await asyncio.sleep(0.5)
        return {"content": [_text(f"Worked on it for {name}")]}

    async def test_custom_headers(self, args: JSON, meta: JSON) -> JSON:
        return {"content": [_text(f"region: {args.get('region')}")]}

    async def test_missing_capability(self, args: JSON, meta: JSON) -> JSON:
        said = await self.sample("sample", "Say something")  # -32021 if the client cannot
        return {"content": [_text(f"sampled: {said}")]}

    async def test_streaming_elicitation(self, args: JSON, meta: JSON) -> JSON:
        answer = await self.elicit("user_input", "Anything to add?", "text")
        return {"content": [_text(f"Streaming complete: {answer.get('action')}")]}

    async def test_input_required_result_elicitation(self, args: JSON, meta: JSON) -> JSON:
        answer = await self.elicit("user_name", "What is your name?", "name")
        name = (answer.get("content") or {}).get("name", "unknown")
        return {"content": [_text(f"Hello, {name}!")]}

    async def test_input_required_result_sampling(self, args: JSON, meta: JSON) -> JSON:
        said = await self.sample("sample_request", "What is the capital of France?")
        return {"content": [_text(f"Sampling result: {said}")]}

    async def test_input_required_result_list_roots(self, args: JSON, meta: JSON) -> JSON:
        roots = (await self.question("roots_request", "roots/list", {})).get("roots") or []
        return {"content": [_text(f"Found {len(roots)} root(s)")]}

    async def _confirm(self, key: str) -> JSON:
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        answer = await self.question(
            key, "elicitation/create", {"message": "Please confirm", "requestedSchema": schema}
        )
        return {"content": [_text(f"state-ok: confirmed={answer.get('action') == 'accept'}")]}

    async def test_input_required_result_request_state(self, args: JSON, meta: JSON) -> JSON:
        return await self._confirm("confirm")

    async def test_input_required_result_tampered_state(self, args: JSON, meta: JSON) -> JSON:
        return await self._confirm("confirm")

    async def test_input_required_result_multiple_inputs(self, args: JSON, meta: JSON) -> JSON:
        answer, said, roots = await asyncio.gather(
            self.elicit("user_name", "What is your name?", "name"),
            self.sample("greeting", "Generate a greeting", 50),
            self.question("client_roots", "roots/list", {}),
        )
        name = (answer.get("content") or {}).get("name", "unknown")
        count = len(roots.get("roots") or [])
        return {"content": [_text(f"Name: {name}; Greeting: {said}; Roots: {count}")]}

    async def test_input_required_result_multi_round(self, args: JSON, meta: JSON) -> JSON:
        first = await self.elicit("step1", "What is your name?", "name")
        second = await self.elicit("step2", "What is your favourite colour?", "color")
        name = (first.get("content") or {}).get("name")
        color = (second.get("content") or {}).get("color")
        return {"content": [_text(f"Multi-round complete for {name} who likes {color}")]}

    async def test_input_required_result_capabilities(self, args: JSON, meta: JSON) -> JSON:
        try:  # the gateway refuses what the client did not declare: fall back to sampling
            answer = await self.elicit("user_input", "What is your name?", "name")
            return {"content": [_text(f"elicited: {answer.get('action')}")]}
        except RpcError as e:
            if e.code != -32021:
                raise
        said = await self.sample("sample_input", "What is your name?")
        return {"content": [_text(f"sampled: {said}")]}

    # -- prompts and resources -----------------------------------------------------------------

    def prompt(self, name: str, args: JSON) -> JSON:
        if name == "test_simple_prompt":
            messages = [_user(_text("This is a simple prompt for testing."))]
        elif name == "test_prompt_with_arguments":
            text = f"Prompt with arguments: arg1='{args.get('arg1')}', arg2='{args.get('arg2')}'"
            messages = [_user(_text(text))]
        elif name == "test_prompt_with_embedded_resource":
            resource = {
                "uri": str(args.get("resourceUri", "test://example-resource")),
                "mimeType": "text/plain",
                "text": "Embedded resource content for testing.",
            }
            messages = [
                _user({"type": "resource", "resource": resource}),
                _user(_text("Please process the embedded resource above.")),
            ]
        elif name == "test_prompt_with_image":
            messages = [
                _user({"type": "image", "data": PNG_1PX, "mimeType": "image/png"}),
                _user(_text("Please analyze the image above.")),
            ]
        else:
            raise RpcError(-32602, f"Prompt {name} not found")
        return {"messages": messages}

    def resource(self, uri: str, stateless: bool) -> JSON:
        if uri == "test://static-text":
            text = "This is the content of the static text resource."
            return {"uri": uri, "mimeType": "text/plain", "text": text}
        if uri == "test://static-binary":
            return {"uri": uri, "mimeType": "image/png", "blob": PNG_1PX}
        if uri == "test://watched-resource":
            return {"uri": uri, "mimeType": "text/plain", "text": "Watched resource content"}
        prefix, suffix = "test://template/", "/data"
        if uri.startswith(prefix) and uri.endswith(suffix) and len(uri) > len(prefix + suffix):
            id_ = uri[len(prefix) : -len(suffix)]
            data = {"id": id_, "templateTest": True, "data": f"Data for ID: {id_}"}
            return {"uri": uri, "mimeType": "application/json", "text": json.dumps(data)}
        # 2026-07-28 names an unknown resource with invalid params; earlier versions with -32002.
        raise RpcError(-32602 if stateless else -32002, f"Resource {uri} not found")

    def notify(self, method: str, params: JSON) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})


def _error(reply: JSON) -> str:
    error = reply.get("error")
    if isinstance(error, dict):
        return str(error.get("message"))
    return str(reply.get("error", reply))


def main() -> None:
    argv = sys.argv[1:] + shlex.split(os.environ.get("FAULT_SERVER_ARGS", ""))
    if not any(a.startswith("--era") for a in argv):
        argv = ["--era", "handshake", *argv]
    args = parse_args(argv)
    if not any(a.startswith("--name") for a in argv):
        args.name = "meshgate-conformance-server"
    run(ConformanceServer, args)


if __name__ == "__main__":
    main()
