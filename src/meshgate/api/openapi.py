"""The OpenAPI document as the gateway really answers: RFC 9457 problems (not FastAPI's
validation schema) for every error status a route can give, the request bodies routes read
themselves, and the refusals the middlewares add to every route (Host, Origin, JSON bodies,
authentication)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from meshgate.api.guard import PROXY_PREFIX, REST_PREFIX
from meshgate.api.problems import PROBLEM_JSON

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; members beyond these name what went wrong",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
    },
}
_REASONS = {
    400: "Invalid input (a body that is not JSON, or nests too deeply; a bad header)",
    401: "No valid credential",
    403: "Not allowed: the caller's roles, or a cross-site Origin on a write",
    404: "Not found",
    409: "Conflict: an active key of that name exists",
    413: "Request body too large",
    415: "A request body that is not JSON",
    421: "A Host this gateway does not serve",
    422: "Invalid arguments",
    429: "A rate limit spent, or a bound on sessions or queued tasks reached (Retry-After)",
    502: "The upstream failed or answered nonsense",
    503: "No healthy instance, circuit open, overloaded or shutting down",
    504: "The upstream did not answer in time",
    508: "Loop detected: too many hops through gateways",
}
_WRITES = frozenset({"post", "put", "patch", "delete"})
# Components the request bodies refer to, gathered from the models routes name.
_MODELS: list[type[BaseModel]] = []


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route for these error statuses, each a problem document."""
    return {status: _problem(status) for status in statuses}


def _problem(status: int) -> dict[str, Any]:
    return {"description": _REASONS[status], "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}}}


def json_body(*models: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON request body a route reads and validates itself:
    one model, or any of several (a route that tells shapes apart by their keys)."""
    refs: list[dict[str, Any]] = []
    for model in models:
        if model not in _MODELS:
            _MODELS.append(model)
        refs.append({"$ref": f"#/components/schemas/{model.__name__}"})
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {
        "requestBody": {"required": required, "content": {"application/json": {"schema": schema}}}
    }


def header_parameters(headers: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """`openapi_extra` documenting request headers a route reads itself: name -> (what it is
    for, its schema)."""
    return {
        "parameters": [
            {"name": name, "in": "header", "required": False, "description": what, "schema": schema}
            for name, (what, schema) in headers.items()
        ]
    }


def ok(description: str, *media_types: str) -> dict[str, Any]:
    """A success response whose body is not described further (JSON unless named)."""
    return {
        "description": description,
        "content": {m: {"schema": {}} for m in (media_types or ("application/json",))},
    }


def install(app: FastAPI, *, auth_enabled: bool, public_paths: Iterable[str] = ()) -> None:
    """Serve the document with what the routes and middlewares really answer."""
    public = frozenset(public_paths)

    def build() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
        # Validation errors answer as problems (api/problems.py), never in FastAPI's shape.
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        schemas["Problem"] = _PROBLEM_SCHEMA
        for model in _MODELS:
            found = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(found.pop("$defs", {}))
            schemas[model.__name__] = found
        ids: set[str] = set()
        for path, operations in doc.get("paths", {}).items():
            for method, operation in operations.items():
                _middleware_answers(path, method, operation, auth_enabled, public)
                # A route of several methods gets one id from FastAPI: ids must be unique.
                if operation.get("operationId") in ids:
                    base = operation["operationId"].rpartition("_")[0]
                    operation["operationId"] = f"{base}_{method}"
                ids.add(operation.get("operationId", ""))
        app.openapi_schema = doc
        return doc

    setattr(app, "openapi", build)  # noqa: B010 - FastAPI's documented way to replace it


def _middleware_answers(
    path: str, method: str, operation: dict[str, Any], auth_enabled: bool, public: frozenset[str]
) -> None:
    """Add the refusals of api/guard.py and api/auth.py to one operation's responses."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    add: list[int] = [421]
    if method in _WRITES and path.startswith(REST_PREFIX):
        add.append(403)
        if not path.startswith(PROXY_PREFIX):
            add.append(415)
    if auth_enabled and path not in public and not path.startswith("/.well-known/"):
        add += [401, 403]
    if path.startswith("/api/"):
        add.append(429)  # [[limits]] apply to every call and mesh operation
    for status in add:
        responses.setdefault(str(status), _problem(status))
    validation = responses.get("422")
    if validation is not None and "application/json" in validation.get("content", {}):
        responses["422"] = _problem(422)  # FastAPI's own entry: our 422 is a problem
