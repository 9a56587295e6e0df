"""The engine's state machine, without sockets: in-memory store, a clock the test moves, a fake runtime session."""

from __future__ import annotations

import json

import pytest

from exosphere.errors import ConflictError, ConnectionFailedError, StateNotFoundError
from server.models import GraphNodeSpec, RetryPolicySpec
from server.retry import retry_delay_ms
from server.status import ResultKind, RunStatus, StateStatus
from server.store import InMemoryStore
from tests.helpers.engine import NS, Kit, node, schema

ECHO = schema("Echo")
FAN = schema("Fan", outputs=("y",))
MERGE = schema("Merge", inputs=("xs",), outputs=("y",))
NO_RETRY = RetryPolicySpec(max_retries=0)


def fan_graph(strategy: str = "ALL_SUCCESS") -> list[GraphNodeSpec]:
    return [
        node("fan", "Fan", next_nodes=["work"]),
        node("work", "Echo", {"x": "${{ fan.outputs.y }}"}, next_nodes=["merge"]),
        node("merge", "Merge", {"xs": "${{ work.outputs.y }}"}, unites=("fan", strategy)),
    ]


async def test_fan_out_gives_each_branch_its_output_and_the_merge_every_branch(kit: Kit) -> None:
    session = kit.connect(ECHO, FAN, MERGE)
    await kit.graph("g", fan_graph())
    run_id = await kit.trigger("g", inputs={"x": "go"})
    await kit.run_all(session, {"fan": [{"y": "a"}, {"y": "b"}, {"y": "c"}], "merge": [{"y": "m"}]})
    run, _ = await kit.run(run_id)
    states = await kit.by_identifier(run_id)
    assert run.status is RunStatus.SUCCESS
    assert sorted(s.inputs["x"] for s in states["work"]) == ["a", "b", "c"]
    assert [s.path for s in sorted(states["work"], key=lambda s: s.path)] == [(0,), (1,), (2,)]
    [merge] = states["merge"]
    assert json.loads(merge.inputs["xs"]) == ["a", "b", "c"]


async def test_a_fan_out_of_none_still_runs_downstream_once(kit: Kit) -> None:
    session = kit.connect(ECHO, schema("Quiet", outputs=()))
    await kit.graph("g", [node("q", "Quiet", next_nodes=["e"]), node("e", "Echo", {"x": "after"})])
    run_id = await kit.trigger("g", inputs={"x": "go"})
    await kit.run_all(session, {"q": []})
    states = await kit.by_identifier(run_id)
    assert [s.inputs for s in states["e"]] == [{"x": "after"}]
    assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS


@pytest.mark.parametrize(("strategy", "merged"), [("ALL_SUCCESS", False), ("ALL_DONE", True)])
async def test_unites_with_a_failed_branch(kit: Kit, strategy: str, merged: bool) -> None:
    session = kit.connect(ECHO, FAN, MERGE)
    await kit.graph("g", fan_graph(strategy), retry_policy=NO_RETRY)
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [fan] = await kit.dispatched(session)
    kit.answer(session, fan, outputs=[{"y": "a"}, {"y": "b"}])
    ok, bad = await kit.dispatched(session)
    kit.answer(session, ok)
    kit.fail(session, bad)
    await kit.run_all(session)
    run, _ = await kit.run(run_id)
    states = await kit.by_identifier(run_id)
    assert run.status is RunStatus.FAILED
    assert ("merge" in states) is merged
    if merged:
        assert json.loads(states["merge"][0].inputs["xs"]) == [ok.inputs["x"]]


async def test_a_pruned_branch_does_not_stop_all_success(kit: Kit) -> None:
    session = kit.connect(ECHO, FAN, MERGE)
    await kit.graph("g", fan_graph("ALL_SUCCESS"))
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [fan] = await kit.dispatched(session)
    kit.answer(session, fan, outputs=[{"y": "a"}, {"y": "b"}])
    keep, prune = await kit.dispatched(session)
    kit.answer(session, keep)
    kit.answer(session, prune, ResultKind.PRUNED, pruned_data='{"why": "no"}')
    await kit.run_all(session)
    states = await kit.by_identifier(run_id)
    assert json.loads(states["merge"][0].inputs["xs"]) == [keep.inputs["x"]]
    assert {s.status for s in states["work"]} == {StateStatus.SUCCESS, StateStatus.PRUNED}
    assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS


async def test_nested_unites_fire_inner_merge_before_outer(kit: Kit) -> None:
    session = kit.connect(ECHO, FAN, MERGE)
    await kit.graph(
        "g",
        [
            node("outer", "Fan", next_nodes=["inner"]),
            node("inner", "Fan", {"x": "${{ outer.outputs.y }}"}, next_nodes=["leaf"]),
            node("leaf", "Echo", {"x": "${{ inner.outputs.y }}"}, next_nodes=["m_in"]),
            node("m_in", "Merge", {"xs": "${{ leaf.outputs.y }}"}, unites="inner", next_nodes=["m_out"]),
            node("m_out", "Merge", {"xs": "${{ leaf.outputs.y }}"}, unites="outer"),
        ],
    )
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [outer] = await kit.dispatched(session)
    kit.answer(session, outer, outputs=[{"y": "1"}, {"y": "2"}])
    inner = await kit.dispatched(session)
    for state in inner:
        v = state.inputs["x"]
        kit.answer(session, state, outputs=[{"y": f"{v}a"}, {"y": f"{v}b"}])
    await kit.run_all(session)
    states = await kit.by_identifier(run_id)
    assert len(states["m_in"]) == 2
    [m_out] = states["m_out"]
    assert json.loads(m_out.inputs["xs"]) == ["1a", "1b", "2a", "2b"]
    last_inner_merge = max(s.seq for s in states["m_in"])
    assert m_out.seq > last_inner_merge
    assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS


@pytest.mark.parametrize(
    "strategy",
    [f"{b}{j}" for b in ("EXPONENTIAL", "LINEAR", "FIXED") for j in ("", "_FULL_JITTER", "_EQUAL_JITTER")],
)
async def test_every_retry_strategy_delays_each_attempt_by_its_policy(kit: Kit, strategy: str) -> None:
    policy = RetryPolicySpec(max_retries=3, strategy=strategy, backoff_factor_ms=1000, exponent=3, max_delay_ms=5000)
    session = kit.connect(ECHO)
    await kit.graph("g", [node("e")], retry_policy=policy)
    run_id = await kit.trigger("g", inputs={"x": "go"})
    for retry in (1, 2, 3):
        [state] = await kit.dispatched(session)
        assert state.attempt == retry
        kit.fail(session, state)
        await kit.engine.commit()
        [*_, new] = (await kit.run(run_id))[1]
        delay = new.run_at_ms - kit.now
        exact = retry_delay_ms(policy.model_copy(update={"strategy": strategy.split("_")[0]}), retry)
        if strategy.endswith("FULL_JITTER"):
            assert 0 <= delay <= exact
        elif strategy.endswith("EQUAL_JITTER"):
            assert exact // 2 <= delay <= exact
        else:
            assert delay == {"EXPONENTIAL": min(5000, 1000 * 3 ** (retry - 1)), "LINEAR": 1000 * retry}.get(
                strategy, 1000
            )
        if delay > 0:  # full jitter may draw no delay at all: the retry is then due at once
            assert await kit.dispatched(session) == []  # not before its time
        kit.advance(delay)
        kit.engine.sweep()
    [last] = await kit.dispatched(session)
    kit.fail(session, last, "still broken")
    run, states = await kit.run(run_id)
    assert run.status is RunStatus.FAILED
    assert [s.status for s in states] == [StateStatus.RETRY_CREATED] * 3 + [StateStatus.ERRORED]
    assert states[-1].error == {"message": "still broken", "type": "RuntimeError"}


async def test_a_state_past_its_timeout_is_timed_out_cancelled_and_its_credit_returns_with_the_ack(kit: Kit) -> None:
    session = kit.connect(schema("Slow", timeout_ms=1000), credit=1)
    await kit.graph("g", [node("s", "Slow")], retry_policy=NO_RETRY)
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [state] = await kit.dispatched(session)
    kit.advance(999)
    kit.engine.sweep()
    assert state.status is StateStatus.QUEUED
    kit.advance(2)
    kit.engine.sweep()
    assert session.cancels == [state.state_id]
    run, [row] = await kit.run(run_id)
    assert (run.status, row.status) == (RunStatus.FAILED, StateStatus.TIMEDOUT)
    assert "timeout of 1000 ms" in (row.error or {})["message"]
    assert session.credit == 0  # held until the runtime acknowledges the cancel
    kit.answer(session, state)  # its late result: ignored, but the credit returns
    assert session.credit == 1
    assert kit.engine.ignored_results == 1


async def test_requeue_runs_the_state_again_later_without_a_retry(kit: Kit) -> None:
    session = kit.connect(ECHO)
    await kit.graph("g", [node("e")], retry_policy=NO_RETRY)
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [state] = await kit.dispatched(session)
    kit.answer(session, state, ResultKind.REQUEUE, delay_ms=500)
    assert await kit.dispatched(session) == []
    kit.advance(500)
    kit.engine.sweep()
    [again] = await kit.dispatched(session)
    assert (again.state_id, again.attempt) == (state.state_id, 1)
    kit.answer(session, again)
    assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS


async def test_a_lost_runtime_gives_its_states_back_to_the_queue(kit: Kit) -> None:
    first = kit.connect(ECHO)
    await kit.graph("g", [node("e")])
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [state] = await kit.dispatched(first)
    first.last_seen -= 10  # silent past its lease
    kit.engine.sweep()
    assert first.closed and "lease expired" in first.close_reason
    second = kit.connect(ECHO)
    [again] = await kit.dispatched(second)
    assert again.state_id == state.state_id
    kit.answer(second, again)
    assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS


async def test_cancel_stops_queued_states_and_ends_the_run_cancelled(kit: Kit) -> None:
    session = kit.connect(ECHO, FAN, MERGE)
    await kit.graph("g", fan_graph())
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [fan] = await kit.dispatched(session)
    kit.answer(session, fan, outputs=[{"y": "a"}, {"y": "b"}])
    queued = await kit.dispatched(session)
    run = await kit.engine.cancel_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert sorted(session.cancels) == sorted(s.state_id for s in queued)
    states = await kit.by_identifier(run_id)
    assert {s.status for s in states["work"]} == {StateStatus.CANCELLED}
    assert "merge" not in states


async def test_manual_retry_reopens_a_failed_run_once_per_request_id_per_namespace(kit: Kit) -> None:
    session = kit.connect(ECHO)
    other = kit.connect(schema("Echo", namespace="other"), namespace="other")
    await kit.graph("g", [node("e")], retry_policy=NO_RETRY)
    await kit.graph("g", [node("e", namespace="other")], namespace="other", retry_policy=NO_RETRY)
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [state] = await kit.dispatched(session)
    kit.fail(session, state)
    assert (await kit.run(run_id))[0].status is RunStatus.FAILED
    assert not kit.engine.is_live(run_id)  # finished and forgotten: the retry reloads it

    new_id = await kit.engine.retry_state(state.state_id, "req-1")
    assert await kit.engine.retry_state(state.state_id, "req-1") == new_id
    assert (await kit.run(run_id))[0].status is RunStatus.PENDING
    with pytest.raises(ConflictError, match="a later attempt exists"):
        await kit.engine.retry_state(state.state_id, "req-2")

    other_run = await kit.trigger("g", namespace="other", inputs={"x": "go"})
    [o] = await kit.dispatched(other)
    kit.answer(other, o, ResultKind.ERRORED, error={"message": "x", "type": "E"})
    await kit.engine.commit()
    other_state = (await kit.run(other_run))[1][0]
    assert other_state.status is StateStatus.ERRORED
    other_new = await kit.engine.retry_state(other_state.state_id, "req-1")  # same request id, other namespace
    assert other_new == f"{other_run}-1" != new_id

    [again] = await kit.dispatched(session)
    assert (again.state_id, again.attempt) == (new_id, 2)
    kit.answer(session, again)
    assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS


async def test_retry_of_an_unknown_or_succeeded_state_is_refused(kit: Kit) -> None:
    session = kit.connect(ECHO)
    await kit.graph("g", [node("e")])
    run_id = await kit.trigger("g", inputs={"x": "go"})
    await kit.run_all(session)
    with pytest.raises(StateNotFoundError):
        await kit.engine.retry_state(f"{run_id}-99", "")
    with pytest.raises(StateNotFoundError):
        await kit.engine.retry_state("nope", "")
    with pytest.raises(ConflictError, match="it is SUCCESS"):
        await kit.engine.retry_state(f"{run_id}-0", "")
    assert not kit.engine.is_live(run_id)  # the refused retry did not leave the run loaded


async def test_outputs_that_break_the_schema_error_the_state(kit: Kit) -> None:
    session = kit.connect(ECHO)
    await kit.graph("g", [node("e")], retry_policy=NO_RETRY)
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [state] = await kit.dispatched(session)
    kit.answer(session, state, outputs=[{"y": "ok", "z": "extra"}])
    _, [row] = await kit.run(run_id)
    assert row.status is StateStatus.ERRORED
    assert row.error == {"message": "Echo output #0: undeclared fields ['z']", "type": "InvalidOutputsError"}


async def test_a_result_naming_another_state_than_its_dispatch_is_ignored(kit: Kit) -> None:
    session = kit.connect(ECHO, credit=2)
    await kit.graph("g", [node("e")])
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [state] = await kit.dispatched(session)
    from server.engine import ResultIn

    kit.engine.handle_results(
        session, [ResultIn("someone-else-0", state.dispatch_id, ResultKind.EXECUTED, outputs=[{"y": "forged"}])]
    )
    assert state.status is StateStatus.QUEUED
    assert session.credit == 1 and kit.engine.ignored_results == 1
    kit.answer(session, state)
    _, [row] = await kit.run(run_id)
    assert row.outputs == [{"y": "go"}]


async def test_recovery_round_trip_requeues_what_was_in_flight(kit: Kit) -> None:
    session = kit.connect(ECHO, FAN, MERGE)
    await kit.graph("g", fan_graph())
    run_id = await kit.trigger("g", inputs={"x": "go"})
    [fan] = await kit.dispatched(session)
    kit.answer(session, fan, outputs=[{"y": "a"}, {"y": "b"}, {"y": "c"}])
    first, *rest = await kit.dispatched(session)
    kit.answer(session, first)
    await kit.engine.commit()

    await kit.restart()  # the engine is dropped; a new one loads the store
    session = kit.connect(ECHO, FAN, MERGE)
    again = await kit.dispatched(session)
    assert sorted(s.state_id for s in again) == sorted(s.state_id for s in rest)
    for state in again:
        kit.answer(session, state)
    await kit.run_all(session, {"merge": [{"y": "m"}]})
    run, _ = await kit.run(run_id)
    states = await kit.by_identifier(run_id)
    assert run.status is RunStatus.SUCCESS
    assert json.loads(states["merge"][0].inputs["xs"]) == ["a", "b", "c"]


async def test_only_graph_versions_live_runs_use_stay_in_memory(kit: Kit) -> None:
    session = kit.connect(ECHO)
    await kit.graph("g", [node("e")])
    run_id = await kit.trigger("g", inputs={"x": "go"})
    for _ in range(20):
        await kit.graph("g", [node("e", inputs={"x": "v2"})])
    assert kit.engine.catalog.version_count() == 2  # the current one and the one the pending run uses
    await kit.run_all(session)
    assert (await kit.run(run_id))[0].graph_version == 1
    assert kit.engine.catalog.version_count() == 1


async def test_trigger_checks_name_every_problem(kit: Kit) -> None:
    kit.connect(schema("Two", inputs=("a", "b")))
    await kit.graph("g", [node("t", "Two", inputs={"a": "${{ store.k }}"})], store_config={"required_keys": ["k"]})
    from exosphere.errors import GraphNotFoundError, InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as caught:
        await kit.trigger("g", inputs={"zzz": "1"})
    assert "inputs ['zzz'] are not declared" in str(caught.value)
    assert "missing required store keys: ['k']" in str(caught.value)
    with pytest.raises(InvalidArgumentError, match=r"needs inputs \['b'\]"):
        await kit.trigger("g", store={"k": "1"})
    with pytest.raises(InvalidArgumentError, match="start_delay"):
        await kit.trigger("g", store={"k": "1"}, inputs={"b": "2"}, start_delay_ms=-1)
    with pytest.raises(GraphNotFoundError):
        await kit.trigger("nope")
    assert NS in kit.engine.namespaces()


class FlakyStore(InMemoryStore):
    """A store whose database is unreachable for the first ``outage`` commits."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage
        self.refused = 0

    def commit(self, prepared: object) -> None:
        if self.refused < self.outage:
            self.refused += 1
            raise ConnectionFailedError("PostgreSQL at db:5432/x is unavailable: connection refused")
        super().commit(prepared)


async def test_commits_wait_for_an_unreachable_database_and_lose_nothing() -> None:
    store = FlakyStore(outage=4)
    kit = await Kit(store).start()
    try:
        session = kit.connect(ECHO)
        await kit.graph("g", [node("e")])
        run_id = await kit.trigger("g", inputs={"x": "go"})  # held until the database answers again
        assert store.refused == 4
        await kit.run_all(session)
        assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS
        assert kit.engine.fatal_error is None
        stored = store.get_run(run_id)
        assert stored is not None and stored.status is RunStatus.SUCCESS
    finally:
        await kit.stop()
