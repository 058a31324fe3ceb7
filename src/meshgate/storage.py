"""Opening the SQLite files of durable state (HTTP registrations, tasks)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_sqlite(path: str | Path | None, schema: str) -> tuple[str, sqlite3.Connection]:
    """(path shown in status, connection) for `path` in WAL mode, or in memory when None.

    Autocommit (`isolation_level=None`): every write is committed when it returns, and in WAL
    mode with `synchronous=NORMAL` it survives a kill of the process.
    """
    shown = str(path) if path is not None else ":memory:"
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(shown, check_same_thread=False, isolation_level=None)
    if path is not None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return shown, db
