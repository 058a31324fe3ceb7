"""The API key routes (`/api/v1/mesh/v2/keys`): create (the key shown once), list, revoke."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.responses import Response

from meshgate.api.openapi import json_body, problems
from meshgate.api.problems import read_json_object
from meshgate.api.responses import json_response
from meshgate.errors import InvalidArguments, NotFound
from meshgate.observability.audit import audit
from meshgate.security import principal_of
from meshgate.security.keys import KeyStore, parse_time

PREFIX = "/api/v1/mesh/v2/keys"
MAX_BODY_BYTES = 16 * 1024  # a key's description is a few hundred bytes
TEN_YEARS_S = 10 * 365 * 86400.0


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    roles: list[str] = Field(default_factory=list, max_length=64)
    expires_in_s: float | None = Field(None, gt=0, le=TEN_YEARS_S)
    expires_at: float | str | None = None
    """RFC 3339 (`2027-01-01T00:00:00Z`) or epoch seconds."""
    service: str | None = None

    @model_validator(mode="after")
    def _one_expiry(self) -> CreateKey:
        if self.expires_in_s is not None and self.expires_at is not None:
            raise ValueError("give expires_in_s or expires_at, not both")
        return self


def _expiry(req: CreateKey, now: float) -> float | None:
    if req.expires_in_s is not None:
        return now + req.expires_in_s
    if isinstance(req.expires_at, str):
        try:
            return parse_time(req.expires_at)
        except ValueError:
            raise InvalidArguments(
                f"expires_at {req.expires_at!r} is not an RFC 3339 time "
                "(2027-01-01T00:00:00Z) or epoch seconds"
            ) from None
    return req.expires_at


def build(store: KeyStore, require: Callable[[Request], Awaitable[None]]) -> APIRouter:
    """The routes on `store`; each first awaits `require(request)`, which raises when the
    caller may not manage keys."""
    api = APIRouter(prefix=PREFIX, tags=["keys"])

    @api.post(
        "",
        status_code=201,
        responses=problems(400, 409, 413, 422),
        openapi_extra=json_body(CreateKey),
    )
    async def create(request: Request) -> Response:
        await require(request)
        body = await read_json_object(request, MAX_BODY_BYTES)
        try:
            req = CreateKey.model_validate(body)
        except ValidationError as e:
            errors = [{"loc": list(x.get("loc", ())), "msg": x.get("msg", "")} for x in e.errors()]
            raise InvalidArguments("invalid key", extra={"errors": errors}) from None
        token, key = await store.create(
            req.name, req.roles, expires_at=_expiry(req, time.time()), service=req.service
        )
        audit(
            "key_created",
            principal=principal_of(request.scope).name,
            outcome="ok",
            key_id=key.id,
            name=key.name,
            roles=list(key.roles),
            service=key.service,
        )
        return json_response({**key.to_json(), "key": token}, 201)

    @api.get("")
    async def list_keys(request: Request) -> Response:
        await require(request)
        now = time.time()
        return json_response({"items": [k.to_json(now) for k in await store.list()]})

    @api.delete("/{key_id}", responses=problems(404))
    async def revoke(request: Request, key_id: str) -> Response:
        await require(request)
        key = await store.revoke(key_id)
        if key is None:
            raise NotFound(f"no API key with id {key_id!r}")
        audit(
            "key_revoked",
            principal=principal_of(request.scope).name,
            outcome="ok",
            key_id=key.id,
            name=key.name,
        )
        return json_response(key.to_json())

    return api
