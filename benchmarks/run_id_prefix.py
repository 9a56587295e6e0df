"""Finding a run by a prefix of its id (what ``exosphere runs show 00a3f9`` asks), against reading it by its whole id.

python -m benchmarks.run_id_prefix [--runs 200000] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

The store alone, SQLite and PostgreSQL, with ``--runs`` runs: medians and p95 over 300 lookups of ``get_run`` (the
whole id), ``find_runs`` with an 8-character prefix (unique) and with a 4-character one (matching many). A prefix is a
range on the primary key (server/store.py ``prefix_range``), so it costs about what an exact read does; the
PostgreSQL plan is printed to show the index serves it. PostgreSQL runs on a database made for the run and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from server.models import RunRow
from server.pg_rows import FIND_RUNS
from server.pg_store import PostgresStore
from server.shards import new_run_id
from server.sqlite_store import SqliteStore
from server.status import RunStatus
from server.store import Store, WriteBatch, prefix_range

LOOKUPS = 300


def _runs(n: int) -> list[RunRow]:
    return [
        RunRow(
            run_id=new_run_id(i % 64),
            namespace="ns",
            graph_name="g",
            graph_version=1,
            status=RunStatus.SUCCESS,
            store={},
            created_at_ms=i,
            updated_at_ms=i,
            state_counts={},
        )
        for i in range(n)
    ]


def _measure(store: Store, ids: list[str], label: str) -> None:
    probes: list[tuple[str, Callable[[str], object]]] = [
        ("get_run, whole id", store.get_run),
        ("find_runs, 8-character prefix", lambda r: store.find_runs(r[:8], 20)),
        ("find_runs, 4-character prefix", lambda r: store.find_runs(r[:4], 20)),
    ]
    for what, probe in probes:
        times = []
        for run_id in ids:
            started = time.perf_counter()
            probe(run_id)
            times.append((time.perf_counter() - started) * 1e6)
        times.sort()
        p95 = times[int(len(times) * 0.95)]
        print(f"{label:10} {what:32} median {statistics.median(times):7.0f} us   p95 {p95:7.0f} us")


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _plan(dsn: str, prefix: str) -> str:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        low, high = prefix_range(prefix) or ("", "")
        rows = await conn.fetch(f"EXPLAIN {FIND_RUNS}", low, high, prefix, 20)
        return " / ".join(str(r[0]).strip() for r in rows)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    runs = _runs(args.runs)
    ids = [r.run_id for r in runs[:: max(1, args.runs // LOOKUPS)]][:LOOKUPS]
    batches = [runs[i : i + 10_000] for i in range(0, len(runs), 10_000)]
    print(f"{args.runs} runs, {len(ids)} lookups each")

    with tempfile.TemporaryDirectory() as directory:
        sqlite = SqliteStore(Path(directory) / "bench.db")
        for batch in batches:
            sqlite.write(WriteBatch(runs=batch))
        _measure(sqlite, ids, "sqlite")
        sqlite.close()

    name = f"exosphere_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(args.dsn, f"CREATE DATABASE {name}"))
    dsn = urlunsplit(urlsplit(args.dsn)._replace(path=f"/{name}"))
    try:
        postgres = PostgresStore(dsn)
        for batch in batches:
            postgres.write(WriteBatch(runs=batch))
        _measure(postgres, ids, "postgres")
        postgres.close()
        print(f"postgres plan: {asyncio.run(_plan(dsn, ids[0][:8]))}")
    finally:
        asyncio.run(_admin(args.dsn, f"DROP DATABASE {name} WITH (FORCE)"))


if __name__ == "__main__":
    main()
