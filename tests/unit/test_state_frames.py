"""States encoded straight from their SQLite rows (server/state_frames.py) are the general path's states: each frame
parses to the message ``state_to_pb`` makes of the same stored row, field for field, and is as long."""

from __future__ import annotations

import sqlite3
import tempfile
import uuid
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from exosphere.v1 import scheduler_pb2 as pb
from server.models import StateRow
from server.snapshots import frame
from server.sqlite_store import SqliteStore
from server.state_frames import encode_rows
from server.status import StateStatus
from server.store import WriteBatch
from server.wire import state_to_pb

TEXT = st.text(max_size=40) | st.sampled_from(['say "hi"', "back\\slash", "tab\there", "ünïcödé ✓", "", "{}", '"'])
MAP = st.dictionaries(TEXT, TEXT, max_size=4)
BIG = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def state_rows(draw: st.DrawFn) -> StateRow:
    error = draw(st.none() | st.dictionaries(st.sampled_from(["message", "type", "traceback"]), TEXT, max_size=3))
    return StateRow(
        state_id="",
        run_id="",
        identifier=draw(st.sampled_from(["root", "work", "a-b_c"])),
        node_name=draw(st.sampled_from(["Split", "Tag"])),
        status=draw(st.sampled_from(StateStatus)),
        inputs=draw(MAP),
        attempt=draw(st.integers(min_value=0, max_value=2**32 - 1)),
        parent_id=draw(st.none() | st.just("parent-0") | TEXT),
        parent_output=draw(st.integers(min_value=0, max_value=10)),
        path=tuple(draw(st.lists(st.integers(min_value=0, max_value=99), max_size=3))),
        outputs=draw(st.none() | st.lists(MAP, max_size=4)),
        error=error,
        pruned_data=draw(st.none() | st.just('{"reason":"x"}') | TEXT),
        created_at_ms=draw(BIG),
        updated_at_ms=draw(st.just(0) | BIG),
        run_at_ms=draw(st.just(0) | BIG),
        runtime_name=draw(st.just("") | TEXT),
        started_at_ms=draw(st.just(0) | BIG),
        ran_ms=draw(st.just(0) | BIG),
    )


def _stored(store: SqliteStore, states: list[StateRow]) -> str:
    """Write ``states`` as a run's (numbered in order) and return its id."""
    run_id = uuid.uuid4().hex
    for seq, state in enumerate(states):
        state.run_id, state.seq, state.state_id = run_id, seq, f"{run_id}-{seq}"
    store.write(WriteBatch(new_states=states))
    return run_id


def _parsed(framed: bytes) -> pb.State:
    response = pb.GetRunResponse()
    response.MergeFromString(framed)
    (state,) = response.states
    return state


def _assert_as_the_general_path(store: SqliteStore, run_id: str) -> None:
    general = [frame(state_to_pb(s)) for s in store.get_states(run_id, -1, 0)]
    encoded = encode_rows(run_id, store.get_state_rows(run_id, -1, 0))
    assert encoded is not None, "a row the store wrote left to the general path"
    seqs, frames = encoded
    assert seqs == list(range(len(general)))
    for fast, slow in zip(frames, general, strict=True):
        assert _parsed(fast) == _parsed(slow)
        assert len(fast) == len(slow)  # pages are cut by these lengths


def test_any_state_the_store_writes_encodes_as_the_general_path_encodes_it() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "s.db")

        @settings(max_examples=150, deadline=None)
        @given(st.lists(state_rows(), min_size=1, max_size=6))
        def check(states: list[StateRow]) -> None:
            _assert_as_the_general_path(store, _stored(store, states))

        try:
            check()
        finally:
            store.close()


def _state(**fields: object) -> StateRow:
    values: dict[str, object] = {
        "state_id": "",
        "run_id": "",
        "identifier": "work",
        "node_name": "Tag",
        "status": StateStatus.SUCCESS,
        "inputs": {"text": "x"},
        "attempt": 1,
        "parent_id": "p-0",
        "parent_output": 0,
        "path": (0,),
        "created_at_ms": 1_796_006_411_247,
        "updated_at_ms": 1_796_006_411_411,
    }
    values.update(fields)
    return StateRow(**values)  # type: ignore[arg-type]


def test_every_field_of_a_retried_failed_fanned_out_state_round_trips(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        states = [
            _state(identifier="root", parent_id=None, path=(), outputs=[{"item": str(i)} for i in range(300)]),
            _state(
                status=StateStatus.ERRORED,
                attempt=3,
                inputs={"text": 'a "quoted" \\ value', "k" * 200: "v" * 20_000},
                error={"message": "boom ✓", "type": "ValueError", "traceback": "Traceback...\n" * 50},
                run_at_ms=1_796_006_412_000,
                runtime_name="rt-1",
                started_at_ms=1_796_006_411_300,
                ran_ms=110,
            ),
            _state(status=StateStatus.PRUNED, pruned_data='{"reason":"enough"}', outputs=[]),
            _state(outputs=[{}, {"a": "1", "b": "2"}, {}], inputs={}),
            _state(error={"message": "", "type": "", "traceback": ""}),  # present, all empty: state_to_pb sends it
            _state(error={}),  # empty: left out
        ]
        _assert_as_the_general_path(store, _stored(store, states))
    finally:
        store.close()


def test_a_row_of_a_shape_the_store_never_writes_is_left_to_the_general_path(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    try:
        run_id = _stored(store, [_state(), _state()])
        with sqlite3.connect(tmp_path / "s.db") as db:
            db.execute("UPDATE states SET inputs='{\"n\":1}' WHERE run_id=? AND seq=1", (run_id,))
        rows = store.get_state_rows(run_id, -1, 0)
        assert encode_rows(run_id, rows[:1]) is not None
        assert encode_rows(run_id, rows) is None
        for inputs in ("[]", "not json", '{"a":"1"'):
            assert encode_rows(run_id, [(0, "i", "N", "SUCCESS", inputs, *rows[0][5:])]) is None
        for status in ("NO_SUCH_STATUS", "UNSPECIFIED"):  # UNSPECIFIED: on the wire, never a stored status
            assert encode_rows(run_id, [(*rows[0][:3], status, *rows[0][4:])]) is None
        assert encode_rows(run_id, [(*rows[0][:10], -1, *rows[0][11:])]) is None  # created_at_ms
    finally:
        store.close()
