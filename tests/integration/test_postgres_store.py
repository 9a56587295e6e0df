"""The PostgreSQL store beyond the Store contract (tests/unit/test_store_contract.py runs that on it too): big
batches, migrations and refusals, connections lost, and the real scheduler and binary running on it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg
import pytest

from exosphere import GraphNodeModel, RunStatus, Runtime, StateManager, StateStatus
from server.app import App
from server.config import ServerConfig, describe_dsn
from server.models import GraphSpec, RunRow, StateRow
from server.pg_schema import SCHEMA_VERSION, ForeignSchemaError, SchemaTooNewError
from server.pg_store import DatabaseUnavailableError, PostgresStore
from server.shards import MAX_SHARDS, new_run_id
from server.status import RunStatus as StoredRunStatus
from server.status import StateStatus as StoredStateStatus
from server.store import WriteBatch
from tests.engine_nodes import Collect, Count, Waiter
from tests.helpers.pg import on_admin, run_sync
from tests.helpers.runtimes import RuntimeGroup
from tests.helpers.servers import ServerProcess
from tests.helpers.waiting import assert_eventually

Created = StoredStateStatus.CREATED


def state(run_id: str, seq: int, **fields: object) -> StateRow:
    values: dict[str, object] = {
        "state_id": f"{run_id}-{seq}",
        "run_id": run_id,
        "identifier": "node",
        "node_name": "Node",
        "status": Created,
        "inputs": {"text": f"é{seq}"},
        "attempt": 0,
        "parent_id": None,
        "parent_output": 0,
        "path": (seq,),
        "created_at_ms": 1000 + seq,
        "updated_at_ms": 1000 + seq,
        "run_at_ms": 1000 + seq,
        "seq": seq,
    }
    values.update(fields)
    return StateRow(**values)  # type: ignore[arg-type]


def run(run_id: str, *, namespace: str = "ns", graph: str = "g", created: int = 1000, **fields: object) -> RunRow:
    values: dict[str, object] = {
        "run_id": run_id,
        "namespace": namespace,
        "graph_name": graph,
        "graph_version": 1,
        "status": StoredRunStatus.PENDING,
        "store": {"k": "v"},
        "created_at_ms": created,
        "updated_at_ms": created,
        "state_counts": {"CREATED": 1},
    }
    values.update(fields)
    return RunRow(**values)  # type: ignore[arg-type]


def graph(version: int, name: str = "g") -> GraphSpec:
    return GraphSpec.model_validate(
        {
            "namespace": "ns",
            "name": name,
            "version": version,
            "nodes": [{"node_name": "Node", "namespace": "ns", "identifier": f"v{version}"}],
            "secrets": {"token": "v1:sealed"},
        }
    )


# ---------------------------------------------------------------------------------------------------- PostgreSQL


def test_a_fan_out_of_25000_states_commits_in_one_transaction_across_statement_chunks(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        states = [state("big", seq, path=(0, seq)) for seq in range(25_000)]
        store.write(WriteBatch(new_states=states, runs=[run("big")]))
        done = [state("big", seq, status=StoredStateStatus.SUCCESS) for seq in range(0, 25_000, 2)]
        store.write(WriteBatch(updated_states=done))

        rows = store.get_states("big", -1, 0)
        assert len(rows) == 25_000
        assert rows[24_999] == states[24_999]
        assert sum(r.status == "SUCCESS" for r in rows) == 12_500
    finally:
        store.close()


def test_a_big_batch_that_fails_late_leaves_nothing(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        broken = run("r1")
        broken.status = None  # type: ignore[assignment]  # NOT NULL: fails after the COPY of the states
        with pytest.raises(asyncpg.NotNullViolationError):
            store.write(WriteBatch(new_states=[state("r1", seq) for seq in range(1_000)], runs=[broken]))
        assert store.get_states("r1", -1, 0) == []
        store.write(WriteBatch(new_states=[state("r1", seq) for seq in range(1_000)], runs=[run("r1")]))
        assert len(store.get_states("r1", -1, 0)) == 1_000
    finally:
        store.close()


def test_an_unreadable_row_is_logged_and_left_out(pg_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    store = PostgresStore(pg_dsn)
    try:
        store.save_graph(graph(1))
        store.save_graph(graph(1, name="bad"))
        store.write(WriteBatch(new_states=[state("ok", 0), state("broken", 0)], runs=[run("ok"), run("broken")]))
        run_sync(
            on_admin(
                "UPDATE graphs SET spec = '{\"not\": \"a graph\"}' WHERE name = 'bad'",
                "UPDATE graph_versions SET spec = 'not json' WHERE name = 'bad'",
                "UPDATE states SET inputs = 'not json' WHERE run_id = 'broken'",
                dsn=pg_dsn,
            )
        )
        assert store.load_graphs() == [graph(1)]
        assert store.load_graph_version("ns", "bad", 1) is None
        assert store.load_pending() == ([run("ok")], [state("ok", 0)])
    finally:
        store.close()
    assert "stored row unreadable, skipped: graphs namespace=ns name=bad version=1" in caplog.text
    assert "stored row unreadable, run not recovered: states run_id=broken seq=0" in caplog.text


def test_load_pending_of_shards_reads_only_their_runs(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        ids = {shard: new_run_id(shard) for shard in (0, 1, 5, 4095)}  # among MAX_SHARDS
        store.write(WriteBatch(new_states=[state(i, 0) for i in ids.values()], runs=[run(i) for i in ids.values()]))

        def pending(shards: list[int], count: int) -> set[str]:
            runs, states = store.load_pending(shards=shards, shard_count=count)
            assert {s.run_id for s in states} == {r.run_id for r in runs}
            return {r.run_id for r in runs}

        assert pending([0], 4) == {ids[0]}
        assert pending([1], 4) == {ids[1], ids[5]}
        assert pending([3], 4) == {ids[4095]}
        assert pending([0, 1, 2, 3], 4) == set(ids.values())
        assert pending([5], MAX_SHARDS) == {ids[5]}
        assert pending([7], 8) == {ids[4095]}
        assert pending([6], 8) == set()
    finally:
        store.close()


def versions(dsn: str) -> list[int]:
    async def read() -> list[int]:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            return [int(r[0]) for r in await conn.fetch("SELECT version FROM exosphere_migrations ORDER BY version")]
        finally:
            await conn.close()

    return run_sync(read())


def test_migrations_run_once_even_when_replicas_start_together_and_data_survives_a_reopen(pg_dsn: str) -> None:
    opened: list[PostgresStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(PostgresStore(pg_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in opened:
        s.close()
    assert errors == [] and len(opened) == 3
    assert versions(pg_dsn) == list(range(1, SCHEMA_VERSION + 1))

    first = PostgresStore(pg_dsn)
    first.save_graph(graph(1))
    first.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r1")], kv={"k": "v"}))
    first.close()
    first.close()  # idempotent
    again = PostgresStore(pg_dsn)
    try:
        assert versions(pg_dsn) == list(range(1, SCHEMA_VERSION + 1))
        assert again.load_graphs() == [graph(1)]
        assert again.get_states("r1", -1, 0) == [state("r1", 0)]
        assert again.get_kv("k") == "v"
    finally:
        again.close()


def test_a_database_of_a_newer_schema_is_refused_naming_both_versions(pg_dsn: str) -> None:
    PostgresStore(pg_dsn).close()
    newer = SCHEMA_VERSION + 7
    run_sync(
        on_admin(f"INSERT INTO exosphere_migrations (version, description) VALUES ({newer}, 'future')", dsn=pg_dsn)
    )

    with pytest.raises(SchemaTooNewError, match=rf"schema version {newer}, newer .*\(version {SCHEMA_VERSION}\)"):
        PostgresStore(pg_dsn)


def test_a_database_with_foreign_tables_of_our_names_is_refused_and_left_alone(pg_dsn: str) -> None:
    run_sync(on_admin("CREATE TABLE runs (id INTEGER)", "CREATE TABLE members (name TEXT)", dsn=pg_dsn))

    with pytest.raises(ForeignSchemaError, match=r"tables members, runs that exosphere did not create"):
        PostgresStore(pg_dsn)
    with pytest.raises(Exception, match="exosphere_migrations"):
        versions(pg_dsn)


def test_an_unreachable_server_fails_fast_naming_host_and_database() -> None:
    with pytest.raises(
        DatabaseUnavailableError, match=r"PostgreSQL at someone@127\.0\.0\.1:1/nowhere .*cannot connect"
    ):
        PostgresStore("postgresql://someone:hunter2@127.0.0.1:1/nowhere")


def test_connections_the_server_cuts_are_replaced(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        store.write(WriteBatch(runs=[run("r1")]))
        name = pg_dsn.rsplit("/", 1)[1]
        run_sync(on_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        # A call that meets a cut connection fails as an outage (UNAVAILABLE to a client; a commit is retried by the
        # group commit); the pool replaces the connection, so the next one succeeds.
        try:
            first = store.get_run("r1")
        except DatabaseUnavailableError:
            first = store.get_run("r1")
        assert first == run("r1")
        store.write(WriteBatch(runs=[run("r2")]))
        assert store.get_run("r2") == run("r2")
    finally:
        store.close()


def test_calls_after_close_fail_clearly(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    store.close()
    with pytest.raises(DatabaseUnavailableError, match="closed"):
        store.get_run("r1")


# ---------------------------------------------------------------------------------------------------- the scheduler


def config_for(dsn: str, tmp_path: Path) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, db=dsn, secrets_key_file=str(tmp_path / "secrets.key"))


def fan_graph(namespace: str, node: str, n: str, **inputs: str) -> list[GraphNodeModel]:
    """count(n) -> one ``node`` per item -> merge counting them."""
    return [
        GraphNodeModel(node_name="Count", namespace=namespace, identifier="count", inputs={"n": n}, next_nodes=["b"]),
        GraphNodeModel(
            node_name=node,
            namespace=namespace,
            identifier="b",
            inputs={"item": "${{ count.outputs.item }}", **inputs},
            next_nodes=["merge"],
        ),
        GraphNodeModel(
            node_name="Collect",
            namespace=namespace,
            identifier="merge",
            inputs={"values": "${{ b.outputs.text }}"},
            unites={"identifier": "count", "strategy": "ALL_SUCCESS"},
        ),
    ]


async def test_the_scheduler_on_postgres_runs_a_fan_out_and_resumes_dispatched_states_after_a_restart(
    pg_dsn: str, tmp_path: Path, namespace: str
) -> None:
    key = f"pg-{namespace}"
    config = config_for(pg_dsn, tmp_path)
    async with App(config) as app:
        address = f"127.0.0.1:{app.port}"
        async with RuntimeGroup() as group, StateManager(namespace, address=address) as sm:
            await group.start(Runtime(namespace=namespace, name="rt", nodes=[Count, Waiter, Collect], address=address))
            Waiter.release("open")
            await sm.upsert_graph("fan", fan_graph(namespace, "Waiter", "40", key="open"))
            done = await sm.wait((await sm.trigger("fan")).run_id, timeout=20)
            assert done.status is RunStatus.SUCCESS
            (merge,) = [s for s in done.states if s.identifier == "merge"]
            assert merge.outputs == [{"count": "40"}]

            await sm.upsert_graph("held", fan_graph(namespace, "Waiter", "3", key=key))
            held = (await sm.trigger("held")).run_id
            await assert_eventually(lambda: key in Waiter.started)  # dispatched: QUEUED, never finished here
            await app.stop(grace=0.5)
            Waiter.started.discard(key)
            Waiter.release(key)  # the old runtime finishes, but its results have nowhere to go

    async with App(config) as app:
        address = f"127.0.0.1:{app.port}"
        async with RuntimeGroup() as group, StateManager(namespace, address=address) as sm:
            await group.start(Runtime(namespace=namespace, name="rt", nodes=[Count, Waiter, Collect], address=address))
            result = await sm.wait(held, timeout=20)
            assert key in Waiter.started  # dispatched again after the restart
            assert result.status is RunStatus.SUCCESS
            (merge,) = [s for s in result.states if s.identifier == "merge"]
            assert merge.outputs == [{"count": "3"}]
            assert all(s.status is StateStatus.SUCCESS for s in result.states)
            assert sorted(json.loads(merge.inputs["values"])) == ["0", "1", "2"]


@pytest.mark.parametrize(("durability", "durable"), [("normal", False), ("full", True)])
def test_durability_reaches_the_store(pg_dsn: str, tmp_path: Path, durability: str, durable: bool) -> None:
    app = App(config_for(pg_dsn, tmp_path).model_copy(update={"durability": durability}))
    try:
        assert isinstance(app.store, PostgresStore) and app.store.durable is durable
    finally:
        app.store.close()


def test_postgres_needs_a_shared_secrets_key(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EXOSPHERE_SECRETS_KEY", raising=False)
    with pytest.raises(ValueError, match=r"needs the secrets key that every scheduler on it shares: set EXOSPHERE_"):
        App(ServerConfig(host="127.0.0.1", port=0, db=pg_dsn))


def test_exosphere_server_serves_on_postgres_and_never_logs_the_password(pg_dsn: str) -> None:
    dsn = pg_dsn.replace("postgres@", "postgres:hunter2@", 1)  # trust authentication ignores it
    key = base64.b64encode(os.urandom(32)).decode()
    server = ServerProcess(dsn, env={"EXOSPHERE_SECRETS_KEY": key}).start()
    code = server.stop()
    assert code == 0, server.output
    assert f"db={describe_dsn(pg_dsn)}" in server.output
    assert "hunter2" not in server.output and "Traceback" not in server.output


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("", "exosphere-server: database someone@127.0.0.1:1/nowhere needs the secrets key that every scheduler"),
        ("A" * 43 + "=", "exosphere-server: PostgreSQL at someone@127.0.0.1:1/nowhere is unavailable: cannot connect"),
    ],
)
def test_exosphere_server_on_postgres_fails_in_one_line_without_a_key_or_a_server(key: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXOSPHERE_")}
    if key:
        env["EXOSPHERE_SECRETS_KEY"] = key
    db = "postgresql://someone:hunter2@127.0.0.1:1/nowhere"
    done = subprocess.run(
        [sys.executable, "-m", "exosphere_server", "--port", "0", "--db", db],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(expected), done.stderr
    assert "hunter2" not in done.stderr
