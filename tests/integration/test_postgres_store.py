"""The PostgreSQL store: the Store contract on SQLite and PostgreSQL alike, PostgreSQL's own guarantees (one
transaction per commit, migrations, refusals), and the real scheduler running on it across a restart."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from exosphere import GraphNodeModel, RunStatus, StateManager, StateStatus
from server.app import App
from server.config import ServerConfig, describe_dsn
from server.models import GraphSpec, RunRow, StateRow
from server.pg_schema import SCHEMA_VERSION, ForeignSchemaError, SchemaTooNewError
from server.pg_store import DatabaseUnavailableError, PostgresStore
from server.sqlite_store import SqliteStore
from server.status import RunStatus as StoredRunStatus
from server.status import StateStatus as StoredStateStatus
from server.store import Store, WriteBatch
from tests.conftest import assert_eventually, runtimes_on
from tests.engine_nodes import Collect, Count, Waiter
from tests.integration.process import ServerProcess
from tests.pg import on_admin, run_sync

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


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each backend, fresh: the contract tests below must pass on both."""
    opened: Store
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "contract.db")
    else:
        opened = PostgresStore(request.getfixturevalue("pg_dsn"))
    try:
        yield opened
    finally:
        opened.close()


# ---------------------------------------------------------------------------------------------------- contract


def test_states_runs_and_kv_read_back_field_for_field(store: Store) -> None:
    full = state(
        "r1",
        1,
        status=StoredStateStatus.ERRORED,
        parent_id="r1-0",
        parent_output=3,
        path=(0, 3),
        outputs=[{"a": "1"}, {"a": "2"}],
        error={"message": "boom", "type": "ValueError"},
        pruned_data='{"why": "x"}',
        attempt=2,
    )
    store.write(WriteBatch(new_states=[state("r1", 0), full], runs=[run("r1")], kv={"cron:x": "42"}))

    assert store.get_run("r1") == run("r1")
    assert store.get_states("r1", -1, 0) == [state("r1", 0), full]
    assert store.get_kv("cron:x") == "42"
    assert store.get_run("nope") is None
    assert store.get_states("nope", -1, 0) == []
    assert store.get_kv("nope") is None


def test_get_states_pages_by_sequence_and_zero_means_all(store: Store) -> None:
    store.write(WriteBatch(new_states=[state("r1", seq) for seq in (4, 0, 2, 1, 3)], runs=[run("r1")]))

    assert [s.seq for s in store.get_states("r1", -1, 0)] == [0, 1, 2, 3, 4]
    assert [s.seq for s in store.get_states("r1", 1, 2)] == [2, 3]
    assert [s.seq for s in store.get_states("r1", 3, 10)] == [4]
    assert store.get_states("r1", 4, 0) == []


def test_updates_change_the_mutable_fields_of_stored_states_only(store: Store) -> None:
    store.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r1")]))
    done = state("r1", 0, status=StoredStateStatus.SUCCESS, outputs=[{"a": "b"}], attempt=1, updated_at_ms=5000)
    store.write(WriteBatch(updated_states=[done, state("r1", 7, status=StoredStateStatus.SUCCESS)]))

    assert store.get_states("r1", -1, 0) == [done]  # seq 7 was never inserted: an update does not create it


def test_an_insert_or_a_run_written_again_replaces_the_row(store: Store) -> None:
    store.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r1")], kv={"k": "1"}))
    again = state("r1", 0, identifier="other", inputs={"x": "y"})
    ended = run("r1", status=StoredRunStatus.SUCCESS, store={"k": "w"}, state_counts={"SUCCESS": 1})
    store.write(WriteBatch(new_states=[again], runs=[ended], kv={"k": "2"}))

    assert store.get_states("r1", -1, 0) == [again]
    assert store.get_run("r1") == ended
    assert store.get_kv("k") == "2"


def test_a_big_batch_of_new_states_that_repeats_stored_ones_replaces_them(store: Store) -> None:
    store.write(WriteBatch(new_states=[state("r1", seq) for seq in range(300)], runs=[run("r1")]))
    again = [state("r1", seq, identifier="again") for seq in range(100, 400)]  # 200 stored, 100 new
    store.write(WriteBatch(new_states=again))

    rows = store.get_states("r1", -1, 0)
    assert [r.identifier for r in rows] == ["node"] * 100 + ["again"] * 300
    assert rows[100:] == again


def test_prepare_snapshots_the_batch_before_the_states_change_again(store: Store) -> None:
    live = state("r1", 0)
    prepared = store.prepare(WriteBatch(new_states=[live], runs=[run("r1")]))
    live.status = StoredStateStatus.SUCCESS
    live.inputs["text"] = "changed after the tick"
    store.commit(prepared)

    assert store.get_states("r1", -1, 0) == [state("r1", 0)]


def test_graph_versions_stay_readable_after_a_new_version_and_a_delete(store: Store) -> None:
    store.save_graph(graph(1))
    store.save_graph(graph(2))
    store.save_graph(graph(1, name="other"))

    assert sorted((g.name, g.version) for g in store.load_graphs()) == [("g", 2), ("other", 1)]
    assert store.load_graph_version("ns", "g", 1) == graph(1)
    assert store.load_graph_version("ns", "g", 2) == graph(2)
    assert store.load_graph_version("ns", "g", 3) is None
    store.delete_graph("ns", "g")
    assert [g.name for g in store.load_graphs()] == ["other"]
    assert store.load_graph_version("ns", "g", 2) == graph(2)  # runs started on it can still load it


def test_node_schemas_are_saved_per_namespace_and_replaced(store: Store) -> None:
    store.save_nodes("ns", [("A", b"\x00a"), ("B", b"b")])
    store.save_nodes("ns", [("A", b"a2")])
    store.save_nodes("other", [("A", b"x")])

    assert sorted(store.load_nodes()) == [("ns", "A", b"a2"), ("ns", "B", b"b"), ("other", "A", b"x")]


def test_load_pending_gives_pending_runs_with_their_states_by_run_then_sequence(store: Store) -> None:
    store.write(
        WriteBatch(
            new_states=[state("r2", 1), state("r1", 1), state("done", 0), state("r2", 0), state("r1", 0)],
            runs=[run("r1", created=1), run("r2", created=2), run("done", status=StoredRunStatus.SUCCESS)],
        )
    )
    runs, states = store.load_pending()

    assert sorted(r.run_id for r in runs) == ["r1", "r2"]
    order = [r.run_id for r in runs]
    assert [(s.run_id, s.seq) for s in states] == [(run_id, seq) for run_id in order for seq in (0, 1)]


def test_list_runs_newest_first_filtered_and_strictly_before(store: Store) -> None:
    store.write(
        WriteBatch(
            runs=[
                run("a", created=100),
                run("b", created=200, status=StoredRunStatus.SUCCESS),
                run("c", created=300, graph="h"),
                run("d", created=400),
                run("x", created=500, namespace="elsewhere"),
            ]
        )
    )

    def ids(graph_name: str | None, before_ms: int, limit: int, status: str | None = None) -> list[str]:
        return [r.run_id for r in store.list_runs("ns", graph_name, before_ms, limit, status)]

    assert ids(None, 0, 10) == ["d", "c", "b", "a"]
    assert ids(None, 0, 2) == ["d", "c"]
    assert ids(None, 300, 10) == ["b", "a"]
    assert ids("g", 0, 10) == ["d", "b", "a"]
    assert ids(None, 0, 10, "SUCCESS") == ["b"]
    assert ids("", 0, 10, "") == ["d", "c", "b", "a"]  # empty filters filter nothing, as over gRPC
    assert store.list_runs("nowhere", None, 0, 10) == []


# ---------------------------------------------------------------------------------------------------- PostgreSQL


def test_a_commit_that_fails_leaves_nothing_and_the_store_goes_on(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        store.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r1")]))
        updated = state("r1", 0, status=StoredStateStatus.SUCCESS)
        bad = WriteBatch(
            new_states=[state("r2", 0)],
            updated_states=[updated],
            runs=[run("r2")],
            kv={"k": None},  # type: ignore[dict-item]  # NOT NULL: the last statement of the commit fails
        )
        with pytest.raises(Exception, match="null value"):
            store.write(bad)

        assert store.get_run("r2") is None
        assert store.get_states("r2", -1, 0) == []
        assert store.get_states("r1", -1, 0) == [state("r1", 0)]
        store.write(WriteBatch(updated_states=[updated]))
        assert store.get_states("r1", -1, 0) == [updated]
    finally:
        store.close()


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


def test_list_runs_page_is_exact_across_equal_creation_times(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        store.write(WriteBatch(runs=[run(f"r{i}", created=100 * (i // 3)) for i in range(10)]))
        pages: list[list[str]] = []
        before: tuple[int, str] | None = None
        while True:
            page = store.list_runs_page("ns", limit=4, before=before)
            if not page:
                break
            pages.append([r.run_id for r in page])
            before = (page[-1].created_at_ms, page[-1].run_id)

        assert pages == [["r9", "r8", "r7", "r6"], ["r5", "r4", "r3", "r2"], ["r1", "r0"]]
    finally:
        store.close()


def test_load_pending_of_shards(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn)
    try:
        store.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r1")]))
        assert [r.run_id for r in store.load_pending(shards=[0])[0]] == ["r1"]
        assert store.load_pending(shards=[1, 2]) == ([], [])
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
        assert store.get_run("r1") == run("r1")
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
        async with runtimes_on(namespace, address) as start, StateManager(namespace, address=address) as sm:
            await start([Count, Waiter, Collect])
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
        async with runtimes_on(namespace, address) as start, StateManager(namespace, address=address) as sm:
            await start([Count, Waiter, Collect])
            result = await sm.wait(held, timeout=20)
            assert key in Waiter.started  # dispatched again after the restart
            assert result.status is RunStatus.SUCCESS
            (merge,) = [s for s in result.states if s.identifier == "merge"]
            assert merge.outputs == [{"count": "3"}]
            assert all(s.status is StateStatus.SUCCESS for s in result.states)
            assert sorted(json.loads(merge.inputs["values"])) == ["0", "1", "2"]


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
        [sys.executable, "-m", "server", "--port", "0", "--db", db], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(expected), done.stderr
    assert "hunter2" not in done.stderr
