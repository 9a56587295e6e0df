"""The Store contract: one suite, run against every backend.

A backend is a ``Backend`` in ``BACKENDS``: a name, how to open a store on the test's directory (opening twice
must reach the same data when ``durable``), and whether a failing statement can abort a batch half-written
(``transactional``, with the error it raises). PostgreSQL opens a database made for the test (tests/helpers/pg.py),
whatever the directory; it is skipped, saying how to enable it, where no server answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.models import GraphNodeSpec, GraphSpec, RunRow, StateRow
from server.sqlite_store import SqliteStore
from server.status import RunStatus, StateStatus
from server.store import InMemoryStore, RunCursor, Store, WriteBatch


@dataclass(frozen=True)
class Backend:
    name: str
    open: Callable[[Path], Store]
    durable: bool
    transactional: bool
    constraint_error: type[Exception] = sqlite3.IntegrityError  # what a NOT NULL violation raises


def _memory() -> Callable[[Path], Store]:
    shared: dict[Path, InMemoryStore] = {}  # one store per test directory, so "reopen" finds it

    def open_(directory: Path) -> Store:
        return shared.setdefault(directory, InMemoryStore())

    return open_


BACKENDS: list[Backend | str] = [
    Backend("memory", _memory(), durable=False, transactional=False),
    Backend("sqlite", lambda d: SqliteStore(d / "contract.db"), durable=True, transactional=True),
    "postgres",  # needs the test's database: made by the fixture below
]


def _postgres(dsn: str) -> Backend:
    import asyncpg

    from server.pg_store import PostgresStore

    return Backend(
        "postgres",
        lambda _: PostgresStore(dsn),
        durable=True,
        transactional=True,
        constraint_error=asyncpg.NotNullViolationError,
    )


@pytest.fixture(params=BACKENDS, ids=[b if isinstance(b, str) else b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "postgres":
        return _postgres(request.getfixturevalue("pg_dsn"))
    assert isinstance(request.param, Backend)
    return request.param


@pytest.fixture
def store(backend: Backend, tmp_path: Path) -> Iterator[Store]:
    opened = backend.open(tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def run(
    run_id: str, *, ms: int = 1000, ns: str = "ns", graph: str = "g", status: RunStatus = RunStatus.PENDING
) -> RunRow:
    return RunRow(
        run_id=run_id,
        namespace=ns,
        graph_name=graph,
        graph_version=1,
        status=status,
        store={"k": "v"},
        created_at_ms=ms,
        updated_at_ms=ms,
        state_counts={"CREATED": 1},
    )


def state(run_id: str, seq: int, *, status: StateStatus = StateStatus.CREATED, parent: str | None = None) -> StateRow:
    return StateRow(
        state_id=f"{run_id}-{seq}",
        run_id=run_id,
        identifier=f"n{seq}",
        node_name="Echo",
        status=status,
        inputs={"text": f"hello {seq}", "ünï": "cödé"},
        attempt=0,
        parent_id=parent,
        parent_output=0,
        path=(0, seq),
        created_at_ms=1000 + seq,
        updated_at_ms=1000 + seq,
        run_at_ms=1000 + seq,
        seq=seq,
    )


def graph(name: str, version: int, *, ns: str = "ns") -> GraphSpec:
    node = GraphNodeSpec(node_name="Echo", namespace=ns, identifier="a", inputs={"text": f"v{version}"})
    return GraphSpec(namespace=ns, name=name, nodes=[node], version=version, updated_at_ms=version)


# ---------------------------------------------------------------------------------------------- write batches


def test_a_batch_writes_runs_states_and_kv_together(store: Store) -> None:
    assert not WriteBatch()
    store.write(WriteBatch(new_states=[state("r1", 0), state("r1", 1, parent="r1-0")], runs=[run("r1")], kv={"a": "1"}))
    assert store.get_run("r1") == run("r1")
    assert store.get_states("r1", -1, 0) == [state("r1", 0), state("r1", 1, parent="r1-0")]
    assert store.get_kv("a") == "1"
    stored_run, stored_state = store.get_run("r1"), store.get_states("r1", -1, 1)[0]
    assert stored_run is not None
    assert (type(stored_run.status), type(stored_state.status)) == (RunStatus, StateStatus)


def test_updated_states_change_their_result_columns(store: Store) -> None:
    store.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r1")]))
    done = state("r1", 0, status=StateStatus.ERRORED)
    done.attempt, done.outputs, done.error, done.pruned_data = 2, [{"x": "1"}, {"x": "2"}], {"message": "no"}, "p"
    done.updated_at_ms, done.run_at_ms = 5000, 6000
    done.runtime_name, done.started_at_ms, done.ran_ms = "runtime-1", 4000, 1000
    finished = run("r1", status=RunStatus.FAILED)
    store.write(WriteBatch(updated_states=[done], runs=[finished]))
    assert store.get_states("r1", -1, 0) == [done]
    assert store.get_run("r1") == finished


def test_an_update_of_a_state_never_written_is_ignored(store: Store) -> None:
    store.write(WriteBatch(updated_states=[state("ghost", 0, status=StateStatus.SUCCESS)]))
    assert store.get_states("ghost", -1, 0) == []


def test_prepare_snapshots_the_batch_so_later_changes_wait_for_the_next_batch(store: Store) -> None:
    first, row = state("r1", 0), run("r1")
    prepared = store.prepare(WriteBatch(new_states=[first], runs=[row], kv={"a": "1"}))
    first.status, first.inputs["text"] = StateStatus.SUCCESS, "changed"
    row.status, row.store["k"] = RunStatus.SUCCESS, "changed"
    store.commit(prepared)
    assert store.get_states("r1", -1, 0) == [state("r1", 0)]
    assert store.get_run("r1") == run("r1")


def test_a_failing_batch_leaves_nothing_behind(backend: Backend, store: Store) -> None:
    if not backend.transactional:
        pytest.skip(f"{backend.name} cannot fail half-way through a batch")
    store.write(WriteBatch(runs=[run("r0")], kv={"a": "0"}))
    broken = run("r1")
    broken.status = None  # type: ignore[assignment]  # NOT NULL: the last statement of the batch fails
    with pytest.raises(backend.constraint_error):
        store.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r2"), broken], kv={"a": "1"}))
    assert store.get_states("r1", -1, 0) == []
    assert store.get_run("r2") is None
    assert store.get_kv("a") == "0"
    store.write(WriteBatch(runs=[run("r3")]))  # and the store goes on
    assert store.get_run("r3") is not None


def test_a_state_or_run_written_again_as_new_replaces_the_stored_row(store: Store) -> None:
    store.write(WriteBatch(new_states=[state("r1", seq) for seq in range(300)], runs=[run("r1")], kv={"k": "1"}))
    again = [state("r1", seq, status=StateStatus.SUCCESS) for seq in range(100, 400)]  # 200 stored, 100 not
    ended = run("r1", status=RunStatus.SUCCESS)
    store.write(WriteBatch(new_states=again, runs=[ended], kv={"k": "2"}))  # big: PostgreSQL tries COPY first
    assert store.get_states("r1", -1, 0) == [state("r1", seq) for seq in range(100)] + again
    assert store.get_run("r1") == ended
    assert store.get_kv("k") == "2"


def test_a_state_both_new_and_updated_in_one_batch_ends_updated(store: Store) -> None:
    done = state("r1", 0, status=StateStatus.SUCCESS)
    store.write(WriteBatch(new_states=[state("r1", 0)], updated_states=[done], runs=[run("r1")]))
    assert store.get_states("r1", -1, 0) == [done]


def test_rows_read_back_are_copies(store: Store) -> None:
    store.write(WriteBatch(new_states=[state("r1", 0)], runs=[run("r1")]))
    read = store.get_run("r1")
    assert read is not None
    read.store["k"] = "changed by the caller"
    read.state_counts["CREATED"] = 99
    store.get_states("r1", -1, 0)[0].inputs["text"] = "changed by the caller"
    pending_runs, pending_states = store.load_pending()
    pending_runs[0].store["k"] = "changed by the caller"
    pending_states[0].inputs["text"] = "changed by the caller"
    store.list_runs("ns", None, 10)[0].store["k"] = "changed by the caller"
    assert store.get_run("r1") == run("r1")
    assert store.get_states("r1", -1, 0) == [state("r1", 0)]


# ---------------------------------------------------------------------------------------------- reads


def test_states_page_by_sequence(store: Store) -> None:
    states = [state("r1", seq) for seq in range(7)]
    store.write(WriteBatch(new_states=list(reversed(states)), runs=[run("r1")]))
    store.write(WriteBatch(new_states=[state("other", 0)], runs=[run("other")]))
    assert store.get_states("r1", -1, 0) == states
    assert store.get_states("r1", -1, 3) == states[:3]
    assert store.get_states("r1", 2, 3) == states[3:6]
    assert store.get_states("r1", 5, 3) == states[6:]
    assert store.get_states("r1", 6, 3) == []
    assert store.get_states("missing", -1, 0) == []
    assert store.get_run("missing") is None


def test_runs_list_newest_first_with_the_run_id_breaking_ties(store: Store) -> None:
    rows = [run(f"r{i:02d}", ms=1000 + i // 4) for i in range(12)]  # four runs in each millisecond
    store.write(WriteBatch(runs=rows))
    order = sorted(rows, key=lambda r: (r.created_at_ms, r.run_id), reverse=True)
    assert store.list_runs("ns", None, 100) == order
    assert store.list_runs("ns", None, 5) == order[:5]
    for size in (1, 3, 4, 5):
        seen: list[RunRow] = []
        after: RunCursor | None = None
        while page := store.list_runs("ns", None, size, after=after):
            seen.extend(page)
            after = RunCursor.of(page[-1])
        assert seen == order, size
    # A cursor that is not a stored run still splits the order where it falls.
    assert [r.run_id for r in store.list_runs("ns", None, 2, after=RunCursor(1001, "r05"))] == ["r04", "r03"]
    assert [r.run_id for r in store.list_runs("ns", None, 9, after=RunCursor(1001, ""))] == ["r03", "r02", "r01", "r00"]


def test_runs_list_by_namespace_graph_and_status(store: Store) -> None:
    store.write(
        WriteBatch(
            runs=[
                run("a", ms=1, graph="g1"),
                run("b", ms=2, graph="g2", status=RunStatus.SUCCESS),
                run("c", ms=3, graph="g1", status=RunStatus.SUCCESS),
                run("d", ms=4, ns="elsewhere"),
            ]
        )
    )

    def ids(graph_name: str | None, status: str | None = None) -> list[str]:
        return [r.run_id for r in store.list_runs("ns", graph_name, 10, status=status)]

    assert ids(None) == ["c", "b", "a"]
    assert ids("") == ids(None)  # "" means any graph, like an unset proto field
    assert ids("g1") == ["c", "a"]
    assert ids(None, RunStatus.SUCCESS) == ["c", "b"]
    assert ids("", "") == ids(None)
    assert ids("g1", RunStatus.SUCCESS) == ["c"]
    assert ids("nope") == []
    assert store.list_runs("empty", None, 10) == []


def test_runs_are_found_by_a_prefix_of_their_id(store: Store) -> None:
    ids = ["0a1f00", "0a1f01", "0a2000", "0a1fff", "0b0000", "0a1e99"]
    store.write(WriteBatch(runs=[run(r, ns="other" if r == "0a1f01" else "ns") for r in ids]))
    assert store.find_runs("0a1f", 10) == [("0a1f00", "ns"), ("0a1f01", "other"), ("0a1fff", "ns")]
    assert store.find_runs("0a1f", 2) == [("0a1f00", "ns"), ("0a1f01", "other")]
    assert store.find_runs("0a1f01", 10) == [("0a1f01", "other")]
    assert store.find_runs("0a2", 10) == [("0a2000", "ns")]
    assert store.find_runs("0c", 10) == []
    assert store.find_runs("0A1F", 10) == []  # run ids are lowercase hex: anything else names no run
    assert store.find_runs("0a_", 10) == store.find_runs("%", 10) == store.find_runs("", 10) == []


def test_load_pending_returns_pending_runs_with_their_states_in_order(store: Store) -> None:
    store.write(
        WriteBatch(
            new_states=[state("p2", 1), state("p1", 1), state("p1", 0), state("p2", 0), state("done", 0)],
            runs=[run("p1"), run("done", status=RunStatus.SUCCESS), run("p2")],
        )
    )
    runs, states = store.load_pending()
    assert sorted(r.run_id for r in runs) == ["p1", "p2"]
    assert [(s.run_id, s.seq) for s in states] == [(r.run_id, seq) for r in runs for seq in (0, 1)]
    assert states[0] == state(runs[0].run_id, 0)


def test_kv_reads_the_last_value_written(store: Store) -> None:
    assert store.get_kv("k") is None
    store.write(WriteBatch(kv={"k": "1", "j": "x"}))
    store.write(WriteBatch(kv={"k": "2"}))
    assert (store.get_kv("k"), store.get_kv("j")) == ("2", "x")


# ---------------------------------------------------------------------------------------------- graphs, nodes


def test_graphs_keep_every_version_and_list_the_current_one(store: Store) -> None:
    store.save_graph(graph("g", 1))
    store.save_graph(graph("g", 2))
    store.save_graph(graph("h", 1, ns="other"))
    assert sorted(store.load_graphs(), key=lambda g: g.name) == [graph("g", 2), graph("h", 1, ns="other")]
    assert store.load_graph_version("ns", "g", 1) == graph("g", 1)
    assert store.load_graph_version("ns", "g", 2) == graph("g", 2)
    assert store.load_graph_version("ns", "g", 3) is None
    store.delete_graph("ns", "g")
    store.delete_graph("ns", "never saved")
    assert store.load_graphs() == [graph("h", 1, ns="other")]
    assert store.load_graph_version("ns", "g", 2) == graph("g", 2)  # runs started on it can still be read


def test_nodes_keep_the_last_schema_registered(store: Store) -> None:
    store.save_nodes("ns", [("Echo", b"\x00one"), ("Upper", b"up")])
    store.save_nodes("ns", [("Echo", b"\x00two")])
    store.save_nodes("other", [("Echo", b"three")])
    store.save_nodes("empty", [])
    expected = [("ns", "Echo", b"\x00two"), ("ns", "Upper", b"up"), ("other", "Echo", b"three")]
    assert sorted(store.load_nodes()) == expected


# ---------------------------------------------------------------------------------------------- persistence


def test_everything_survives_close_and_reopen(backend: Backend, tmp_path: Path) -> None:
    if not backend.durable:
        pytest.skip(f"{backend.name} keeps nothing once closed")
    first = backend.open(tmp_path)
    first.save_graph(graph("g", 1))
    first.save_nodes("ns", [("Echo", b"schema")])
    first.write(
        WriteBatch(new_states=[state("r1", 0)], runs=[run("r1"), run("r2", status=RunStatus.SUCCESS)], kv={"a": "1"})
    )
    first.close()
    first.close()  # idempotent
    again = backend.open(tmp_path)
    try:
        assert again.load_graphs() == [graph("g", 1)]
        assert again.load_graph_version("ns", "g", 1) == graph("g", 1)
        assert again.load_nodes() == [("ns", "Echo", b"schema")]
        assert again.load_pending() == ([run("r1")], [state("r1", 0)])
        assert again.get_run("r2") == run("r2", status=RunStatus.SUCCESS)
        assert [r.run_id for r in again.list_runs("ns", None, 10)] == ["r2", "r1"]
        assert again.get_kv("a") == "1"
    finally:
        again.close()
