"""PostgreSQL rows: the statements the store runs, and conversions between rows and the engine's types.

See server/pg_store.py for how they are used (one transaction per commit, batched by ``unnest`` and ``COPY``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import pydantic

from exosphere.errors import ConnectionFailedError

from .models import GraphSpec, RunRow, StateRow
from .status import RunStatus, StateStatus
from .store import RUN_COLUMNS, STATE_COLUMNS, Fence, FencedError, RunCursor

logger = logging.getLogger(__name__)


class DatabaseUnavailableError(ConnectionFailedError):
    """PostgreSQL cannot be reached, refused the connection, or did not answer in time (travels as UNAVAILABLE)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"PostgreSQL at {where} is unavailable: {problem}")
        self.where = where


# Errors that mean "the database is not there", not "the statement is wrong".
UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    # The server ended a transaction left idle too long (a scheduler paused mid-commit): try it again, fenced.
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
)
# Errors that are only possible while connecting: a wrong database name, user or password.
CONNECT_REFUSED = (
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidPasswordError,
)


STATE_COLUMN_NAMES = STATE_COLUMNS.split(", ")

INSERT_STATES = f"""
INSERT INTO states ({STATE_COLUMNS})
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int[], $8::text[],
                     $9::int[], $10::text[], $11::text[], $12::text[], $13::text[], $14::bigint[], $15::bigint[],
                     $16::bigint[], $17::text[], $18::bigint[], $19::bigint[])
ON CONFLICT (run_id, seq) DO UPDATE SET
    identifier = EXCLUDED.identifier, node_name = EXCLUDED.node_name, status = EXCLUDED.status,
    inputs = EXCLUDED.inputs, attempt = EXCLUDED.attempt, parent_id = EXCLUDED.parent_id,
    parent_output = EXCLUDED.parent_output, path = EXCLUDED.path, outputs = EXCLUDED.outputs, error = EXCLUDED.error,
    pruned_data = EXCLUDED.pruned_data, created_at_ms = EXCLUDED.created_at_ms,
    updated_at_ms = EXCLUDED.updated_at_ms, run_at_ms = EXCLUDED.run_at_ms, runtime_name = EXCLUDED.runtime_name,
    started_at_ms = EXCLUDED.started_at_ms, ran_ms = EXCLUDED.ran_ms
"""
UPDATE_STATES = """
UPDATE states AS s SET status = u.status, attempt = u.attempt, outputs = u.outputs, error = u.error,
    pruned_data = u.pruned_data, updated_at_ms = u.updated_at_ms, run_at_ms = u.run_at_ms,
    runtime_name = u.runtime_name, started_at_ms = u.started_at_ms, ran_ms = u.ran_ms
FROM unnest($1::text[], $2::int[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[], $8::bigint[],
            $9::bigint[], $10::text[], $11::bigint[], $12::bigint[])
    AS u(run_id, seq, status, attempt, outputs, error, pruned_data, updated_at_ms, run_at_ms, runtime_name,
         started_at_ms, ran_ms)
WHERE s.run_id = u.run_id AND s.seq = u.seq
"""
UPSERT_RUNS = f"""
INSERT INTO runs (shard, {RUN_COLUMNS})
SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::bigint[],
                     $9::bigint[], $10::text[])
ON CONFLICT (run_id) DO UPDATE SET
    namespace = EXCLUDED.namespace, graph_name = EXCLUDED.graph_name, graph_version = EXCLUDED.graph_version,
    status = EXCLUDED.status, store = EXCLUDED.store, created_at_ms = EXCLUDED.created_at_ms,
    updated_at_ms = EXCLUDED.updated_at_ms, state_counts = EXCLUDED.state_counts
"""
UPSERT_KV = """
INSERT INTO kv (key, value) SELECT * FROM unnest($1::text[], $2::text[])
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""


def shifted(statement: str, by: int) -> str:
    return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + by}", statement)


# A small batch is ONE statement, so one round trip with no BEGIN and COMMIT: a statement is its own transaction,
# and data-modifying CTEs all run (an empty array writes nothing). Only for batches whose new and updated states
# differ: the CTEs see one snapshot, so an update could not see a state inserted beside it.
ONE_STATEMENT = (
    f"WITH i AS ({INSERT_STATES}), u AS ({shifted(UPDATE_STATES, 19)}), "
    f"r AS ({shifted(UPSERT_RUNS, 31)}), k AS ({shifted(UPSERT_KV, 41)}) SELECT 1"
)
WIDTHS = (19, 12, 10, 2)  # parameters of each statement above


@dataclass(slots=True)
class Prepared:
    """A tick's rows, unique by key (last wins); ``disjoint``: no state is both new and updated."""

    inserts: list[tuple[object, ...]]
    updates: list[tuple[object, ...]]
    runs: list[tuple[object, ...]]
    kv: list[tuple[str, str]]
    fence: Fence | None = None
    disjoint: bool = True


def columns(rows: Sequence[tuple[object, ...]], width: int) -> list[list[object]]:
    """``rows`` as ``width`` column arrays, one per ``unnest`` argument."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def list_runs_query(
    namespace: str, graph_name: str | None, limit: int, after: RunCursor | None, status: str | None
) -> tuple[str, list[object]]:
    """The statement and arguments of ``PostgresStore.list_runs``."""
    query = f"SELECT {RUN_COLUMNS} FROM runs WHERE namespace = $1"
    args: list[object] = [namespace]
    if graph_name:
        args.append(graph_name)
        query += f" AND graph_name = ${len(args)}"
    if status:
        args.append(status)
        query += f" AND status = ${len(args)}"
    if after is not None:
        args += (after.created_at_ms, after.run_id)
        query += f" AND (created_at_ms, run_id) < (${len(args) - 1}, ${len(args)})"
    args.append(limit)
    query += f" ORDER BY created_at_ms DESC, run_id DESC LIMIT ${len(args)}"
    return query, args


# Runs whose id starts with $3, in [$1, $2) (the range lets the primary key's index serve it; starts_with keeps it
# exact under any collation).
FIND_RUNS = (
    "SELECT run_id, namespace FROM runs WHERE run_id >= $1 AND run_id < $2 AND starts_with(run_id, $3) "
    "ORDER BY run_id LIMIT $4"
)


def state_from_record(r: asyncpg.Record) -> StateRow:
    run_id, seq = r["run_id"], r["seq"]
    return StateRow(
        state_id=f"{run_id}-{seq}",
        run_id=run_id,
        identifier=r["identifier"],
        node_name=r["node_name"],
        status=StateStatus(r["status"]),
        inputs=json.loads(r["inputs"]),
        attempt=r["attempt"],
        parent_id=r["parent_id"] or None,
        parent_output=r["parent_output"],
        path=tuple(json.loads(r["path"])),
        outputs=json.loads(r["outputs"]) if r["outputs"] is not None else None,
        error=json.loads(r["error"]) if r["error"] is not None else None,
        pruned_data=r["pruned_data"],
        created_at_ms=r["created_at_ms"],
        updated_at_ms=r["updated_at_ms"],
        run_at_ms=r["run_at_ms"],
        seq=seq,
        runtime_name=r["runtime_name"],
        started_at_ms=r["started_at_ms"],
        ran_ms=r["ran_ms"],
    )


def run_from_record(r: asyncpg.Record) -> RunRow:
    return RunRow(
        run_id=r["run_id"],
        namespace=r["namespace"],
        graph_name=r["graph_name"],
        graph_version=r["graph_version"],
        status=RunStatus(r["status"]),
        store=json.loads(r["store"]),
        created_at_ms=r["created_at_ms"],
        updated_at_ms=r["updated_at_ms"],
        state_counts=json.loads(r["state_counts"]),
    )


def graph_spec(text: str, where: str) -> GraphSpec | None:
    try:
        return GraphSpec.model_validate_json(text)
    except pydantic.ValidationError as exc:
        logger.error("stored row unreadable, skipped: %s: %s", where, str(exc).replace("\n", " "))
        return None


async def check_fence(conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, fence: Fence) -> None:
    """Inside the commit's transaction: the writer still holds every lease it writes under. FOR SHARE keeps a
    takeover (which updates the lease row) waiting until this transaction ends, so none can slip in between."""
    shards = sorted(fence.epochs)
    held = await conn.fetch(
        "SELECT l.shard FROM shard_leases l JOIN unnest($1::int[], $2::bigint[]) AS f(shard, epoch) "
        "ON l.shard = f.shard AND l.epoch = f.epoch WHERE l.owner = $3 FOR SHARE OF l",
        shards, [fence.epochs[s] for s in shards], fence.owner,
    )  # fmt: skip
    if len(held) != len(shards):
        raise FencedError(shards)


async def keep_session(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """Returning a connection to the pool costs no round trip: the store changes no session state (no SET, LISTEN,
    session locks or cursors), and asyncpg still rolls back a transaction left open (a cancelled call)."""
