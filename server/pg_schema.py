"""The PostgreSQL schema and its versioned migrations.

``exosphere_migrations`` holds one row per applied migration; the schema's version is the highest. Each migration
runs in a transaction of its own that first takes ``pg_advisory_xact_lock(MIGRATION_LOCK)`` and re-reads the
version, so replicas that start at the same moment apply every migration exactly once, one after the other.
(The table is not called ``schema_migrations``: Rails, golang-migrate and others use that name with another shape.)

Refused, with an error naming the problem, before anything is written:
- a database whose version is newer than this binary knows (an older replica in a cluster already upgraded);
- tables of our names in the current schema that no migration of ours created (another application's database).

Maps (inputs, outputs, errors, a run's store and counts) are TEXT holding JSON, as in SQLite: the store never
queries inside them, they are written on the hot path (a fan-out writes 10,000 rows per commit), and JSONB would
make the server parse and re-encode every one of them, for a result we parse again in Python anyway. A later
migration can ``ALTER COLUMN ... TYPE jsonb USING col::jsonb`` if operators need to query inside them.

Cluster mode (DESIGN.md) is prepared for: runs carry their ``shard`` among ``MAX_SHARDS`` (the run id's first three
hex digits, server/shards.py; its shard among N is ``shard % N``) with the index a per-shard recovery needs, and
``shard_leases`` and ``members`` exist, empty, for the leases and membership to come.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

from .store import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "ForeignSchemaError", "SchemaTooNewError", "migrate"]

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock's key: "exosphere" on a phone keypad, so other applications are unlikely to pick it.
MIGRATION_LOCK = 396_774_373
META_TABLE = "exosphere_migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    sql: str


_V1 = """
CREATE TABLE graphs (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE graph_versions (
    namespace TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
    PRIMARY KEY (namespace, name, version));
CREATE TABLE nodes (
    namespace TEXT NOT NULL, name TEXT NOT NULL, schema BYTEA NOT NULL, updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (namespace, name));
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY, shard INTEGER NOT NULL DEFAULT 0, namespace TEXT NOT NULL, graph_name TEXT NOT NULL,
    graph_version INTEGER NOT NULL, status TEXT NOT NULL, store TEXT NOT NULL, created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL, state_counts TEXT NOT NULL);
-- list_runs: newest first with an exact keyset (created_at_ms, run_id), per namespace and per graph.
CREATE INDEX runs_by_namespace ON runs (namespace, created_at_ms DESC, run_id DESC);
CREATE INDEX runs_by_graph ON runs (namespace, graph_name, created_at_ms DESC, run_id DESC);
-- load_pending for the shards a replica owns: small, since only live runs are in it.
CREATE INDEX runs_pending_by_shard ON runs (shard, created_at_ms, run_id) WHERE status = 'PENDING';
CREATE TABLE states (
    run_id TEXT NOT NULL, seq INTEGER NOT NULL, identifier TEXT NOT NULL, node_name TEXT NOT NULL,
    status TEXT NOT NULL, inputs TEXT NOT NULL, attempt INTEGER NOT NULL, parent_id TEXT,
    parent_output INTEGER NOT NULL, path TEXT NOT NULL, outputs TEXT, error TEXT, pruned_data TEXT,
    created_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL, run_at_ms BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq));
CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Cluster mode, not used yet: one lease per shard (its owner, fenced by epoch) and the live replicas.
CREATE TABLE shard_leases (
    shard INTEGER PRIMARY KEY, owner TEXT, epoch BIGINT NOT NULL DEFAULT 0, expires_at TIMESTAMPTZ);
CREATE TABLE members (
    replica_id TEXT PRIMARY KEY, address TEXT NOT NULL, heartbeat_at TIMESTAMPTZ NOT NULL);
CREATE INDEX members_by_heartbeat ON members (heartbeat_at);
"""

_V2 = """
ALTER TABLE states ADD COLUMN runtime_name TEXT NOT NULL DEFAULT '',
    ADD COLUMN started_at_ms BIGINT NOT NULL DEFAULT 0, ADD COLUMN ran_ms BIGINT NOT NULL DEFAULT 0;
"""

_V3 = """
ALTER TABLE members ADD COLUMN report TEXT NOT NULL DEFAULT '{}';
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "graphs, nodes, runs with shards, states, kv, leases, members", _V1),
    Migration(2, "states: the runtime that ran each, when it was handed over, how long it took", _V2),
    Migration(3, "members: what each replica reports of itself (runtimes, queues) for the dashboard", _V3),
)
SCHEMA_VERSION = MIGRATIONS[-1].version

# Every table some migration creates: finding one of them without our meta table means someone else's database.
OUR_TABLES = frozenset(
    {"graphs", "graph_versions", "nodes", "runs", "states", "kv", "shard_leases", "members", META_TABLE}
)


class SchemaTooNewError(StoreError):
    """The database was migrated by a newer exosphere-server than this one."""

    def __init__(self, where: str, found: int) -> None:
        super().__init__(
            f"database {where} has schema version {found}, newer than this exosphere-server knows "
            f"(version {SCHEMA_VERSION}); upgrade exosphere-server"
        )
        self.found = found


class ForeignSchemaError(StoreError):
    """Tables with our names exist but were not created by exosphere."""

    def __init__(self, where: str, tables: list[str]) -> None:
        super().__init__(
            f"database {where} already has tables {', '.join(tables)} that exosphere did not create "
            f"(no {META_TABLE} table); use an empty database or another schema (search_path)"
        )
        self.tables = tables


async def current_version(conn: asyncpg.Connection, where: str) -> int:
    """The schema version (0: none of our tables yet). Refuses foreign tables of our names."""
    rows = await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
        "AND table_name = ANY($1::text[])",
        sorted(OUR_TABLES),
    )
    present = sorted(str(r["table_name"]) for r in rows)
    if META_TABLE not in present:
        if present:
            raise ForeignSchemaError(where, present)
        return 0
    columns = {
        str(r["column_name"])
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = $1",
            META_TABLE,
        )
    }
    if not {"version", "description", "applied_at"} <= columns:
        raise ForeignSchemaError(where, [META_TABLE])
    version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {META_TABLE}")
    return int(version)


async def migrate(conn: asyncpg.Connection, where: str) -> int:
    """Bring the schema to ``SCHEMA_VERSION``, one migration per transaction; returns the version found first."""
    found: int | None = None
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            version = await current_version(conn, where)
            if found is None:
                found = version
            if version > SCHEMA_VERSION:
                raise SchemaTooNewError(where, version)
            if version == SCHEMA_VERSION:
                return found
            if version == 0:
                await conn.execute(
                    f"CREATE TABLE {META_TABLE} (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                    "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
            step = MIGRATIONS[version]  # versions are 1, 2, ... so the next one is at index `version`
            await conn.execute(step.sql)
            await conn.execute(
                f"INSERT INTO {META_TABLE} (version, description) VALUES ($1, $2)", step.version, step.description
            )
            logger.info("database migrated where=%s version=%d description=%s", where, step.version, step.description)
