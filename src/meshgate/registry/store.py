"""Durable storage of HTTP service registrations: SQLite in WAL mode under the data dir.

MCP instances are not stored: after a restart the supervisor starts and verifies fresh ones.
HTTP registrations are what a client asked for; they must survive a restart or a `kill -9` of
the gateway, so each is written (and committed) before the API acknowledges it. On start the
gateway reloads them; each instance then starts `starting` and earns `healthy` by its checks.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from meshgate.storage import open_sqlite

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

    def __init__(self, path: str | Path | None) -> None:
        """`path` None keeps them in memory only (tests, `--data-dir ''`)."""
        self._lock = threading.Lock()
        self.path, self._db = open_sqlite(path, SCHEMA)

    def put(self, id_: str, service: str, body: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO registrations (id, service, body, registered_at, heartbeat_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET service = excluded.service, "
                "body = excluded.body, heartbeat_at = excluded.heartbeat_at",
                (id_, service, json.dumps(body, sort_keys=True), now, now),
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
        return json.loads(row[0]) if row else None

    def all(self) -> list[tuple[str, dict[str, Any], float]]:
        """(id, body, heartbeat_at) of every registration."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body, heartbeat_at FROM registrations ORDER BY id"
            ).fetchall()
        return [(r[0], json.loads(r[1]), float(r[2])) for r in rows]

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
