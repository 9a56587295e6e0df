"""The embedded SQLite store (WAL, one transaction per write batch)."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TypeVar

import pydantic

from . import sqlite_rows
from .models import GraphSpec, RunRow, StateRow
from .sqlite_rows import PreparedRows
from .sqlite_schema import BUSY_TIMEOUT_MS, connect, open_database, store_error
from .status import RunStatus, StateStatus
from .store import READ_COLUMNS, RUN_COLUMNS, STATE_COLUMNS, RunCursor, WriteBatch, prefix_range

__all__ = ["SqliteStore"]

logger = logging.getLogger(__name__)

_J = TypeVar("_J", dict, list)  # type: ignore[type-arg]
_S = TypeVar("_S", RunStatus, StateStatus)


class _RowError(Exception):
    """A stored row that cannot be read back (a column of the wrong type or not JSON)."""


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise _RowError(f"expected an integer, found {value!r:.80}")
    return value


def _status(kind: type[_S], value: object) -> _S:
    try:
        return kind(str(value))
    except ValueError:
        raise _RowError(f"not a {kind.__name__}: {value!r:.80}") from None


_decode = json.JSONDecoder().decode  # json.loads without its per-call argument checks
_STATE_STATUS = {status.value: status for status in StateStatus}


def _json(value: object, kind: type[_J]) -> _J:
    try:
        data = _decode(value if type(value) is str else str(value))
    except ValueError as exc:
        raise _RowError(f"not JSON: {exc}") from None
    if not isinstance(data, kind):
        raise _RowError(f"expected a JSON {kind.__name__}, found {value!r:.80}")
    return data


def _state_from_row(row: sqlite3.Row | tuple[object, ...]) -> StateRow:
    """A stored state. Reads of big runs convert thousands of these: positional construction, and the checks a row
    of the right types passes at once, cost about half of the general helpers."""
    (run_id, seq, identifier, node_name, status, inputs, attempt, parent_id, parent_output, path, outputs, error,
     pruned, created, updated, run_at, runtime_name, started, ran) = row  # fmt: skip
    state_status = _STATE_STATUS.get(status)  # type: ignore[arg-type]
    if state_status is None:
        state_status = _status(StateStatus, status)
    ints = (seq, attempt, parent_output, created, updated, run_at, started, ran)
    if not all(type(v) is int for v in ints):
        for v in ints:
            _int(v)
    return StateRow(
        f"{run_id}-{seq}",
        str(run_id),
        str(identifier),
        str(node_name),
        state_status,
        _json(inputs, dict),
        attempt,  # type: ignore[arg-type]
        str(parent_id) if parent_id else None,
        parent_output,  # type: ignore[arg-type]
        tuple(_json(path, list)),
        _json(outputs, list) if outputs is not None else None,
        _json(error, dict) if error is not None else None,
        str(pruned) if pruned is not None else None,
        created,  # type: ignore[arg-type]
        updated,  # type: ignore[arg-type]
        run_at,  # type: ignore[arg-type]
        seq,  # type: ignore[arg-type]
        str(runtime_name),
        started,  # type: ignore[arg-type]
        ran,  # type: ignore[arg-type]
    )


def _run_from_row(row: tuple[object, ...]) -> RunRow:
    run_id, namespace, graph_name, version, status, store, created, updated, counts = row
    return RunRow(
        run_id=str(run_id),
        namespace=str(namespace),
        graph_name=str(graph_name),
        graph_version=_int(version),
        status=_status(RunStatus, status),
        store=_json(store, dict),
        created_at_ms=_int(created),
        updated_at_ms=_int(updated),
        state_counts=_json(counts, dict),
    )


class SqliteStore:
    """Graphs, nodes, runs and states in one SQLite file, in WAL mode.

    ``synchronous=NORMAL`` with WAL keeps every committed transaction across a crash of the process (kill -9);
    only a power loss or an OS crash can drop the last transactions. ``durable=True`` sets ``synchronous=FULL``:
    an fsync per commit, and committed transactions survive a power loss too.

    Opening checks the file (server/sqlite_schema.py) and raises StoreError naming the problem.
    """

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        # One connection writes (from the engine's writer thread, or under the lock from the loop); another
        # reads, so reads never see a transaction in progress. WAL lets them run at the same time.
        self._lock = threading.Lock()
        self._db = open_database(self.path, synchronous="FULL" if durable else "NORMAL")
        self._reader = connect(self.path)
        self._reader.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Checkpoints (which fsync) run on a thread of their own, not inside a commit on the hot path: a commit
        # that happened to trigger SQLite's automatic checkpoint took milliseconds, the runs' tail latency.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpoint_stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, name="exosphere-checkpoint", daemon=True)
        self._checkpointer.start()

    @property
    def synchronous(self) -> str:
        """The ``synchronous`` level commits run with: NORMAL, or FULL when opened ``durable``."""
        with self._lock:
            level = self._db.execute("PRAGMA synchronous").fetchone()[0]
        return {1: "NORMAL", 2: "FULL"}.get(level, str(level))

    def prepare(self, batch: WriteBatch) -> PreparedRows:
        """Serialize the batch now (its states keep changing after this tick); cheap to hand to another thread."""
        return sqlite_rows.prepare(batch)

    def commit(self, prepared: object) -> None:
        """Write a prepared batch in one transaction. Safe to call from the writer thread."""
        assert isinstance(prepared, PreparedRows)
        with self._lock:
            self._db.execute("BEGIN")
            self._write_and_commit(prepared)

    def try_commit(self, prepared: object) -> bool:
        """Commit now if no one else is writing, else False at once (never waits: the event loop calls it).

        Another thread of this process holding the connection, or another process holding SQLite's write lock
        (someone writing with the ``sqlite3`` shell), makes it return False; the caller then commits on its writer
        thread, which waits for them as long as ``busy_timeout`` allows.
        """
        assert isinstance(prepared, PreparedRows)
        if not self._lock.acquire(blocking=False):
            return False
        try:
            db = self._db
            db.execute("PRAGMA busy_timeout=0")
            try:
                db.execute("BEGIN IMMEDIATE")  # takes the write lock now, or fails at once (SQLITE_BUSY)
            except sqlite3.OperationalError:
                return False
            finally:
                db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._write_and_commit(prepared)
            return True
        finally:
            self._lock.release()

    def _write_and_commit(self, prepared: PreparedRows) -> None:
        """The rows, then COMMIT, in the transaction the caller began under the lock; ROLLBACK when either fails."""
        try:
            sqlite_rows.write(self._db, prepared)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
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
        rows = self._start_read("SELECT namespace, name, version, spec FROM graphs")
        specs = []
        for namespace, name, version, text in rows:
            spec = _graph_spec(text, f"graphs namespace={namespace} name={name} version={version}")
            if spec is not None:
                specs.append(spec)
        return specs

    def load_graph_version(self, namespace: str, name: str, version: int) -> GraphSpec | None:
        row = self._reader.execute(
            "SELECT spec FROM graph_versions WHERE namespace=? AND name=? AND version=?", (namespace, name, version)
        ).fetchone()
        where = f"graph_versions namespace={namespace} name={name} version={version}"
        return _graph_spec(row[0], where) if row else None

    def save_nodes(self, namespace: str, schemas: Sequence[tuple[str, bytes]]) -> None:
        now = int(time.time() * 1000)
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO nodes (namespace, name, schema, updated_at_ms) VALUES (?,?,?,?)",
                [(namespace, name, schema, now) for name, schema in schemas],
            )

    def load_nodes(self) -> list[tuple[str, str, bytes]]:
        nodes = []
        for namespace, name, schema in self._start_read("SELECT namespace, name, schema FROM nodes"):
            if isinstance(schema, bytes):
                nodes.append((str(namespace), str(name), schema))
            else:
                logger.error("stored row unreadable, skipped: nodes namespace=%s name=%s: not a blob", namespace, name)
        return nodes

    def load_pending(
        self, *, shards: Collection[int] | None = None, shard_count: int = 1
    ) -> tuple[list[RunRow], list[StateRow]]:
        """Every pending run: a SQLite file has one scheduler, which owns every shard."""
        runs: list[RunRow] = []
        states: list[StateRow] = []
        for raw in self._start_read(f"SELECT {RUN_COLUMNS} FROM runs WHERE status='PENDING'"):
            where = f"runs run_id={raw[0]}"
            try:
                run = _run_from_row(raw)
                rows = self._start_read(f"SELECT {STATE_COLUMNS} FROM states WHERE run_id=? ORDER BY seq", run.run_id)
                run_states = []
                for row in rows:
                    where = f"states run_id={run.run_id} seq={row[1]}"
                    run_states.append(_state_from_row(row))
            except _RowError as exc:
                logger.error("stored row unreadable, run not recovered: %s: %s", where, exc)
                continue
            runs.append(run)
            states.extend(run_states)
        return runs, states

    def count_states(self, run_id: str) -> dict[str, int]:
        rows = self._reader.execute("SELECT status, count(*) FROM states WHERE run_id=? GROUP BY status", (run_id,))
        return {str(status): int(count) for status, count in rows}

    def get_run(self, run_id: str) -> RunRow | None:
        row = self._reader.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return _run_from_row(row) if row else None

    def get_states(self, run_id: str, after_seq: int, limit: int) -> list[StateRow]:
        rows = self._reader.execute(
            f"SELECT {STATE_COLUMNS} FROM states WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?",
            (run_id, after_seq, limit or -1),
        ).fetchall()
        return [_state_from_row(r) for r in rows]

    def get_state_rows(self, run_id: str, after_seq: int, limit: int) -> list[tuple[object, ...]]:
        """As ``get_states``, each state as its ``READ_COLUMNS``, unconverted (server/store.py StateRowReader)."""
        query = f"SELECT {READ_COLUMNS} FROM states WHERE run_id=? AND seq>? ORDER BY seq LIMIT ?"
        return self._reader.execute(query, (run_id, after_seq, limit or -1)).fetchall()

    def list_runs(
        self,
        namespace: str,
        graph_name: str | None,
        limit: int,
        *,
        after: RunCursor | None = None,
        status: str | None = None,
    ) -> list[RunRow]:
        # Served by the runs_by_time / runs_by_graph indexes, which hold exactly this order.
        query = f"SELECT {RUN_COLUMNS} FROM runs WHERE namespace=?"
        params: list[object] = [namespace]
        if graph_name:
            query += " AND graph_name=?"
            params.append(graph_name)
        if status:
            query += " AND status=?"
            params.append(status)
        if after is not None:
            query += " AND (created_at_ms, run_id) < (?, ?)"
            params += (after.created_at_ms, after.run_id)
        query += " ORDER BY created_at_ms DESC, run_id DESC LIMIT ?"
        params.append(limit)
        return [_run_from_row(r) for r in self._reader.execute(query, params)]

    def find_runs(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        bounds = prefix_range(prefix)
        if bounds is None:
            return []
        query = "SELECT run_id, namespace FROM runs WHERE run_id >= ? AND run_id < ? ORDER BY run_id LIMIT ?"
        return [(str(r[0]), str(r[1])) for r in self._reader.execute(query, (*bounds, limit))]

    def get_kv(self, key: str) -> str | None:
        row = self._reader.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _start_read(self, query: str, *params: object) -> list[tuple[object, ...]]:
        """Rows read at start-up; a file that cannot be read there is reported (StoreError), not a traceback."""
        try:
            return self._reader.execute(query, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise store_error(self.path, exc) from None

    def _checkpoint_loop(self, interval_s: float = 0.5) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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


def _graph_spec(text: object, where: str) -> GraphSpec | None:
    try:
        return GraphSpec.model_validate_json(str(text))
    except pydantic.ValidationError as exc:
        logger.error("stored row unreadable, skipped: %s: %s", where, str(exc).replace("\n", " "))
        return None


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
