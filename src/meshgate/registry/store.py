"""Durable storage of HTTP service registrations: SQLite in WAL mode under the data dir.

MCP instances are not stored: after a restart the supervisor starts and verifies fresh ones.
HTTP registrations are what a client asked for; they must survive a restart or a `kill -9` of
the gateway, so each is written (and committed) before the API acknowledges it. On start the
gateway reloads them; each instance then starts `starting` and earns `healthy` by its checks.

With encryption keys configured, secret metadata (keys starting with `secret_`) is stored
sealed (`meshgate.crypto`) and opened when read; a value that cannot be opened stays sealed,
with a log line naming the registration, and the registration still loads.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from meshgate.crypto import PLAIN, Cipher
from meshgate.storage import open_sqlite, scrub

log = logging.getLogger("meshgate.registry.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    body TEXT NOT NULL,
    registered_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS registrations_service ON registrations(service);
"""


class RegistrationStore:
    """Registrations by id, as JSON bodies; every write is committed before it returns."""

    def __init__(self, path: str | Path | None, *, cipher: Cipher = PLAIN) -> None:
        """`path` None keeps them in memory only (tests, `--data-dir ''`)."""
        self._cipher = cipher
        self._lock = threading.Lock()
        self.path, self._db = open_sqlite(path, SCHEMA)

    def put(self, id_: str, service: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO registrations (id, service, body, registered_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET service = excluded.service, "
                "body = excluded.body, heartbeat_at = excluded.heartbeat_at",
                (id_, service, self._dump(body), now, now),
            )

    def heartbeat(self, id_: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE registrations SET heartbeat_at = ? WHERE id = ?", (time.time(), id_)
            )
        return cur.rowcount > 0

    def delete(self, id_: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM registrations WHERE id = ?", (id_,))
        return cur.rowcount > 0

    def get(self, id_: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM registrations WHERE id = ?", (id_,)).fetchone()
        return self._load(id_, row[0]) if row else None

    def all(self) -> list[tuple[str, dict[str, Any], float]]:
        """(id, body, heartbeat_at) of every registration."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body, heartbeat_at FROM registrations ORDER BY id"
            ).fetchall()
        return [(r[0], self._load(r[0], r[1]), float(r[2])) for r in rows]

    def reencrypt(self) -> tuple[int, int]:
        """Seal every secret value anew with the first key (clear ones get sealed):
        (registrations rewritten, registrations with a value that could not be decrypted,
        left as they were)."""
        done = failed = 0
        with self._lock:
            self._db.execute("PRAGMA secure_delete = ON")  # the old values overwritten
            rows = self._db.execute("SELECT id, body FROM registrations").fetchall()
            for id_, old in rows:
                body = json.loads(old)
                if body.get("metadata"):
                    body["metadata"], bad = self._cipher.open_metadata(body["metadata"])
                    if bad:
                        failed += 1
                        continue
                self._db.execute(
                    "UPDATE registrations SET body = ? WHERE id = ? AND body = ?",
                    (self._dump(body), id_, old),
                )
                done += 1
            scrub(self._db)
        return done, failed

    def _dump(self, body: dict[str, Any]) -> str:
        metadata = body.get("metadata")
        if metadata:
            body = {**body, "metadata": self._cipher.seal_metadata(metadata)}
        return json.dumps(body, sort_keys=True)

    def _load(self, id_: str, stored: str) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(stored)
        if body.get("metadata"):
            body["metadata"], failed = self._cipher.open_metadata(body["metadata"])
            if failed:
                log.error(
                    "registration %s: metadata %s cannot be decrypted (encrypted with a key "
                    "that is not configured); kept encrypted",
                    id_,
                    ", ".join(failed),
                )
        return body

    def status(self) -> dict[str, Any]:
        try:
            with self._lock:
                (count,) = self._db.execute("SELECT COUNT(*) FROM registrations").fetchone()
        except sqlite3.Error as e:
            return {"store": self.path, "status": "error", "error": str(e)}
        return {"store": self.path, "status": "ok", "registrations": int(count)}

    def close(self) -> None:
        with self._lock:
            self._db.close()
