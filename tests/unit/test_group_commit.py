"""The group commit on a real SQLite file: what one tick changed is one transaction, each state written once."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from server.commit import GroupCommit
from server.models import RunRow, StateRow
from server.runstate import Run, State
from server.sqlite_store import SqliteStore
from server.status import RunStatus, StateStatus


def _state(seq: int, run: Run | None = None) -> State:
    return State(
        state_id=f"r1-{seq}", run_id="r1", identifier="work", node_name="Work", status=StateStatus.CREATED,
        inputs={"item": str(seq)}, attempt=1, parent_id=None, parent_output=0, path=(seq,), created_at_ms=1_000,
        updated_at_ms=1_000, seq=seq, run=run,  # type: ignore[arg-type]
    )  # fmt: skip


def _row(state: State) -> StateRow:
    return StateRow(**{f.name: getattr(state, f.name) for f in dataclasses.fields(StateRow)})


async def test_a_state_made_and_changed_in_one_tick_is_inserted_once_as_it_is_then(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    committed: list[list[State]] = []
    loop = asyncio.get_running_loop()
    commit = GroupCommit(store, lambda: loop, lambda changed, _: committed.append(changed), lambda exc: None)
    run = Run(run_id="r1", namespace="ns", graph_name="g", graph_version=1, status=RunStatus.PENDING)
    first, second = _state(0, run), _state(1, run)
    commit.mark_run(run)
    commit.add_state(first)
    commit.add_state(second)
    second.status, second.outputs, second.updated_at_ms = StateStatus.SUCCESS, [{"y": "1"}], 1_500
    commit.mark(second)  # changed in the tick it was made in: its insert carries the change
    await commit.wait()
    assert committed == [[first, second]]
    assert store.get_states("r1", -1, 0) == [_row(_state(0)), _row(second)]
    second.status, second.updated_at_ms = StateStatus.PRUNED, 1_600  # a later tick: an update
    commit.mark(second)
    await commit.wait()
    assert committed[1] == [second]
    assert [s.status for s in store.get_states("r1", -1, 0)] == [StateStatus.CREATED, StateStatus.PRUNED]
    await commit.drain()
    stored = store.get_run("r1")
    assert isinstance(stored, RunRow) and stored.status is RunStatus.PENDING
    store.close()
