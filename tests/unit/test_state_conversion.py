"""States from the wire become the same models validation would make (exosphere/_wire.py builds them without it)."""

from __future__ import annotations

import gc
import json
from datetime import datetime

import pytest

import exosphere._wire
from exosphere._wire import GC_PAUSE_STATES, state_from_pb, states_from_pb
from exosphere.models import StateModel
from exosphere.v1 import common_pb2, scheduler_pb2


def _state(i: int) -> scheduler_pb2.State:
    state = scheduler_pb2.State(
        state_id=f"00a1-{i}",
        run_id="00a1",
        identifier=f"node-{i % 3}",
        node_name="Echo",
        status=[common_pb2.STATE_STATUS_SUCCESS, common_pb2.STATE_STATUS_ERRORED, common_pb2.STATE_STATUS_PRUNED][
            i % 3
        ],
        attempt=1 + i % 2,
        parent_id="" if i == 0 else "00a1-0",
        created_at_unix_ms=1_700_000_000_000 + i,
        updated_at_unix_ms=0 if i % 4 == 0 else 1_700_000_000_500,
        run_at_unix_ms=1_700_000_001_000 if i % 5 == 0 else 0,
        runtime_name="rt-1" if i % 2 else "",
        started_at_unix_ms=1_700_000_000_100 if i % 2 else 0,
        ran_ms=i,
    )
    for k in range(i % 3):
        state.inputs[f"in{k}"] = f"välue {i} ✓"
    for n in range(i % 4):
        state.outputs.add().fields.update({"text": f"out {n}", "more": ""})
    if i % 3 == 1:
        state.error.CopyFrom(common_pb2.StateError(message=f"boom {i}", type="ValueError", traceback="Traceback ..."))
    if i % 3 == 2:
        state.pruned_data_json = json.dumps({"why": i, "nested": [1, {"a": None}]})
    return state


def _validated(state: scheduler_pb2.State) -> StateModel:
    error = state.error
    return StateModel.model_validate(
        {
            "state_id": state.state_id,
            "run_id": state.run_id,
            "identifier": state.identifier,
            "node_name": state.node_name,
            "status": common_pb2.StateStatus.Name(state.status).removeprefix("STATE_STATUS_"),
            "inputs": dict(state.inputs),
            "outputs": [dict(o.fields) for o in state.outputs],
            "error": {"message": error.message, "type": error.type, "traceback": error.traceback}
            if state.HasField("error")
            else None,
            "attempt": state.attempt,
            "parent_id": state.parent_id or None,
            "created_at": state.created_at_unix_ms / 1000 if state.created_at_unix_ms else None,
            "updated_at": state.updated_at_unix_ms / 1000 if state.updated_at_unix_ms else None,
            "run_at": state.run_at_unix_ms / 1000 if state.run_at_unix_ms else None,
            "pruned_data": json.loads(state.pruned_data_json) if state.pruned_data_json else None,
            "runtime_name": state.runtime_name,
            "started_at": state.started_at_unix_ms / 1000 if state.started_at_unix_ms else None,
            "ran_ms": state.ran_ms,
        }
    )


def test_a_converted_state_equals_the_validated_model_field_for_field() -> None:
    for i in range(24):
        state = _state(i)
        built, validated = state_from_pb(state), _validated(state)
        assert built == validated
        assert built.model_dump() == validated.model_dump()
        assert set(built.__dict__) == set(StateModel.model_fields)  # no field left to a default
        assert built.model_fields_set == set(StateModel.model_fields)
        assert type(built.status) is type(validated.status) and built.created_at == validated.created_at
    built.attempt = 7  # an ordinary model: assignable, copyable, serialisable
    assert built.model_copy(update={"ran_ms": 1}).attempt == 7
    assert StateModel.model_validate_json(built.model_dump_json()) == built


def test_a_big_page_pauses_the_collector_only_while_it_converts(monkeypatch: pytest.MonkeyPatch) -> None:
    collecting: list[bool] = []

    def converting(state: scheduler_pb2.State, times: dict[int, datetime | None]) -> StateModel:
        collecting.append(gc.isenabled())
        return state_from_pb(state, times)

    monkeypatch.setattr(exosphere._wire, "state_from_pb", converting)
    states_from_pb([_state(i) for i in range(GC_PAUSE_STATES - 1)])
    assert collecting and all(collecting)  # a small page: no pause
    collecting.clear()
    states = [_state(i) for i in range(GC_PAUSE_STATES + 1)]
    assert gc.isenabled()
    converted = states_from_pb(states)
    assert collecting and not any(collecting)  # a big one: paused for every state
    assert gc.isenabled() and len(converted) == len(states)
    assert converted[7] == _validated(states[7])
    gc.disable()
    try:
        states_from_pb(states)
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.enable()
