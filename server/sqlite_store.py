"""The embedded SQLite store (WAL, one transaction per write batch)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from server.models import GraphSpec, RunRow, StateRow
from server.store import WriteBatch

__all__ = ["SqliteStore"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS graphs (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS graph_versions (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (namespace, name, version));
CREATE TABLE IF NOT EXISTS nodes (
    namespace TEXT NOT NULL, name TEXT NOT NULL, schema BLOB NOT NULL, updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, namespace TEXT NOT NULL, graph_name TEXT NOT NULL, graph_version INTEGER NOT NULL,
    status TEXT NOT NULL, store TEXT NOT NULL, created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL,
    state_counts TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_by_namespace ON runs (namespace, created_at_ms DESC);
CREATE INDEX IF NOT EXISTS runs_pending ON runs (status) WHERE status = 'PENDING';
CREATE TABLE IF NOT EXISTS states (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, identifier TEXT NOT NULL, node_name TEXT NOT NULL,
    status TEXT NOT NULL, inputs TEXT NOT NULL, attempt INTEGER NOT NULL, parent_id TEXT,
    parent_output INTEGER NOT NULL, path TEXT NOT NULL, outputs TEXT, error TEXT, pruned_data TEXT,
    created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL, run_at_ms INTEGER NOT NULL,
    PRIMARY KEY (run_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_STATE_COLUMNS = (
    "run_id, seq, identifier, node_name, status, inputs, attempt, parent_id, parent_output, path, outputs, error, "
    "pruned_data, created_at_ms, updated_at_ms, run_at_ms"
)

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _state_params(s: StateRow) -> tuple[object, ...]:
    return (
        s.run_id,
        s.seq,
        s.identifier,
        s.node_name,
        s.status,
        _dumps(s.inputs),
        s.attempt,
        s.parent_id,
        s.parent_output,
        _dumps(s.path),
        None if s.outputs is None else _dumps(s.outputs),
        None if s.error is None else _dumps(s.error),
        s.pruned_data,
        s.created_at_ms,
        s.updated_at_ms,
        s.run_at_ms,
    )


def _update_params(s: StateRow) -> tuple[object, ...]:
    return (
        s.status,
        s.attempt,
        None if s.outputs is None else _dumps(s.outputs),
        None if s.error is None else _dumps(s.error),
        s.pruned_data,
        s.updated_at_ms,
        s.run_at_ms,
        s.run_id,
        s.seq,
    )


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _state_from_row(row: sqlite3.Row | tuple[object, ...]) -> StateRow:
    (run_id, seq, identifier, node_name, status, inputs, attempt, parent_id, parent_output, path, outputs, error,
     pruned, created, updated, run_at) = row  # fmt: skip
    return StateRow(
        state_id=f"{run_id}-{seq}",
        run_id=str(run_id),
        identifier=str(identifier),
        node_name=str(node_name),
        status=str(status),
        inputs=json.loads(str(inputs)),
        attempt=_int(attempt),
        parent_id=str(parent_id) if parent_id else None,
        parent_output=_int(parent_output),
        path=tuple(json.loads(str(path))),
        outputs=json.loads(str(outputs)) if outputs is not None else None,
        error=json.loads(str(error)) if error is not None else None,
        pruned_data=str(pruned) if pruned is not None else None,
        created_at_ms=_int(created),
        updated_at_ms=_int(updated),
        run_at_ms=_int(run_at),
        seq=_int(seq),
    )


def _run_from_row(row: tuple[object, ...]) -> RunRow:
    run_id, namespace, graph_name, version, status, store, created, updated, counts = row
    return RunRow(
        run_id=str(run_id),
        namespace=str(namespace),
        graph_name=str(graph_name),
        graph_version=_int(version),
        status=str(status),
        store=json.loads(str(store)),
        created_at_ms=_int(created),
        updated_at_ms=_int(updated),
        state_counts=json.loads(str(counts)),
    )


_RUN_COLUMNS = "run_id, namespace, graph_name, graph_version, status, store, created_at_ms, updated_at_ms, state_counts"


class SqliteStore:
    """Graphs, nodes, runs and states in one SQLite file, in WAL mode.

    ``synchronous=NORMAL`` with WAL keeps every committed transaction across a crash of the process (kill -9);
    only a power loss can drop the last transactions. Set ``durable=True`` for ``synchronous=FULL``.
    """

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        # One connection writes (from the engine's writer thread, or under the lock from the loop); another
        # reads, so reads never see a transaction in progress. WAL lets them run at the same time.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute("PRAGMA cache_size=-65536")
        self._db.executescript(_SCHEMA)
        self._reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._reader.execute("PRAGMA busy_timeout=5000")
        # Checkpoints (which fsync) run on a thread of their own, not inside a commit on the hot path: a commit
        # that happened to trigger SQLite's automatic checkpoint took milliseconds, the runs' tail latency.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpoint_stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="exosphere-checkpoint", daemon=True)
        self._checkpointer.start()

    def prepare(self, batch: WriteBatch) -> _Prepared:
        """Serialize the batch now (its states keep changing after this tick); cheap to hand to another thread."""
        return _Prepared(
            inserts=[_state_params(s) for s in batch.new_states],
            updates=[_update_params(s) for s in batch.updated_states],
            runs=[
                (
                    r.run_id,
                    r.namespace,
                    r.graph_name,
                    r.graph_version,
                    r.status,
                    _dumps(r.store),
                    r.created_at_ms,
                    r.updated_at_ms,
                    _dumps(r.state_counts),
                )
                for r in batch.runs
            ],
            kv=list(batch.kv.items()),
        )

    def commit(self, prepared: object) -> None:
        """Write a prepared batch in one transaction. Safe to call from the writer thread."""
        assert isinstance(prepared, _Prepared)
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                if prepared.inserts:
                    db.executemany(
                        f"INSERT OR REPLACE INTO states ({_STATE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        prepared.inserts,
                    )
                if prepared.updates:
                    db.executemany(
                        "UPDATE states SET status=?, attempt=?, outputs=?, error=?, pruned_data=?, updated_at_ms=?, "
                        "run_at_ms=? WHERE run_id=? AND seq=?",
                        prepared.updates,
                    )
                if prepared.runs:
                    db.executemany(
                        f"INSERT OR REPLACE INTO runs ({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", prepared.runs
                    )
                if prepared.kv:
                    db.executemany("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", prepared.kv)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def write(self, batch: WriteBatch) -> None:
        self.commit(self.prepare(batch))

    def save_graph(self, spec: GraphSpec) -> None:
        text = spec.model_dump_json()
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO graphs (namespace, name, version, spec) VALUES (?,?,?,?)",
                (spec.namespace, spec.name, spec.version, text),
            )
            self._db.execute(
                "INSERT OR REPLACE INTO graph_versions (namespace, name, version, spec) VALUES (?,?,?,?)",
                (spec.namespace, spec.name, spec.version, text),
            )

    def delete_graph(self, namespace: str, name: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM graphs WHERE namespace=? AND name=?", (namespace, name))

    def load_graphs(self) -> list[GraphSpec]:
        rows = self._reader.execute("SELECT spec FROM graphs").fetchall()
        return [GraphSpec.model_validate_json(r[0]) for r in rows]

    def load_graph_version(self, namespace: str, name: str, version: int) -> GraphSpec | None:
        row = self._reader.execute(
            "SELECT spec FROM graph_versions WHERE namespace=? AND name=? AND version=?", (namespace, name, version)
        ).fetchone()
        return GraphSpec.model_validate_json(row[0]) if row else None

    def save_node(self, namespace: str, name: str, schema: bytes) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT OR REPLACE INTO nodes (namespace, name, schema, updated_at_ms) VALUES (?,?,?,?)",
                (namespace, name, schema, int(time.time() * 1000)),
            )

    def load_nodes(self) -> list[tuple[str, str, bytes]]:
        return [
            (str(a), str(b), bytes(c)) for a, b, c in self._reader.execute("SELECT namespace, name, schema FROM nodes")
        ]

    def load_pending(self) -> tuple[list[RunRow], list[StateRow]]:
        runs = [
            _run_from_row(r) for r in self._reader.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE status='PENDING'")
        ]
        states: list[StateRow] = []
        for run in runs:
            states.extend(self.get_states(run.run_id, -1, 0))
        return runs, states

    def get_run(self, run_id: str) -> RunRow | None:
        row = self._reader.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _run_from_row(row) if row else None

    def get_states(self, run_id: str, after_seq: int, limit: int) -> list[StateRow]:
        rows = self._reader.execute(
            f"SELECT {_STATE_COLUMNS} FROM states WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?",
            (run_id, after_seq, limit or -1),
        ).fetchall()
        return [_state_from_row(r) for r in rows]

    def list_runs(
        self, namespace: str, graph_name: str | None, before_ms: int, limit: int, status: str | None = None
    ) -> list[RunRow]:
        query = f"SELECT {_RUN_COLUMNS} FROM runs WHERE namespace=?"
        params: list[object] = [namespace]
        if status:
            query += " AND status=?"
            params.append(status)
        if graph_name:
            query += " AND graph_name=?"
            params.append(graph_name)
        if before_ms:
            query += " AND created_at_ms<?"
            params.append(before_ms)
        query += " ORDER BY created_at_ms DESC, run_id DESC LIMIT ?"
        params.append(limit)
        return [_run_from_row(r) for r in self._reader.execute(query, params)]

    def get_kv(self, key: str) -> str | None:
        row = self._reader.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _checkpoint_loop(self, interval_s: float = 0.5) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        try:
            while not self._checkpoint_stop.wait(interval_s):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or locked: the next round catches up
                    logger.debug("checkpoint skipped: %s", exc)
        finally:
            db.close()

    def close(self) -> None:
        self._checkpoint_stop.set()
        self._checkpointer.join(5)
        with self._lock:
            self._db.close()
        self._reader.close()

    def _transaction(self) -> _Tx:
        return _Tx(self._db, self._lock)


@dataclass(slots=True)
class _Prepared:
    inserts: list[tuple[object, ...]]
    updates: list[tuple[object, ...]]
    runs: list[tuple[object, ...]]
    kv: list[tuple[str, str]]


class _Tx:
    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        self._db.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()
