"""Rows made in the SQLite writer thread are the states as they were at prepare: the real engine, every commit in
the writer thread and every batch's narrow rows made there (``WRITER_ROWS_FROM`` 1), through a fan-out with
automatic retries, a requeue, a prune, a cancel and a manual retry. Each commit's rows, read back in its
transaction, are its states as prepare saw them (whole); a live run and the ended ones are, state by state, their
rows in the database."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

import server.app
from exosphere import RunStatus, StateManager
from server import sqlite_rows
from server.app import App
from server.graph import CompiledGraph
from server.models import RunRow, StateRow
from server.runstate import Run
from server.runtable import RunTable
from server.status import StateStatus
from server.store import STATE_COLUMNS, WriteBatch
from tests.engine_nodes import Act, Collect, Split, Trial, Waiter
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually

# What a state's row holds that changes after it is made (its ids, node and times made never do).
_COMPARED = (
    "status", "inputs", "attempt", "parent_id", "parent_output", "path", "outputs", "error", "pruned_data",
    "created_at_ms", "updated_at_ms", "run_at_ms", "runtime_name", "started_at_ms", "ran_ms",
)  # fmt: skip


@dataclass
class Seen:
    """Every run the engine held, by id (the one loaded last for a run reopened, kept after it is forgotten), and
    what each commit wrote against what its states were at prepare."""

    runs: dict[str, Run] = field(default_factory=dict)
    # Each batch's states as whole rows, made as prepare ran, by the id of the rows prepared.
    at_prepare: dict[int, list[tuple[object, ...]]] = field(default_factory=dict)
    rows_checked: int = 0
    mismatches: list[tuple[object, ...]] = field(default_factory=list)


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> Seen:
    """Every batch's narrow rows made in the writer thread, every commit there (asked before the app is made); each
    row read back in the commit's own transaction and
    compared with the state as prepare saw it; the engine's runs kept."""
    monkeypatch.setattr(sqlite_rows, "WRITER_ROWS_FROM", 1)
    monkeypatch.setattr(server.app, "INLINE_MAX", 0)  # no commit in the loop's thread, right after its prepare
    seen = Seen()
    add_run, load, prepare, write = RunTable.add_run, RunTable.load, sqlite_rows.prepare, sqlite_rows.write

    def add_run_seen(self: RunTable, run: Run) -> None:
        seen.runs[run.run_id] = run
        add_run(self, run)

    def load_seen(
        self: RunTable,
        run_rows: Sequence[RunRow],
        state_rows: Sequence[StateRow],
        graph_of: Callable[[RunRow], CompiledGraph | None],
    ) -> list[Run]:
        loaded = load(self, run_rows, state_rows, graph_of)
        seen.runs.update((run.run_id, run) for run in loaded)
        return loaded

    def prepare_seen(batch: WriteBatch) -> sqlite_rows.PreparedRows:
        whole = [sqlite_rows.state_params(s) for s in (*batch.new_states, *batch.updated_states)]
        prepared = prepare(batch)
        seen.at_prepare[id(prepared)] = whole
        return prepared

    def write_seen(db: sqlite3.Connection, rows: sqlite_rows.PreparedRows) -> None:
        write(db, rows)
        for want in seen.at_prepare.pop(id(rows)):
            [got] = db.execute(f"SELECT {STATE_COLUMNS} FROM states WHERE run_id = ? AND seq = ?", want[:2])
            seen.rows_checked += 1
            if got != want:
                seen.mismatches.append((got, want))

    monkeypatch.setattr(RunTable, "add_run", add_run_seen)
    monkeypatch.setattr(RunTable, "load", load_seen)
    monkeypatch.setattr(sqlite_rows, "prepare", prepare_seen)
    monkeypatch.setattr(sqlite_rows, "write", write_seen)
    return seen


async def test_every_state_in_memory_is_its_row_when_the_writer_thread_makes_every_row(
    seen: Seen,  # first: before the app is made
    app: App,
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
) -> None:
    await start_runtime([Split, Trial, Collect, Act, Waiter], max_concurrency=8)
    key = uuid.uuid4().hex
    items = [f"ok{i}" for i in range(40)] + ["flaky0", "flaky1", "requeue0", "requeue1", "prune0", "stuck0"]
    await state_manager.upsert_graph(
        "trials",
        [
            gnode(namespace, "Split", "split", {"csv": ",".join(items)}, next_nodes=["trial"]),
            gnode(namespace, "Trial", "trial", {"key": key, "item": "${{ split.outputs.item }}"}, next_nodes=["m"]),
            gnode(
                namespace,
                "Collect",
                "m",
                {"values": "${{ trial.outputs.text }}"},
                unites={"identifier": "split", "strategy": "ALL_SUCCESS"},
            ),
        ],
        retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 10},
    )
    await state_manager.upsert_graph(
        "held",
        [
            gnode(namespace, "Split", "split", {"csv": "a,b,c"}, next_nodes=["act"]),
            gnode(namespace, "Act", "act", {"item": "${{ split.outputs.item }}"}, next_nodes=["wait"]),
            gnode(namespace, "Waiter", "wait", {"key": key, "item": "${{ act.outputs.text }}"}),
        ],
    )
    held = await state_manager.trigger("held")

    def waiting() -> bool:
        waits = [s for s in seen.runs[held.run_id].states if s.identifier == "wait"]
        return len(waits) == 3 and all(s.status == StateStatus.QUEUED for s in waits)

    await assert_eventually(waiting)
    await app.engine.commit()  # a live run: its dispatched states are CREATED in the database
    assert _compare(app, seen.runs[held.run_id]) == 7
    trials = await state_manager.trigger("trials")
    failed = await state_manager.wait(trials.run_id, timeout=30)
    cancelled = await state_manager.cancel_run(held.run_id)
    assert cancelled.status is RunStatus.CANCELLED

    assert failed.status is RunStatus.FAILED  # stuck0 failed twice: its merge waits for a manual retry
    assert states_of(failed, "m") == []
    [stuck] = [s for s in states_of(failed, "trial") if s.inputs["item"] == "stuck0" and s.attempt == 2]
    assert stuck.status.value == "ERRORED"
    retried = await state_manager.retry_state(stuck.state_id)
    done = await state_manager.wait(trials.run_id, timeout=30)
    assert done.status is RunStatus.SUCCESS
    [m] = states_of(done, "m")
    assert m.outputs == [{"count": str(len(items) - 1)}]  # every branch but the pruned one
    assert {s.state_id for s in states_of(done, "trial") if s.inputs["item"] == "stuck0"} >= {retried}
    statuses = {s.status.value for s in states_of(done, "trial")}
    assert statuses == {"SUCCESS", "RETRY_CREATED", "PRUNED", "ERRORED"}

    for run_id, status in ((trials.run_id, "SUCCESS"), (held.run_id, "CANCELLED")):
        run = seen.runs[run_id]
        assert run.status == status and not app.engine.is_live(run_id)  # ended, committed, forgotten
        assert StateStatus.QUEUED not in run.state_counts  # nothing of an ended run is still with a runtime
        assert _compare(app, run) == len(run.states)
        stored = app.store.get_run(run_id)
        assert stored is not None and (stored.status, stored.state_counts) == (run.status, run.state_counts)
    assert seen.runs[held.run_id].state_counts == {StateStatus.SUCCESS: 4, StateStatus.CANCELLED: 3}
    assert len(seen.runs[trials.run_id].states) == 1 + len(items) + 2 + 1 + 1 + 1  # retries: flaky 2, stuck 1 + 1
    assert seen.mismatches == [] and seen.rows_checked > 2 * len(items)


def _compare(app: App, run: Run) -> int:
    """Each state of ``run`` against its row; returns how many. A dispatched state's row says CREATED, or QUEUED when
    the commit with it was prepared after its dispatch (recovery reads both as CREATED: server/runtable.py)."""
    rows = {row.seq: row for row in app.store.get_states(run.run_id, -1, 0)}
    assert sorted(rows) == [s.seq for s in run.states]
    for state in run.states:
        want = [getattr(state, f) for f in _COMPARED]
        got = [getattr(rows[state.seq], f) for f in _COMPARED]
        if want[0] == StateStatus.QUEUED and got[0] == StateStatus.CREATED:
            want[0] = StateStatus.CREATED
        assert got == want, state.state_id
    return len(run.states)
