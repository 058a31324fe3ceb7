"""Opening the SQLite files of durable state (HTTP registrations, tasks), and checking at
start-up that they can be: a problem there is one clear line, not a traceback."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from meshgate.errors import ConfigError


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` (or `path` itself) that is not a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def check_dir(path: Path, what: str) -> None:
    """Create `path` with its parents if missing, and check that a file can be made in it;
    ConfigError naming `what` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        in_the_way = _file_in_the_way(path)
        if in_the_way == path:
            raise ConfigError(f"{what} {path} exists and is not a directory") from None
        if in_the_way is not None:
            raise ConfigError(
                f"{what} {path} cannot be created: {in_the_way} is a file, not a directory"
            ) from None
        raise ConfigError(f"{what} {path} cannot be created: {e.strerror or e}") from None
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".meshgate-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {path} is not writable: {e.strerror or e}") from None


def check_file(path: Path, what: str) -> None:
    """Check that the database file `path` can be created or written (its directory is
    created if missing); ConfigError naming `what` otherwise."""
    check_dir(path.parent, f"the directory of the {what}")
    if path.exists() and not path.is_file():
        raise ConfigError(f"{what} {path} is not a regular file")
    try:
        with open(path, "ab"):  # SQLite takes an empty file as an empty database
            pass
    except OSError as e:
        raise ConfigError(f"{what} {path} cannot be written: {e.strerror or e}") from None


def open_sqlite(path: str | Path | None, schema: str) -> tuple[str, sqlite3.Connection]:
    """(path shown in status, connection) for `path` in WAL mode, or in memory when None.

    Autocommit (`isolation_level=None`): every write is committed when it returns, and in WAL
    mode with `synchronous=NORMAL` it survives a kill of the process. A file that cannot be
    opened, or is not a database, raises ConfigError.
    """
    shown = str(path) if path is not None else ":memory:"
    db: sqlite3.Connection | None = None
    try:
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(shown, check_same_thread=False, isolation_level=None)
        if path is not None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(schema)
    except (OSError, sqlite3.Error) as e:
        if db is not None:
            db.close()
        raise ConfigError(f"cannot open the database {shown}: {e}") from None
    return shown, db


def scrub(db: sqlite3.Connection) -> None:
    """Leave no copy of rewritten rows behind in the file: free pages are rebuilt away
    (VACUUM) and the write-ahead log is checkpointed and emptied. For re-encryption, whose
    point is that the old bytes are gone; a reader holding the log open keeps it until the
    next checkpoint."""
    db.execute("VACUUM")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
