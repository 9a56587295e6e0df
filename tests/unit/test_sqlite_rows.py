"""Rows the SQLite store writes through its narrow statements read back as whole as the ones it writes whole."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server import sqlite_rows
from server.models import RunRow, StateRow
from server.packed import outputs_json, pack
from server.sqlite_rows import prepare
from server.sqlite_store import SqliteStore
from server.status import RunStatus, StateStatus
from server.store import WriteBatch


def _state(seq: int, **changes: object) -> StateRow:
    state = StateRow(
        state_id=f"r1-{seq}", run_id="r1", identifier="work", node_name="Work", status=StateStatus.CREATED,
        inputs={"item": f"é{seq}"}, attempt=1, parent_id="r1-0", parent_output=seq, path=(seq,),
        created_at_ms=1_000, updated_at_ms=1_000, seq=seq,
    )  # fmt: skip
    return dataclasses.replace(state, **changes)  # type: ignore[arg-type]


def test_new_and_finished_states_read_back_as_written(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    run = RunRow(run_id="r1", namespace="ns", graph_name="g", graph_version=1, status=RunStatus.PENDING)
    new = [
        _state(1),  # not run yet: the narrow insert
        _state(2, run_at_ms=5_000),
        _state(3, status=StateStatus.SUCCESS, outputs=[{"y": "1"}], runtime_name="rt", started_at_ms=1_001, ran_ms=2),
        _state(4, attempt=2, error={"message": "boom", "type": "ValueError"}, status=StateStatus.ERRORED),
    ]
    first = prepare(WriteBatch(new_states=new, runs=[run]))
    assert len(first.new_inserts) == 2 and len(first.inserts) == 2
    store.commit(first)
    done: dict[str, object] = {"status": StateStatus.SUCCESS, "outputs": [{"y": "ü"}], "updated_at_ms": 1_500}
    done |= {"runtime_name": "rt", "ran_ms": 4}
    updated = [
        _state(1, started_at_ms=1_100, **done),  # a success: the narrow update
        _state(2, run_at_ms=5_000, **done),
        _state(3, status=StateStatus.PRUNED, pruned_data='{"why": "x"}', updated_at_ms=1_600),
        _state(4, attempt=2, status=StateStatus.RETRY_CREATED, error={"message": "boom", "type": "E"}),
    ]
    second = prepare(WriteBatch(updated_states=updated))
    assert len(second.done_updates) == 1 and len(second.updates) == 3
    store.commit(second)
    assert store.get_states("r1", -1, 0) == updated


@pytest.fixture
def writer_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Narrow rows made in the writer thread even for a small batch, as for a big one."""
    monkeypatch.setattr(sqlite_rows, "WRITER_ROWS_FROM", 1)


@pytest.mark.usefixtures("writer_rows")
def test_a_new_state_is_written_as_prepared_though_its_row_is_built_at_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    run = RunRow(run_id="r1", namespace="ns", graph_name="g", graph_version=1, status=RunStatus.PENDING)
    fresh = _state(1)
    prepared = prepare(WriteBatch(new_states=[fresh], runs=[run]))
    assert prepared.new_inserts.states == [fresh] and not prepared.inserts  # no row made yet: the state, its columns
    fresh.status, fresh.updated_at_ms, fresh.run_at_ms = StateStatus.SUCCESS, 2_000, 3_000
    fresh.inputs["item"] = "changed"
    store.commit(prepared)
    assert store.get_states("r1", -1, 0) == [_state(1)]
    assert list(prepared.new_inserts.rows()) == list(prepared.new_inserts.rows())  # made again for a retried commit
    assert prepared.new_inserts.made is None
    monkeypatch.setattr(sqlite_rows, "WRITER_ROWS_FROM", 16_384)
    eager = prepare(WriteBatch(new_states=[_state(1)], runs=[run]))  # the rows made in prepare, before any change
    assert eager.new_inserts.made is not None and list(prepared.new_inserts.rows()) == eager.new_inserts.made


@pytest.mark.usefixtures("writer_rows")
def test_inputs_that_never_change_are_written_as_json_in_the_writer_thread_not_copied_at_prepare(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    run = RunRow(run_id="r1", namespace="ns", graph_name="g", graph_version=1, status=RunStatus.PENDING)
    fresh = [_state(1), _state(2)]
    copied = prepare(WriteBatch(new_states=fresh, runs=[run]))
    kept = prepare(WriteBatch(new_states=fresh, runs=[run], stable=True))
    assert copied.new_inserts.inputs == ['{"item":"é1"}', '{"item":"é2"}'] and kept.new_inserts.inputs == []
    assert list(kept.new_inserts.rows()) == list(copied.new_inserts.rows())
    store.commit(kept)
    assert store.get_states("r1", -1, 0) == [_state(1), _state(2)]


@pytest.mark.usefixtures("writer_rows")
def test_a_finished_state_of_a_stable_batch_is_updated_with_its_status_as_prepared(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    run = RunRow(run_id="r1", namespace="ns", graph_name="g", graph_version=1, status=RunStatus.PENDING)
    store.commit(prepare(WriteBatch(new_states=[_state(1), _state(2)], runs=[run], stable=True)))
    done = {"status": StateStatus.SUCCESS, "outputs": [{"y": "ü"}], "updated_at_ms": 1_500, "runtime_name": "rt"}
    finished, requeued = _state(1, **done), _state(2, run_at_ms=9_000, updated_at_ms=1_400)
    prepared = prepare(WriteBatch(updated_states=[finished, requeued], stable=True))
    assert prepared.done_rows.states == [finished] and not prepared.done_updates  # its row made at commit
    assert len(prepared.updates) == 1  # not final: written whole, as prepared
    # A united state whose merge then fails changes status and time: that is the next batch's update.
    finished.status, finished.updated_at_ms = StateStatus.NEXT_CREATED_ERROR, 1_600
    store.commit(prepared)
    assert store.get_states("r1", -1, 0) == [_state(1, **done), requeued]


def test_the_rows_of_a_small_batch_are_made_in_prepare_as_the_writer_thread_would_make_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = {"status": StateStatus.SUCCESS, "outputs": [{"y": "ü"}], "updated_at_ms": 1_500, "runtime_name": "rt"}
    batches = [
        WriteBatch(new_states=[_state(1), _state(2)], stable=True),
        WriteBatch(updated_states=[_state(3, **done)], stable=True),
    ]
    small = [prepare(b) for b in batches]
    assert small[0].new_inserts.made is not None and small[1].done_rows.made is not None
    monkeypatch.setattr(sqlite_rows, "WRITER_ROWS_FROM", 1)
    big = [prepare(b) for b in batches]
    assert big[0].new_inserts.made is None and big[1].done_rows.made is None
    for made, deferred in zip(small, big, strict=True):
        assert list(made.new_inserts.rows()) == list(deferred.new_inserts.rows())
        assert list(made.done_rows.rows()) == list(deferred.done_rows.rows())


def test_a_batch_is_big_by_its_length_and_a_small_one_makes_its_rows_as_the_writer_thread_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_rows, "WRITER_ROWS_FROM", 3)
    done = {"status": StateStatus.SUCCESS, "updated_at_ms": 1_500, "runtime_name": "rt", "ran_ms": 2}
    packed = pack([{"y": "é"}, {"y": "2"}])
    finished = [_state(5, outputs=[{"y": "ü"}], **done), _state(6, outputs=packed, **done)]
    # Three new states, one of them written whole: big by the batch's length, though only two rows are narrow.
    new = [_state(1), _state(2, run_at_ms=5_000), _state(3, status=StateStatus.SUCCESS, outputs=[{"y": "1"}])]
    for stable in (True, False):
        mixed = prepare(WriteBatch(new_states=new, updated_states=finished, stable=stable))
        assert mixed.new_inserts.made is None and len(mixed.new_inserts) == 2 and len(mixed.inserts) == 1
        assert len(mixed.done_rows if stable else mixed.done_updates) == 2
        assert (mixed.done_rows.made is not None) and not (mixed.done_updates if stable else mixed.done_rows)
        monkeypatch.setattr(sqlite_rows, "WRITER_ROWS_FROM", 1)
        deferred = prepare(WriteBatch(new_states=new, updated_states=finished, stable=stable))
        monkeypatch.setattr(sqlite_rows, "WRITER_ROWS_FROM", 3)
        assert list(mixed.new_inserts.rows()) == list(deferred.new_inserts.rows())
        assert list(mixed.done_rows.rows()) == list(deferred.done_rows.rows())
        assert mixed.done_updates == deferred.done_updates and mixed.inserts == deferred.inserts
    # The packed text goes into the row as it is, not a copy; the list of dicts is written as the same JSON.
    small = prepare(WriteBatch(updated_states=finished, stable=True))
    rows = list(small.done_rows.rows())
    assert rows[1][1] is outputs_json(packed) and rows[0][1] == '[{"y":"ü"}]'
    store = SqliteStore(tmp_path / "s.db")
    run = RunRow(run_id="r1", namespace="ns", graph_name="g", graph_version=1, status=RunStatus.PENDING)
    store.commit(prepare(WriteBatch(new_states=[_state(5), _state(6)], runs=[run], stable=True)))
    store.commit(small)
    assert store.get_states("r1", -1, 0) == finished
