"""One group commit of a big fan-out, on SQLite and on PostgreSQL: the store alone, no scheduler.

python -m benchmarks.store_commit [--states 10000] [--repeat 5] [--dsn postgresql://postgres@127.0.0.1:5432/postgres]

Per backend, medians over ``--repeat`` fresh runs of:
- create: one batch inserting ``--states`` new states and their run (the tick in which a fan-out node succeeds);
- finish: one batch updating every one of them to SUCCESS with an output (results arriving together);
- lone: one batch updating a single state and its run (a lone state's commit: the latency floor), measured
  before the big batches;
each split into ``prepare`` (the event loop's thread) and ``commit`` (the writer thread).
PostgreSQL runs on a database made for the run and dropped after it; SQLite in a temporary directory. Both at
the scheduler's two ``--durability`` levels: normal (SQLite ``synchronous=NORMAL``, PostgreSQL
``synchronous_commit=off``: no fsync per commit) and full (an fsync per commit).
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

from server.models import RunRow, StateRow
from server.pg_store import PostgresStore
from server.sqlite_store import SqliteStore
from server.status import RunStatus, StateStatus
from server.store import Store, WriteBatch

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _states(run_id: str, n: int) -> list[StateRow]:
    return [
        StateRow(
            state_id=f"{run_id}-{seq}",
            run_id=run_id,
            identifier="act",
            node_name="Act",
            status=StateStatus.CREATED,
            inputs={"item": str(seq), "text": "some input text of a typical length"},
            attempt=0,
            parent_id=f"{run_id}-0",
            parent_output=seq,
            path=(0, seq),
            created_at_ms=1_000,
            updated_at_ms=1_000,
            run_at_ms=1_000,
            seq=seq,
        )
        for seq in range(1, n + 1)
    ]


def _timed(store: Store, batch: WriteBatch) -> tuple[float, float]:
    t0 = time.perf_counter()
    prepared = store.prepare(batch)
    t1 = time.perf_counter()
    store.commit(prepared)
    return (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000


def lone_round(store: Store) -> dict[str, float]:
    """50 commits of one state each (a lone state's result): the latency floor."""
    run_id = f"lone-{uuid.uuid4().hex[:12]}"
    run = RunRow(run_id=run_id, namespace="bench", graph_name="one", graph_version=1, status=RunStatus.PENDING)
    few = _states(run_id, 50)
    store.write(WriteBatch(new_states=few, runs=[run]))
    lone = []
    for s in few:
        s.status, s.outputs = StateStatus.SUCCESS, [{"text": "done"}]
        lone.append(_timed(store, WriteBatch(updated_states=[s], runs=[run])))
    return {
        "lone_prepare_ms": statistics.median(p for p, _ in lone),
        "lone_commit_ms": statistics.median(c for _, c in lone),
    }


def big_round(store: Store, n: int) -> dict[str, float]:
    """A fan-out's ``n`` new states in one commit, then all their results in one commit."""
    run_id = f"run-{uuid.uuid4().hex[:12]}"
    run = RunRow(run_id=run_id, namespace="bench", graph_name="fan", graph_version=1, status=RunStatus.PENDING)
    states = _states(run_id, n)
    out: dict[str, float] = {}
    out["create_prepare_ms"], out["create_commit_ms"] = _timed(store, WriteBatch(new_states=states, runs=[run]))
    for s in states:
        s.status, s.outputs, s.updated_at_ms = StateStatus.SUCCESS, [{"text": s.inputs["item"]}], 2_000
    out["finish_prepare_ms"], out["finish_commit_ms"] = _timed(store, WriteBatch(updated_states=states, runs=[run]))
    return out


def measure(name: str, open_store: Callable[[], Store], n: int, repeat: int) -> dict[str, float]:
    store = open_store()
    try:
        big_round(store, 100)  # warm up: statement caches, pages
        # Lone commits before the big ones: with synchronous_commit=off a big commit returns before its WAL is
        # flushed, and that flush would be paid by the lone commits measured right after it.
        rounds = [lone_round(store) for _ in range(repeat)]
        bigs = [big_round(store, n) for _ in range(repeat)]
    finally:
        store.close()
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    medians |= {k: statistics.median(r[k] for r in bigs) for k in bigs[0]}
    print(f"{name:<18}" + "  ".join(f"{k}={v:7.2f}" for k, v in medians.items()))
    return medians


async def _admin(dsn: str, statement: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--states", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--dsn", default=DEFAULT_DSN, help="a PostgreSQL server and a database to CREATE DATABASE from")
    args = p.parse_args()
    print(f"one batch of {args.states:,} states; medians of {args.repeat} rounds; times in ms")
    for durable in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            level = "full" if durable else "normal"
            open_sqlite = lambda: SqliteStore(Path(tmp) / "bench.db", durable=durable)  # noqa: E731, B023
            measure(f"sqlite {level}", open_sqlite, args.states, args.repeat)
    name = f"exo_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(args.dsn, f'CREATE DATABASE "{name}"'))
    try:
        dsn = urlunsplit(urlsplit(args.dsn)._replace(path=f"/{name}"))
        measure("postgres normal", lambda: PostgresStore(dsn), args.states, args.repeat)
        measure("postgres full", lambda: PostgresStore(dsn, durable=True), args.states, args.repeat)
    finally:
        asyncio.run(_admin(args.dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
