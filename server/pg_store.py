"""The PostgreSQL store: the same ``Store`` Protocol as SQLite, over asyncpg, so the engine runs unchanged.

The seam. The Protocol is synchronous: the engine reads (``get_run``, ``get_states``, ``list_runs``, ``get_kv``,
``load_*``) from the event loop's thread and commits from one writer thread (server/commit.py). asyncpg is async,
so the store owns a dedicated I/O thread running its own event loop and a small asyncpg pool; every Protocol
method submits a coroutine there (``asyncio.run_coroutine_threadsafe``) and waits for ``.result(timeout)``. Reads
are short indexed queries, as SQLite's reads are today, so blocking the engine's loop for one of them costs about
what a SQLite read does plus a loopback round trip; the engine reads only at start-up and for runs it no longer
holds. Commits block only the writer thread. A later step may make the seam async; the pool and the coroutines
stay as they are. Nothing waits without a bound: connecting has ``connect_timeout``, every call ``call_timeout``,
and a database that is down or silent surfaces as ``DatabaseUnavailableError`` naming host, port and database
(never the password). ``close()`` is idempotent and stops the thread.

Writes. ``prepare`` (the loop's thread) serializes the tick's rows into column arrays, since states keep
changing after the tick; ``commit`` (the writer thread) writes them in ONE transaction with one statement per
table: ``INSERT ... SELECT FROM unnest($1::text[], ...)`` upserts and ``UPDATE ... FROM unnest(...)``, and many new
states by binary ``COPY`` (falling back to the upsert, inside the same transaction, if one of them is stored
already), so a 10,000-state fan-out is a handful of round trips, not 10,000. A small batch (a lone state's
result) is the same four statements as data-modifying CTEs of ONE statement: one round trip, no BEGIN or COMMIT.
Upserts replace whole rows, as SQLite's ``INSERT OR REPLACE`` does; updates of a state that is not stored change
nothing, as in SQLite.

Schema and migrations: server/pg_schema.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Collection, Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar

import asyncpg

from exosphere.errors import ConflictError

from .config import describe_dsn
from .jsontext import dumps
from .models import GraphSpec, RunRow, StateRow
from .packed import outputs_json
from .pg_rows import (
    CONNECT_REFUSED,
    FIND_RUNS,
    INSERT_STATES,
    ONE_STATEMENT,
    STATE_COLUMN_NAMES,
    UNAVAILABLE,
    UPDATE_STATES,
    UPSERT_KV,
    UPSERT_RUNS,
    WIDTHS,
    DatabaseUnavailableError,
    Prepared,
    check_fence,
    columns,
    graph_spec,
    keep_session,
    list_runs_query,
    run_from_record,
    state_from_record,
)
from .pg_schema import migrate
from .shards import MAX_SHARDS, shard_of
from .store import RUN_COLUMNS, STATE_COLUMNS, RunCursor, WriteBatch, prefix_range

__all__ = ["DEFAULT_SHARDS", "DatabaseUnavailableError", "PostgresStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"

# Rows per statement: a 10,000-state fan-out is one statement per table; bigger batches are cut so that no one
# message to the server grows without bound.
CHUNK_ROWS = 20_000
# New states from this many on go in by binary COPY: measured on 10,000 states, 30 ms against 105 ms for the same
# rows through INSERT ... SELECT FROM unnest (COPY inserts many rows per heap call and skips the executor).
COPY_MIN_ROWS = 256


# The number of shards of a new database (fixed for its life; see server/shards.py), kept in kv 'cluster:shards'.
DEFAULT_SHARDS = 64
_SHARDS_KEY = "cluster:shards"


class PostgresStore:
    """Graphs, nodes, runs and states in a PostgreSQL database; ``PostgresStore(dsn)`` connects and migrates.

    Durability matches SQLite's two levels (``--durability``). By default commits run with
    ``synchronous_commit=off``: a commit is acknowledged once PostgreSQL has it in memory, so it survives any crash of
    the scheduler, and only a crash of the PostgreSQL server (or its host) within a fraction of a second of it can
    lose it, as only a power loss can with SQLite's ``synchronous=NORMAL``. Waiting for the WAL fsync doubled a lone
    commit here (0.8 ms against 0.4 ms; benchmarks/store_commit.py), and a lone state commits twice. ``durable=True``
    (``--durability full``) sets ``on``: an fsync per commit.

    Raises ``DatabaseUnavailableError`` when the database cannot be reached within ``connect_timeout``, and
    ``SchemaTooNewError`` or ``ForeignSchemaError`` (server/pg_schema.py) when its schema is not one to use.
    """

    def __init__(
        self,
        dsn: str,
        *,
        durable: bool = False,
        shards: int = DEFAULT_SHARDS,
        pool_size: int = 4,
        connect_timeout: timedelta = timedelta(seconds=10),
        call_timeout: timedelta = timedelta(seconds=30),
        transaction_timeout: timedelta = timedelta(seconds=5),
    ) -> None:
        self.dsn = dsn
        self.where = describe_dsn(dsn)
        self.durable = durable
        self._connect_timeout_s = connect_timeout.total_seconds()
        self._call_timeout_s = call_timeout.total_seconds()
        self._transaction_timeout = transaction_timeout
        self._pool: _Pool | None = None
        # The database's shard count: ``shards`` when this call creates it, else what it was created with.
        self.shard_count = shards
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="exosphere-postgres", daemon=True)
        self._thread.start()
        try:
            self._pool = self._call(self._open(pool_size), 2 * self._connect_timeout_s + self._call_timeout_s)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ the seam

    def _call(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run ``coro`` on the I/O thread and wait for it, at most ``timeout_s`` (default ``call_timeout``)."""
        if self._closed:
            coro.close()
            raise DatabaseUnavailableError(self.where, "the store is closed")
        timeout_s = self._call_timeout_s if timeout_s is None else timeout_s
        future = asyncio.run_coroutine_threadsafe(self._guard(coro), self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:  # the wait ran out: _guard turns a statement's timeout into ours
            future.cancel()
            raise DatabaseUnavailableError(self.where, f"no answer within {timeout_s:g}s") from None

    async def _guard(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        except DatabaseUnavailableError:  # an OSError already saying so
            raise
        except UNAVAILABLE as exc:
            raise DatabaseUnavailableError(self.where, f"{type(exc).__name__}: {exc}") from exc
        except asyncpg.InterfaceError as exc:
            if "connection is closed" not in str(exc):  # any other interface error is a bug, not an outage
                raise
            raise DatabaseUnavailableError(self.where, f"the connection was closed: {exc}") from exc
        except asyncpg.exceptions.InternalClientError as exc:
            # Seen when the server ends a session while asyncpg is mid-statement on it (a scheduler paused inside a
            # commit, its transaction ended by idle_in_transaction_session_timeout): the work is undone, so it is
            # tried again (on a fresh connection, under the same fence) like any outage.
            raise DatabaseUnavailableError(self.where, f"the connection broke: {exc}") from exc

    async def _open(self, pool_size: int) -> _Pool:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self._connect_timeout_s)
        except (*UNAVAILABLE, *CONNECT_REFUSED) as exc:
            raise DatabaseUnavailableError(self.where, f"cannot connect: {type(exc).__name__}: {exc}") from exc
        try:
            found = await migrate(conn, self.where)
            await conn.execute(
                "INSERT INTO kv (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                _SHARDS_KEY,
                str(self.shard_count),
            )
            self.shard_count = int(await conn.fetchval("SELECT value FROM kv WHERE key = $1", _SHARDS_KEY))
        finally:
            await conn.close(timeout=self._connect_timeout_s)
        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=pool_size,
            timeout=self._connect_timeout_s,
            command_timeout=self._call_timeout_s,
            server_settings={
                "synchronous_commit": "on" if self.durable else "off",
                # A scheduler paused or cut off inside a commit must not keep its lease rows locked (a takeover would
                # wait on them forever): PostgreSQL ends a transaction left idle this long, and the commit is fenced
                # when it is tried again.
                "idle_in_transaction_session_timeout": str(int(self._transaction_timeout.total_seconds() * 1000)),
            },
            reset=keep_session,
        )
        logger.info("postgres store open where=%s schema_version_found=%d", self.where, found)
        return pool

    @property
    def pool(self) -> _Pool:
        if self._pool is None:
            raise DatabaseUnavailableError(self.where, "the store is closed")
        return self._pool

    def close(self) -> None:
        """Close the pool and stop the I/O thread. Idempotent; bounded in time."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(asyncio.wait_for(pool.close(), 5), self._loop)
            try:
                future.result(6)
            except Exception as exc:  # a connection that would not close: cut it, the server rolls back
                logger.warning("postgres pool did not close cleanly where=%s error=%s", self.where, exc)
                self._loop.call_soon_threadsafe(pool.terminate)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    # ------------------------------------------------------------------ writes

    def prepare(self, batch: WriteBatch) -> Prepared:
        """Serialize the batch now (its states keep changing after this tick); cheap to hand to another thread."""
        inserts = {
            (s.run_id, s.seq): (
                s.run_id, s.seq, s.identifier, s.node_name, s.status, dumps(s.inputs), s.attempt, s.parent_id,
                s.parent_output, dumps(s.path), None if s.outputs is None else outputs_json(s.outputs),
                None if s.error is None else dumps(s.error), s.pruned_data, s.created_at_ms, s.updated_at_ms,
                s.run_at_ms, s.runtime_name, s.started_at_ms, s.ran_ms,
            )
            for s in batch.new_states
        }  # fmt: skip
        updates = {
            (s.run_id, s.seq): (
                s.run_id, s.seq, s.status, s.attempt, None if s.outputs is None else outputs_json(s.outputs),
                None if s.error is None else dumps(s.error), s.pruned_data, s.updated_at_ms, s.run_at_ms,
                s.runtime_name, s.started_at_ms, s.ran_ms,
            )
            for s in batch.updated_states
        }  # fmt: skip
        runs = {
            r.run_id: (
                shard_of(r.run_id, MAX_SHARDS), r.run_id, r.namespace, r.graph_name, r.graph_version, r.status,
                dumps(r.store), r.created_at_ms, r.updated_at_ms, dumps(r.state_counts),
            )
            for r in batch.runs
        }  # fmt: skip
        return Prepared(
            list(inserts.values()),
            list(updates.values()),
            list(runs.values()),
            list(batch.kv.items()),
            fence=batch.fence,
            disjoint=not (inserts.keys() & updates.keys()),
        )

    def commit(self, prepared: object) -> None:
        """Write a prepared batch in one transaction. Safe to call from the writer thread."""
        assert isinstance(prepared, Prepared)
        self._call(self._commit(prepared))

    def write(self, batch: WriteBatch) -> None:
        self.commit(self.prepare(batch))

    async def _commit(self, p: Prepared) -> None:
        tables: tuple[Sequence[tuple[object, ...]], ...] = (p.inserts, p.updates, p.runs, p.kv)
        unfenced = p.fence is None or not p.fence.epochs
        if unfenced and p.disjoint and len(p.inserts) < COPY_MIN_ROWS and max(map(len, tables)) <= CHUNK_ROWS:
            args = [column for rows, width in zip(tables, WIDTHS, strict=True) for column in columns(rows, width)]
            await self.pool.execute(ONE_STATEMENT, *args)
            return
        async with self.pool.acquire() as conn, conn.transaction():
            if p.fence is not None and p.fence.epochs:
                await check_fence(conn, p.fence)
            inserts = p.inserts
            if len(inserts) >= COPY_MIN_ROWS:
                try:
                    async with conn.transaction():  # a savepoint: a state stored already sends all to the upsert
                        await conn.copy_records_to_table("states", records=inserts, columns=STATE_COLUMN_NAMES)
                    inserts = []
                except asyncpg.UniqueViolationError:
                    logger.debug("new states already stored; upserting them instead count=%d", len(inserts))
            for statement, rows, width in zip(
                (INSERT_STATES, UPDATE_STATES, UPSERT_RUNS, UPSERT_KV), (inserts, *tables[1:]), WIDTHS, strict=True
            ):
                for start in range(0, len(rows), CHUNK_ROWS):
                    await conn.execute(statement, *columns(rows[start : start + CHUNK_ROWS], width))

    def save_graph(self, spec: GraphSpec) -> None:
        self._call(self._save_graph(spec))

    async def _save_graph(self, spec: GraphSpec) -> None:
        text = spec.model_dump_json()
        async with self.pool.acquire() as conn, conn.transaction():
            # A version is written once: two replicas saving the same graph at once cannot both make version N.
            inserted = await conn.fetchval(
                "INSERT INTO graph_versions (namespace, name, version, spec) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (namespace, name, version) DO NOTHING RETURNING version",
                spec.namespace, spec.name, spec.version, text,
            )  # fmt: skip
            if inserted is None:
                raise ConflictError(
                    f"graph {spec.name!r} version {spec.version} was saved meanwhile by another scheduler replica; "
                    "save it again",
                    namespace=spec.namespace,
                    graph_name=spec.name,
                )
            await conn.execute(
                "INSERT INTO graphs (namespace, name, version, spec) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (namespace, name) DO UPDATE SET version = EXCLUDED.version, spec = EXCLUDED.spec",
                spec.namespace, spec.name, spec.version, text,
            )  # fmt: skip

    def delete_graph(self, namespace: str, name: str) -> None:
        self._call(self.pool.execute("DELETE FROM graphs WHERE namespace = $1 AND name = $2", namespace, name))

    def save_nodes(self, namespace: str, schemas: Sequence[tuple[str, bytes]]) -> None:
        self._call(self._save_nodes(namespace, schemas))

    async def _save_nodes(self, namespace: str, schemas: Sequence[tuple[str, bytes]]) -> None:
        now = int(time.time() * 1000)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO nodes (namespace, name, schema, updated_at_ms) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (namespace, name) DO UPDATE SET schema = EXCLUDED.schema, "
                "updated_at_ms = EXCLUDED.updated_at_ms",
                [(namespace, name, schema, now) for name, schema in schemas],
            )

    # ------------------------------------------------------------------ reads

    def load_graphs(self) -> list[GraphSpec]:
        rows = self._call(self.pool.fetch("SELECT namespace, name, version, spec FROM graphs ORDER BY namespace, name"))
        specs = (
            graph_spec(r["spec"], f"graphs namespace={r['namespace']} name={r['name']} version={r['version']}")
            for r in rows
        )
        return [spec for spec in specs if spec is not None]

    def load_graph_version(self, namespace: str, name: str, version: int) -> GraphSpec | None:
        text = self._call(
            self.pool.fetchval(
                "SELECT spec FROM graph_versions WHERE namespace = $1 AND name = $2 AND version = $3",
                namespace, name, version,
            )
        )  # fmt: skip
        where = f"graph_versions namespace={namespace} name={name} version={version}"
        return graph_spec(text, where) if text is not None else None

    def load_nodes(self) -> list[tuple[str, str, bytes]]:
        rows = self._call(self.pool.fetch("SELECT namespace, name, schema FROM nodes ORDER BY namespace, name"))
        return [(r["namespace"], r["name"], bytes(r["schema"])) for r in rows]

    def load_pending(
        self, *, shards: Collection[int] | None = None, shard_count: int = MAX_SHARDS
    ) -> tuple[list[RunRow], list[StateRow]]:
        """Runs still PENDING (of ``shards`` among ``shard_count``; None: all), oldest first, and their states by
        run and sequence. ``runs.shard`` holds the run's shard among ``MAX_SHARDS`` (server/shards.py), so its
        shard among any count dividing that is ``shard % shard_count``: a replica's share is one indexed scan.

        Both come from one snapshot (REPEATABLE READ), so no state is missing for a run read a moment earlier.
        """
        return self._call(self._load_pending(None if shards is None else list(shards), shard_count))

    async def _load_pending(self, shards: list[int] | None, count: int) -> tuple[list[RunRow], list[StateRow]]:
        where = "r.status = 'PENDING'" + ("" if shards is None else " AND r.shard % $2 = ANY($1::int[])")
        args: list[object] = [] if shards is None else [shards, count]
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            runs = await conn.fetch(
                f"SELECT {RUN_COLUMNS} FROM runs r WHERE {where} ORDER BY r.created_at_ms, r.run_id", *args
            )
            states = await conn.fetch(
                f"SELECT {', '.join('s.' + c for c in STATE_COLUMNS.split(', '))} FROM runs r "
                f"JOIN states s ON s.run_id = r.run_id WHERE {where} ORDER BY r.created_at_ms, r.run_id, s.seq",
                *args,
            )
        by_run: dict[str, list[asyncpg.Record]] = {}
        for record in states:
            by_run.setdefault(record["run_id"], []).append(record)
        run_rows: list[RunRow] = []
        state_rows: list[StateRow] = []
        for record in runs:
            # A run with a row that cannot be read is left out whole: half a run would run wrongly.
            where = f"runs run_id={record['run_id']}"
            try:
                run = run_from_record(record)
                run_states = []
                for state in by_run.get(run.run_id, ()):
                    where = f"states run_id={run.run_id} seq={state['seq']}"
                    run_states.append(state_from_record(state))
            except (ValueError, TypeError) as exc:  # not JSON, or not a status
                logger.error("stored row unreadable, run not recovered: %s: %s", where, exc)
                continue
            run_rows.append(run)
            state_rows.extend(run_states)
        return run_rows, state_rows

    def count_states(self, run_id: str) -> dict[str, int]:
        rows = self._call(
            self.pool.fetch("SELECT status, count(*) AS n FROM states WHERE run_id = $1 GROUP BY status", run_id)
        )
        return {str(r["status"]): int(r["n"]) for r in rows}

    def get_run(self, run_id: str) -> RunRow | None:
        row = self._call(self.pool.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1", run_id))
        return run_from_record(row) if row is not None else None

    def get_states(self, run_id: str, after_seq: int, limit: int) -> list[StateRow]:
        """States of a run with ``seq > after_seq``, by sequence, at most ``limit`` (0: all); [] for unknown runs."""
        rows = self._call(
            self.pool.fetch(
                f"SELECT {STATE_COLUMNS} FROM states WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                run_id, after_seq, limit or None,
            )
        )  # fmt: skip
        return [state_from_record(r) for r in rows]

    def list_runs(
        self,
        namespace: str,
        graph_name: str | None,
        limit: int,
        *,
        after: RunCursor | None = None,
        status: str | None = None,
    ) -> list[RunRow]:
        """At most ``limit`` runs (of one graph and status when given; "" means any), in ``RunCursor`` order
        (created_at_ms DESC, run_id DESC), after ``after``. Served by runs_by_namespace / runs_by_graph."""
        query, args = list_runs_query(namespace, graph_name, limit, after, status)
        return [run_from_record(r) for r in self._call(self.pool.fetch(query, *args))]

    def find_runs(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        bounds = prefix_range(prefix)
        if bounds is None:
            return []
        rows = self._call(self.pool.fetch(FIND_RUNS, *bounds, prefix, limit))
        return [(str(r["run_id"]), str(r["namespace"])) for r in rows]

    def get_kv(self, key: str) -> str | None:
        value = self._call(self.pool.fetchval("SELECT value FROM kv WHERE key = $1", key))
        return None if value is None else str(value)
