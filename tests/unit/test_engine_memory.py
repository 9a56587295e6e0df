"""What a live state holds is shared where it can be: the engine without sockets (tests/helpers/engine.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.models import FieldSpec, NodeSchema, RetryPolicySpec
from server.packed import PackedOutputs
from server.runstate import State
from server.sqlite_store import SqliteStore
from server.status import ResultKind, RunStatus, StateStatus
from server.tracing import Tracing
from tests.helpers.engine import NS, Kit, node, schema

SPLIT = schema("Split", outputs=("x",))
ECHO = schema("Echo")


async def test_a_branch_whose_inputs_are_its_parents_output_shares_that_dict(kit: Kit) -> None:
    session = kit.connect(SPLIT, ECHO)
    await kit.graph(
        "g",
        [
            node("split", "Split", next_nodes=["same", "renamed"]),
            node("same", "Echo", {"x": "${{ split.outputs.x }}"}),
            node("renamed", "Echo", {"x": "item ${{ split.outputs.x }}"}),
        ],
    )
    await kit.trigger("g", inputs={"x": "go"})
    [split] = await kit.dispatched(session)
    kit.answer(session, split, outputs=[{"x": "a"}, {"x": "b"}])
    children = await kit.dispatched(session)
    assert split.outputs is not None
    same = sorted((s for s in children if s.identifier == "same"), key=lambda s: s.path)
    assert [s.inputs for s in same] == [{"x": "a"}, {"x": "b"}]
    assert all(s.inputs is out for s, out in zip(same, split.outputs, strict=True))
    renamed = sorted((s for s in children if s.identifier == "renamed"), key=lambda s: s.path)
    assert [s.inputs for s in renamed] == [{"x": "item a"}, {"x": "item b"}]
    assert all(s.inputs is not out for s, out in zip(renamed, split.outputs, strict=True))
    # Dispatched in one tick with one timeout: one deadline object for all of them.
    assert len({id(s.deadline_ms) for s in children}) == 1
    assert {s.deadline_ms for s in children} == {kit.now + kit.settings.default_timeout_ms}


async def test_a_branch_reading_a_field_its_parent_did_not_return_fails_as_before(kit: Kit) -> None:
    optional = NodeSchema(
        namespace=NS, name="Maybe", inputs=(FieldSpec("x", True),), outputs=(FieldSpec("x", False),), secrets=(),
        raw=b"Maybe",
    )  # fmt: skip
    session = kit.connect(optional, ECHO)
    await kit.graph("g", [node("maybe", "Maybe", next_nodes=["e"]), node("e", "Echo", {"x": "${{ maybe.outputs.x }}"})])
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [maybe] = await kit.dispatched(session)
    kit.answer(session, maybe, outputs=[{"x": "a"}, {}])
    run, states = await kit.run(run_id)
    assert run.status is RunStatus.FAILED
    assert [s.status for s in states] == [StateStatus.NEXT_CREATED_ERROR]  # no branch is created
    assert states[0].error is not None and "maybe has no output 'x'" in states[0].error["message"]


async def test_live_states_are_found_by_id_through_their_run(kit: Kit) -> None:
    session = kit.connect(SPLIT, ECHO)
    await kit.graph("g", [node("split", "Split", next_nodes=["e"]), node("e", "Echo", {"x": "${{ split.outputs.x }}"})])
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [split] = await kit.dispatched(session)
    kit.answer(session, split, outputs=[{"x": str(i)} for i in range(300)])
    table = kit.engine._table
    states = list(table.runs[run_id].states)
    assert len(states) == 301 and list(kit.engine.live_states()) == states
    assert all(table.state(s.state_id) is s for s in states)
    for missing in (f"{run_id}-301", f"{run_id}-x", f"{run_id}-", "nope-1", run_id, ""):
        assert table.state(missing) is None
    states[5:7] = []  # a run loaded without some of its states (recovery drops what it cannot run)
    table.runs[run_id].states = states
    assert table.state(f"{run_id}-8") is states[6] and table.state(f"{run_id}-6") is None


async def test_a_finished_state_without_next_nodes_keeps_its_outputs_as_the_json_text_of_its_row(kit: Kit) -> None:
    merge = schema("Merge", inputs=("xs",), outputs=("y",))
    session = kit.connect(SPLIT, ECHO, merge, credit=2_000)
    await kit.graph(
        "g",
        [
            node("split", "Split", next_nodes=["e"]),
            node("e", "Echo", {"x": "${{ split.outputs.x }}"}, next_nodes=["m"]),
            node("m", "Merge", {"xs": "${{ e.outputs.y }}"}, unites="split"),
        ],
    )
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [split] = await kit.dispatched(session)
    count = 1_500  # more branches than a merge decodes in one parse (server/packed.py)
    kit.answer(session, split, outputs=[{"x": str(i)} for i in range(count)])
    branches = await kit.dispatched(session)
    for branch in reversed(branches):  # answered out of order: the merge still reads them in branch order
        kit.answer(session, branch, outputs=[{"y": f"é{branch.inputs['x']}"}])
    [m] = await kit.dispatched(session)
    assert json.loads(m.inputs["xs"]) == [f"é{i}" for i in range(count)]
    assert isinstance(split.outputs, list)  # its children's inputs are its outputs: kept as they are
    leaf = branches[7]
    assert isinstance(leaf.outputs, PackedOutputs) and leaf.outputs == [{"y": "é7"}]
    _, rows = await kit.run(run_id)
    [row] = [r for r in rows if r.state_id == leaf.state_id]
    assert row.outputs == [{"y": "é7"}] and row.status is StateStatus.SUCCESS
    kit.answer(session, m, outputs=[{"y": "done"}])
    run, _ = await kit.run(run_id)
    assert run.status is RunStatus.SUCCESS


async def test_only_united_states_hold_fan_in_counts_and_an_answered_state_keeps_no_deadline(kit: Kit) -> None:
    merge = schema("Merge", inputs=("xs",), outputs=("y",))
    session = kit.connect(SPLIT, ECHO, merge)
    await kit.graph(
        "g",
        [
            node("split", "Split", next_nodes=["e"]),
            node("e", "Echo", {"x": "${{ split.outputs.x }}"}, next_nodes=["m"]),
            node("m", "Merge", {"xs": "${{ e.outputs.y }}"}, unites="split"),
        ],
    )
    await kit.trigger("g", inputs={"x": "go"})
    [split] = await kit.dispatched(session)
    kit.answer(session, split, outputs=[{"x": "a"}, {"x": "b"}])
    branches = await kit.dispatched(session)
    assert split.aside is not None and split.aside.open_descendants == 2
    assert all(b.aside is None for b in branches) and all(b.deadline_ms for b in branches)
    kit.answer(session, branches[0], outputs=[{"y": "1"}])
    assert branches[0].deadline_ms == 0 and branches[0].ran_ms == 0 and branches[0].runtime_name
    assert split.aside.open_descendants == 1 and split.aside.collected == {"e": [branches[0]]}
    kit.answer(session, branches[1], outputs=[{"y": "2"}])
    [m] = await kit.dispatched(session)
    assert json.loads(m.inputs["xs"]) == ["1", "2"] and m.aside is None
    assert split.aside.collected is None  # released once its merge was made
    # The record every live state is: 31 fields, within pymalloc's 288-byte size class with its GC header.
    assert State.__basicsize__ + 16 <= 288


async def test_states_loaded_from_the_store_keep_a_leafs_outputs_packed_as_a_live_leaf_does(tmp_path: Path) -> None:
    """After a restart, a shard taken over in cluster mode, and a manual retry that reopens a finished run, a leaf's
    outputs are the JSON text of its row again, and its merge reads them."""
    db = tmp_path / "s.db"
    kit = await Kit(SqliteStore(db)).start()
    try:
        merge = schema("Merge", inputs=("xs",), outputs=("y",))
        session = kit.connect(SPLIT, ECHO, merge)
        no_retry = RetryPolicySpec(max_retries=0)
        await kit.graph(
            "g",
            [
                node("split", "Split", next_nodes=["e"]),
                node("e", "Echo", {"x": "${{ split.outputs.x }}"}, next_nodes=["m"], retry_policy=no_retry),
                node("m", "Merge", {"xs": "${{ e.outputs.y }}"}, unites="split"),
            ],
        )
        run_id = await kit.trigger("g", inputs={"x": "go"})
        [split] = await kit.dispatched(session)
        kit.answer(session, split, outputs=[{"x": "é0"}, {"x": "1"}, {"x": "2"}])
        ok, failing, in_flight = sorted(await kit.dispatched(session), key=lambda s: s.path)
        kit.answer(session, ok)
        kit.fail(session, failing)
        assert isinstance(ok.outputs, PackedOutputs)
        await kit.engine.commit()

        def leaves_as_stored() -> dict[str, object]:
            with sqlite3.connect(db) as conn:
                stored = dict(conn.execute("SELECT seq, outputs FROM states WHERE run_id = ?", (run_id,)).fetchall())
            states = kit.engine._table.runs[run_id].states
            ran = [(r.runtime_name, r.started_at_ms, r.ran_ms) for r in kit.store.get_states(run_id, -1, 0)]
            assert [(s.runtime_name, s.started_at_ms, s.ran_ms) for s in states] == ran  # who ran it, when, how long
            assert ran[0][0] == "unit-runtime"
            assert isinstance(states[0].outputs, list) and states[0].identifier == "split"  # read by its children
            leaves: dict[str, object] = {s.state_id: s.outputs for s in states if s.identifier == "e" and s.outputs}
            for state in states:
                if state.identifier == "e" and state.outputs is not None:
                    assert isinstance(state.outputs, PackedOutputs) and state.outputs.json == stored[state.seq]
            return leaves

        await kit.restart()  # recovery: the run is loaded from its rows
        assert leaves_as_stored() == {ok.state_id: [{"y": "é0"}]}
        await kit.stop()
        kit.store.close()
        taker = Kit(SqliteStore(db), own_all=False)  # cluster mode: a replica takes the run's shard over
        taker.schemas.update(kit.schemas)
        kit = await taker.start()
        assert run_id not in kit.engine._table.runs
        kit.engine.shards.acquire([0])
        assert leaves_as_stored() == {ok.state_id: [{"y": "é0"}]}
        session = kit.connect(SPLIT, ECHO, merge)
        [again] = await kit.dispatched(session)
        assert again.state_id == in_flight.state_id
        kit.answer(session, again)
        run, _ = await kit.run(run_id)
        assert run.status is RunStatus.FAILED and run_id not in kit.engine._table.runs

        retried = await kit.engine.retry_state(failing.state_id, "")  # reopens the finished run from its rows
        assert leaves_as_stored() == {ok.state_id: [{"y": "é0"}], again.state_id: [{"y": "2"}]}
        [retry] = await kit.dispatched(session)
        assert retry.state_id == retried
        kit.answer(session, retry)
        [m] = await kit.dispatched(session)
        assert json.loads(m.inputs["xs"]) == ["é0", "1", "2"]
        kit.answer(session, m)
        run, _ = await kit.run(run_id)
        assert run.status is RunStatus.SUCCESS
    finally:
        await kit.stop()
        kit.store.close()


async def test_a_traced_state_keeps_nothing_of_its_dispatch_span_once_answered(kit: Kit) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    kit.engine.enable_tracing(Tracing(provider))
    merge = schema("Merge", inputs=("xs",), outputs=("y",))
    session = kit.connect(SPLIT, ECHO, merge)
    await kit.graph(
        "g",
        [
            node("split", "Split", next_nodes=["e"]),
            node("e", "Echo", {"x": "${{ split.outputs.x }}"}, next_nodes=["m"]),
            node("m", "Merge", {"xs": "${{ e.outputs.y }}"}, unites="split"),
        ],
    )
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [split] = await kit.dispatched(session)
    assert split.aside is not None and split.aside.trace_span is not None and split.traceparent
    kit.answer(session, split, outputs=[{"x": "a"}, {"x": "b"}])
    branches = await kit.dispatched(session)
    assert all(b.aside is not None and b.aside.trace_span is not None and b.traceparent for b in branches)
    # The united state keeps its Aside for its fan-in counts, without the span.
    assert split.aside is not None and split.aside.open_descendants == 2 and split.aside.trace_span is None
    assert split.traceparent == ""
    kit.answer(session, branches[0], outputs=[{"y": "1"}])
    assert branches[0].aside is None and branches[0].traceparent == ""
    kit.answer(session, branches[1], ResultKind.REQUEUE, delay_ms=500)
    assert branches[1].aside is None and branches[1].traceparent == ""
    kit.advance(500)
    kit.engine.sweep()
    [again] = await kit.dispatched(session)  # dispatched again: a span of its own
    assert again is branches[1] and again.aside is not None and again.aside.trace_span is not None
    kit.answer(session, again, outputs=[{"y": "2"}])
    [m] = await kit.dispatched(session)
    assert again.aside is None and json.loads(m.inputs["xs"]) == ["1", "2"]
    kit.answer(session, m, outputs=[{"y": "done"}])
    assert m.aside is None and m.traceparent == ""
    run, _ = await kit.run(run_id)
    assert run.status is RunStatus.SUCCESS
    spans = [s for s in exporter.get_finished_spans() if s.name == "exosphere.state"]
    results = sorted(str(s.attributes["exosphere.result"]) for s in spans if s.attributes)
    assert results == ["executed"] * 4 + ["requeue"]
