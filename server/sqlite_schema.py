"""Opening the SQLite file: the checks at start-up, our marker, the schema and its migrations.

Invariant: a file is written only once it is known to be ours (it carries our ``application_id``), is new and
empty, or holds exactly the tables of an exosphere-server from before the marker. Anything else (another
program's database, a file that is not a database, one from a newer exosphere-server) is refused without a write,
with a ``StoreError`` naming the file and the problem. Every start writes the marker in a transaction, so a file
that cannot be written is found here and not at the first trigger.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
from pathlib import Path

from .store import StoreError

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "check_path", "connect", "open_database"]

logger = logging.getLogger(__name__)

APPLICATION_ID = 0x45585350  # "EXSP" in the header's application_id field (PRAGMA application_id)
SCHEMA_VERSION = 2  # PRAGMA user_version; MIGRATIONS[v] brings a file from v - 1 to v
# The writer's page cache. Commits touch the newest pages of each table, so a small cache serves them; a 64 MiB one
# filled with every page a big run wrote (about 200 bytes of the scheduler's memory per state of a 100,000-state run).
CACHE_KIB = 8 * 1024
# How long a connection waits for another writer before SQLITE_BUSY (ms).
BUSY_TIMEOUT_MS = 5000

_TABLES = (
    """CREATE TABLE IF NOT EXISTS graphs (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (namespace, name))""",
    """CREATE TABLE IF NOT EXISTS graph_versions (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (namespace, name, version))""",
    """CREATE TABLE IF NOT EXISTS nodes (
    namespace TEXT NOT NULL, name TEXT NOT NULL, schema BLOB NOT NULL, updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, name))""",
    """CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, namespace TEXT NOT NULL, graph_name TEXT NOT NULL, graph_version INTEGER NOT NULL,
    status TEXT NOT NULL, store TEXT NOT NULL, created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL,
    state_counts TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS runs_pending ON runs (status) WHERE status = 'PENDING'",
    """CREATE TABLE IF NOT EXISTS states (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, identifier TEXT NOT NULL, node_name TEXT NOT NULL,
    status TEXT NOT NULL, inputs TEXT NOT NULL, attempt INTEGER NOT NULL, parent_id TEXT,
    parent_output INTEGER NOT NULL, path TEXT NOT NULL, outputs TEXT, error TEXT, pruned_data TEXT,
    created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL, run_at_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)

MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1: the marker, and indexes in ListRuns order (newest first, run id breaking ties) instead of time alone.
    1: (
        *_TABLES,
        "DROP INDEX IF EXISTS runs_by_namespace",
        "CREATE INDEX IF NOT EXISTS runs_by_time ON runs (namespace, created_at_ms DESC, run_id DESC)",
        "CREATE INDEX IF NOT EXISTS runs_by_graph ON runs (namespace, graph_name, created_at_ms DESC, run_id DESC)",
    ),
    # 2: which runtime ran a state, when it was handed to it, and how long it took.
    2: (
        "ALTER TABLE states ADD COLUMN runtime_name TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE states ADD COLUMN started_at_ms INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE states ADD COLUMN ran_ms INTEGER NOT NULL DEFAULT 0",
    ),
}

# The tables (and their columns) of an exosphere-server from before the marker: such a file is adopted.
_UNMARKED_TABLES = {
    "graphs": ["namespace", "name", "version", "spec"],
    "graph_versions": ["namespace", "name", "version", "spec"],
    "nodes": ["namespace", "name", "schema", "updated_at_ms"],
    "runs": [
        "run_id", "namespace", "graph_name", "graph_version", "status", "store", "created_at_ms", "updated_at_ms",
        "state_counts",
    ],
    "states": [
        "run_id", "seq", "identifier", "node_name", "status", "inputs", "attempt", "parent_id", "parent_output",
        "path", "outputs", "error", "pruned_data", "created_at_ms", "updated_at_ms", "run_at_ms",
    ],
    "kv": ["key", "value"],
}  # fmt: skip


def _problem(exc: sqlite3.Error) -> str:
    """What an SQLite error means for the file, in words a person running the scheduler can act on."""
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return "is not an SQLite database (or is encrypted)"
    if name.startswith("SQLITE_CORRUPT"):
        return f"is corrupt ({exc}); restore it from a backup"
    if name.startswith("SQLITE_READONLY"):
        return f"cannot be written ({exc}): check the permissions of the file, its directory and the filesystem"
    if name.startswith("SQLITE_CANTOPEN"):
        return f"cannot be opened ({exc}): check that it and its directory are readable and writable"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return f"is locked by another process ({exc})"
    return f"cannot be used: {exc}"


def store_error(path: Path, exc: sqlite3.Error) -> StoreError:
    return StoreError(f"database {path} {_problem(exc)}")


def check_path(path: Path) -> None:
    """Refuse, naming the problem, a path that cannot hold the database; before anything is created beside it."""
    if path.is_dir():
        raise StoreError(f"database {path} is a directory; give the path of a file (--db)")
    parent = path.parent
    if not parent.exists():
        raise StoreError(f"database {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise StoreError(f"database {path}: {parent} is not a directory")
    if path.exists() and not path.is_file():
        raise StoreError(f"database {path} is not a regular file")


def _create_private(path: Path) -> None:
    """Create the file owner-only; SQLite gives its -wal and -shm files the database file's mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise StoreError(f"database {path} cannot be created: {exc.strerror}") from None
    os.close(fd)


def connect(path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise store_error(path, exc) from None


def open_database(path: Path, *, synchronous: str) -> sqlite3.Connection:
    """The writing connection to a checked, initialised or migrated database. Raises StoreError."""
    check_path(path)
    _create_private(path)
    db = connect(path)
    try:
        _refuse_foreign(db, path)  # before any write: the file may be another program's
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        db.execute("BEGIN IMMEDIATE")
        try:
            version = _refuse_foreign(db, path)  # again, now that no other process can change it
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    db.execute(statement)
                if version:
                    logger.info("database %s migrated to schema version %d", path, target)
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")  # also a write on every start: read-only shows here
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        db.close()
        raise store_error(path, exc) from None
    except BaseException:
        db.close()
        raise
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("database %s is readable by others (mode %o); chmod 600 it", path, mode)
    return db


def _refuse_foreign(db: sqlite3.Connection, path: Path) -> int:
    """The file's schema version (0: new or from before the marker), or StoreError when it is not ours."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if app_id == APPLICATION_ID:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {path} was written by a newer exosphere-server (schema version {version}; "
                f"this one knows up to {SCHEMA_VERSION})"
            )
        return int(version)
    if app_id:
        raise StoreError(f"database {path} belongs to another application (application_id {app_id:#x}); refusing")
    tables = sorted(
        str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
    )
    if not tables:
        return 0
    found = {t: [str(c[0]) for c in db.execute("SELECT name FROM pragma_table_info(?)", (t,))] for t in tables}
    if found != _UNMARKED_TABLES:
        raise StoreError(
            f"database {path} is not an exosphere database (it has tables {', '.join(tables)} and no exosphere "
            "marker); refusing to use it"
        )
    return 0
