"""`meshgate keys`: API keys made, listed and revoked on the gateway's own key store (the
data dir's SQLite file, or the Redis registry), with no gateway running or beside one."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence

from meshgate.config import Settings
from meshgate.config.redis import is_redis_url
from meshgate.errors import ConfigError, InvalidArguments, MeshgateError
from meshgate.security.keys import (
    CACHE_S,
    Keys,
    keys_path,
    open_key_store,
    parse_expires,
    timestamp,
)
from meshgate.storage import check_file
from meshgate.urls import redact_url


def run(args: argparse.Namespace, settings: Settings) -> int:
    """`meshgate keys ACTION` on the key store of these settings; the exit code."""
    path = keys_path(settings)
    shared = is_redis_url(settings.mesh.registry)
    if path is None and not shared:
        print(
            "error: the data dir is set to '' (memory only): keys made here would be lost; "
            "name a --data-dir, or a redis:// --registry",
            file=sys.stderr,
        )
        return 2

    async def act() -> int:
        store = open_key_store(settings)
        try:
            if args.action == "create":
                return await _create(args, settings, store, where)
            if args.action == "list":
                return await _list(args, store)
            return await _revoke(args, store)
        finally:
            await store.close()

    try:
        if path is not None:
            check_file(path, "API key database")
            where = str(path.resolve())
        else:
            where = redact_url(settings.mesh.registry)
        return asyncio.run(act())
    except MeshgateError as e:
        print(f"error: {e.detail}", file=sys.stderr)
        return 2 if isinstance(e, (ConfigError, InvalidArguments)) else 1


async def _create(args: argparse.Namespace, settings: Settings, store: Keys, where: str) -> int:
    if not args.roles and args.service is None:
        print(
            "error: give the key a role: --role admin (every right) or a role defined as "
            "[roles.NAME] in meshgate.toml",
            file=sys.stderr,
        )
        return 2
    expires_at = parse_expires(args.expires, time.time()) if args.expires else None
    token, key = await store.create(
        args.name, args.roles, expires_at=expires_at, service=args.service
    )
    _warnings(settings, key.roles)
    if args.json:
        print(json.dumps({**key.to_json(), "key": token}, indent=2))
        return 0
    facts = [f"roles: {', '.join(key.roles) or 'none'}"]
    if key.service is not None:
        facts.append(f"service: {key.service}")
    expiry = "never" if key.expires_at is None else timestamp(key.expires_at)
    facts.append(f"expires: {expiry}")
    print(f"Created API key {key.id} for {key.name!r} ({'; '.join(facts)}) in {where}:")
    print()
    print(f"    {token}")
    print()
    print(
        "It cannot be shown again: store it now. Send it with each request as "
        "`Authorization: Bearer <key>` (or `X-API-Key: <key>`)."
    )
    return 0


def _warnings(settings: Settings, roles: Sequence[str]) -> None:
    """What a new key will not do yet: roles the policy does not define, auth turned off."""
    policy = settings.policy_path
    for role in roles:
        if role != "admin" and role not in settings.security.roles:
            where = f"in {policy}" if policy else "(no meshgate.toml was found)"
            print(
                f"warning: role {role!r} is neither the built-in 'admin' nor defined as "
                f"[roles.{role}] {where}: the key gets no rights from it until it is",
                file=sys.stderr,
            )
    auth = settings.security.auth
    if auth is None or not auth.enabled:
        why = f"no [auth] in {policy}" if policy else "no meshgate.toml was found"
        print(
            f"warning: authentication is off ({why}): the gateway asks for no key, and "
            "serves loopback only, until [auth] turns it on",
            file=sys.stderr,
        )
    elif not auth.api_keys:
        print(f"warning: {policy} says [auth] api_keys = false: keys are refused", file=sys.stderr)


async def _list(args: argparse.Namespace, store: Keys) -> int:
    keys, now = await store.list(), time.time()
    if args.json:
        print(json.dumps({"items": [k.to_json(now) for k in keys]}, indent=2))
        return 0
    if not keys:
        print("No API keys yet. Make the first with: meshgate keys create NAME --role admin")
        return 0
    rows = [("ID", "NAME", "ROLES", "SERVICE", "CREATED", "EXPIRES", "STATE")]
    for k in keys:
        rows.append(
            (
                k.id,
                k.name,
                ",".join(k.roles) or "-",
                k.service or "-",
                timestamp(k.created_at),
                "never" if k.expires_at is None else timestamp(k.expires_at),
                k.state(now),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


async def _revoke(args: argparse.Namespace, store: Keys) -> int:
    asked_at = time.time()
    key = await store.revoke(args.key_id)
    if key is None or key.revoked_at is None:
        print(
            f"error: no API key with id {args.key_id!r} (`meshgate keys list` shows them)",
            file=sys.stderr,
        )
        return 1
    if key.revoked_at < asked_at:
        print(f"API key {key.id} ({key.name}) was already revoked at {timestamp(key.revoked_at)}.")
        return 0
    print(
        f"Revoked API key {key.id} ({key.name}). Running gateways refuse it within {CACHE_S:g} s."
    )
    return 0
