"""The REST API under generated input: schemathesis reads `/openapi.json` from a real gateway
(the fault MCP server and a static HTTP service behind it) and sends every operation inputs
that fit its schema and inputs that do not. No input may get a 5xx, and every answer must be
one the document declares (status, content type, body schema). Run with authentication off
(loopback, every request allowed), with `[auth] anonymous_roles` granting a role, and with a
wrong bearer token on every request, which must get 401 wherever a credential is needed.

Generated inputs have effects, all kept on this machine: `register` may add services (the
policy lets them be on 127.0.0.1 only; a host name is rewritten to 127.0.0.1 before sending,
so that the gateway never asks DNS about a made-up name), tasks may be enqueued (only to the
fault server or the static service, which exist here) and cancelled, and the run-time policy
(`/configure/...`) set.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode, Response
from schemathesis import Case as AnyCase
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.gateway import Gateway, fault_server, recording_service, run_gateway

pytestmark = pytest.mark.timeout(240)

Case = AnyCase[Any]
Operation = APIOperation[Any, Any, Any, Any]

# Examples per operation and generation mode: about 30 s a run on two cores. More for a
# deeper search: MESHGATE_FUZZ_EXAMPLES=1000 (tests/integration/test_mcp_fuzz.py reads it too).
EXAMPLES = int(os.environ.get("MESHGATE_FUZZ_EXAMPLES", "60"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
REGISTRATION_POLICY = """
[mesh]
registration_allowed_networks = ["127.0.0.1/32"]
"""
AUTH_POLICY = """
[auth]
anonymous_roles = ["fuzz"]

[roles.fuzz]
allow = ["*"]
deny = ["mesh:admin"]
"""
MAX_HOPS = 8  # mesh.max_hops by default
# Paths anyone may read, credential or not (api/auth.py): a wrong token is not looked at.
PUBLIC = ("/livez", "/readyz", "/.well-known/")
# Where generated path parameters are replaced by names that exist, so that inputs reach past
# the lookup: (operation label prefix, parameters).
EXISTING: tuple[tuple[str, dict[str, str]], ...] = (
    ("POST /api/v1/mcp/servers/{name}/tools/{tool}", {"name": "fault", "tool": "echo"}),
    ("GET /api/v1/mcp/servers/{name}", {"name": "fault"}),
    ("GET /api/v1/mesh/v2/services/{name}", {"name": "svc"}),
    ("PUT /api/v1/mesh/v2/services/{name}/instances/{instance_id}/heartbeat", {"name": "svc"}),
    ("DELETE /api/v1/mesh/v2/services/{name}/instances/{instance_id}", {"name": "svc"}),
    ("GET /api/v1/mesh/v2/call/{name}/{path}", {"name": "svc"}),
    ("POST /api/v1/mesh/v2/call/{name}/{path}", {"name": "svc"}),
    ("PUT /api/v1/mesh/v2/call/{name}/{path}", {"name": "svc"}),
    ("PATCH /api/v1/mesh/v2/call/{name}/{path}", {"name": "svc"}),
    ("DELETE /api/v1/mesh/v2/call/{name}/{path}", {"name": "svc"}),
    ("HEAD /api/v1/mesh/v2/call/{name}/{path}", {"name": "svc"}),
    ("OPTIONS /api/v1/mesh/v2/call/{name}/{path}", {"name": "svc"}),
)


@contextmanager
def gateway(tmp_path: Path, policy: str) -> Iterator[Gateway]:
    with recording_service() as (svc_url, _):
        static = f"""
[[mesh.services]]
name = "svc"
url = "{svc_url}"
check = {{ type = "tcp" }}
"""
        with run_gateway(tmp_path, {"fault": fault_server()}, policy + static) as gw:
            yield gw


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def loopback_only(case: Case) -> None:
    """Rewrite a registration's host name to 127.0.0.1: the gateway resolves names, and a
    made-up one must not become a DNS query leaving the machine. IP literals are sent as
    generated (the policy refuses all but 127.0.0.1)."""
    body = case.body
    if case.operation.path != "/api/v1/mesh/v2/register" or not isinstance(body, dict):
        return
    address = body.get("address")
    if isinstance(address, str) and address and not _ip_literal(address):
        body["address"] = "127.0.0.1"
    url = body.get("url")
    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return  # refused before any lookup
    if parts.hostname and not _ip_literal(parts.hostname):
        body["url"] = parts._replace(netloc=f"127.0.0.1:{port}" if port else "127.0.0.1").geturl()


def looped(case: Case) -> bool:
    """Whether the case sends an X-Meshgate-Hops at or over max_hops (8 by default)."""
    headers: dict[str, Any] = dict(case.headers or {})
    try:
        return int(str(headers.get("x-meshgate-hops"))) >= MAX_HOPS
    except ValueError:
        return False


def hurried(case: Case) -> bool:
    """Whether the case's X-Meshgate-Timeout is below min_call_timeout_s (0.05 s)."""
    headers: dict[str, Any] = dict(case.headers or {})
    try:
        return float(str(headers.get("x-meshgate-timeout"))) < 0.05
    except ValueError:
        return False


def unready(case: Case, response: Response) -> bool:
    """Whether the case called a service the generated input registered itself (at a port
    where nothing answers) and got the answer for that: 503 `no-healthy-instance`."""
    if response.status_code != 503:
        return False
    # A HEAD answer has no body to name the problem by: its status must do.
    if case.method != "HEAD" and b"no-healthy-instance" not in response.content:
        return False
    if case.operation.path == "/api/v1/mesh/v2/call" and isinstance(case.body, dict):
        return case.body.get("service_name") != "svc"
    if case.operation.path.startswith("/api/v1/mesh/v2/call/"):
        return (case.path_parameters or {}).get("name") != "svc"
    return False


def fuzz(
    gw: Gateway,
    *,
    examples: int = EXAMPLES,
    headers: dict[str, str] | None = None,
    checks: list[Any] | None = None,
    also: Callable[[Case, Response], None] | None = None,
) -> dict[str, int]:
    """Every operation of the gateway's document under generated input, positive and negative;
    returns the number of cases sent per operation. Failures are collected, then reported
    together."""
    schema = schemathesis.openapi.from_dict(gw.get("/openapi.json").json())
    session = requests.Session()
    failures: list[str] = []
    sent: dict[str, int] = {}
    operations: list[Operation] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # an operation the document describes wrongly
        operations.append(result.ok())
    assert len(operations) >= 29, [op.label for op in operations]

    def run(op: Operation, mode: GenerationMode, **fixed: Any) -> None:
        @given(case=op.as_strategy(generation_mode=mode, **fixed))
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,  # the same inputs on every run: a failure here is reproducible
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def one(case: Case) -> None:
            loopback_only(case)
            try:
                response = case.call(base_url=gw.url, session=session, headers=headers, timeout=15)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                # A deadline shorter than min_call_timeout_s (one another gateway passes on)
                # may run out between the service's head and its body: the head has gone
                # out, so the connection is cut (docs/api.md). Any other cut is a failure.
                if not hurried(case):
                    failures.append(f"{op.label} ({mode.value}): {case.as_curl_command()}: {e}")
                return
            sent[op.label] = sent.get(op.label, 0) + 1
            chosen = checks or CHECKS
            if (
                (response.status_code == 508 and looped(case))
                or (response.status_code == 504 and hurried(case))
                or unready(case, response)
            ):
                # The 5xx a request can ask for: a hop count at the limit says the call has
                # gone round gateways (508, passed back by the previous hop); a deadline of a
                # few milliseconds, passed on by another gateway, may run out (504); a service
                # an earlier generated registration put where nothing answers has no healthy
                # instance (503).
                chosen = [c for c in chosen if c is not not_a_server_error]
            try:
                case.validate_response(response, checks=chosen, headers=headers)
                if also is not None:
                    also(case, response)
            except (Exception, BaseExceptionGroup) as e:
                failures.append(f"{op.label} ({mode.value}): {e}")

        try:
            one()
        except Unsatisfiable:
            # A negative input cannot be made for an operation whose only parameters are
            # strings in the path (any string fits): its positive run covers it.
            assert mode is GenerationMode.NEGATIVE, op.label

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            run(op, mode)
        for label, params in EXISTING:
            if op.label == label:
                run(op, GenerationMode.POSITIVE, path_parameters=params)
    assert not failures, f"{len(failures)} failing cases:\n\n" + "\n\n".join(failures[:20])
    # Nothing left out: every operation of the document was sent inputs.
    assert set(sent) == {op.label for op in operations}, set(sent) ^ {o.label for o in operations}
    return sent


def test_no_generated_input_gets_a_5xx_without_auth(tmp_path: Path) -> None:
    with gateway(tmp_path, REGISTRATION_POLICY) as gw:
        fuzz(gw)
        # still serving
        assert gw.call("fault", "echo", {"text": "after"}).json()["content"][0]["text"] == "after"


def test_no_generated_input_gets_a_5xx_with_anonymous_roles(tmp_path: Path) -> None:
    with gateway(tmp_path, AUTH_POLICY + REGISTRATION_POLICY) as gw:
        fuzz(gw)
        assert gw.call("fault", "echo", {"text": "after"}).status_code == 200


def test_a_wrong_bearer_token_gets_401_on_every_operation(tmp_path: Path) -> None:
    def refused(case: Case, response: Response) -> None:
        if case.operation.path.startswith(PUBLIC):
            assert response.status_code < 500, response.content
            return
        assert response.status_code == 401, (case.as_curl_command(), response.content)
        assert response.headers["www-authenticate"][0].startswith("Bearer ")
        if case.method != "HEAD":  # no body
            assert json.loads(response.content)["type"].endswith("/unauthenticated")

    with gateway(tmp_path, AUTH_POLICY + REGISTRATION_POLICY) as gw:
        fuzz(
            gw,
            examples=10,
            headers={"Authorization": "Bearer not-a-token-this-gateway-knows"},
            also=refused,
        )


def test_the_document_resolves_and_names_each_operation_once(tmp_path: Path) -> None:
    with gateway(tmp_path, REGISTRATION_POLICY) as gw:
        doc = gw.get("/openapi.json").json()
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    schemas = doc["components"]["schemas"]
    assert refs and all(r.startswith("#/components/schemas/") for r in refs), refs
    assert {r.rsplit("/", 1)[1] for r in refs} <= set(schemas)
    assert "HTTPValidationError" not in schemas  # validation errors are problems
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    paths = doc["paths"]
    for path, models in (
        ("register", ["Registration", "OldRegistration"]),
        ("enqueue", ["Enqueue", "OldTopicTask", "OldTypedTask"]),
    ):
        body = paths[f"/api/v1/mesh/v2/{path}"]["post"]["requestBody"]
        shapes = body["content"]["application/json"]["schema"]["anyOf"]
        assert [s["$ref"].rsplit("/", 1)[1] for s in shapes] == models
    assert set(paths["/api/v1/mesh/v2/register"]["post"]["responses"]) >= {"200", "201", "422"}
    assert (
        "204"
        in paths["/api/v1/mesh/v2/services/{name}/instances/{instance_id}"]["delete"]["responses"]
    )
