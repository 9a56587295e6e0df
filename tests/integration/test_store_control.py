"""The run store, and run control (cancel, delete_graph, retry_state, list_runs), through the real scheduler."""

from __future__ import annotations

import time
import uuid

import pytest

from exosphere import GraphNotFoundError, RunStatus, StateManager, StateStatus
from exosphere.errors import ConflictError, InvalidArgumentError
from tests.engine_nodes import Flaky, Sleeper, StoreWriter, Tag, Waiter
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually
from tests.nodes import Concat

# ---------------------------------------------------------------------------------------------------- store

GREETING_STORE = {"required_keys": ["who"], "default_values": {"greeting": "Hello", "punct": "!"}}


async def greeting_graph(state_manager: StateManager, namespace: str) -> None:
    await state_manager.upsert_graph(
        "greet",
        [
            gnode(
                namespace,
                "Concat",
                "root",
                {"left": "<${{ store.greeting }}, ${{ store.who }} and ${{store.who}}${{ store.punct }}>"},
                next_nodes=["child"],
            ),
            gnode(
                namespace,
                "Concat",
                "child",
                {"left": "${{ root.outputs.text }}", "right": " -- ${{ store.who }}/${{ store.who }}"},
            ),
        ],
        store_config=GREETING_STORE,
    )


async def test_store_values_and_defaults_are_spliced_into_inputs(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Concat])
    await greeting_graph(state_manager, namespace)

    run = await state_manager.trigger("greet", store={"who": "Ada"})
    result = await state_manager.wait(run.run_id, timeout=10)
    assert result.status is RunStatus.SUCCESS
    assert result.store == {"who": "Ada", "greeting": "Hello", "punct": "!"}
    assert states_of(result, "root")[0].inputs == {"left": "<Hello, Ada and Ada!>"}
    assert states_of(result, "root")[0].outputs == [{"text": "<Hello, Ada and Ada!>"}]
    assert states_of(result, "child")[0].outputs == [{"text": "<Hello, Ada and Ada!> -- Ada/Ada"}]

    # A trigger's value wins over the default.
    run = await state_manager.trigger("greet", store={"who": "Bo", "greeting": "Hi"})
    result = await state_manager.wait(run.run_id, timeout=10)
    assert result.status is RunStatus.SUCCESS
    assert result.store == {"who": "Bo", "greeting": "Hi", "punct": "!"}
    assert states_of(result, "child")[0].outputs == [{"text": "<Hi, Bo and Bo!> -- Bo/Bo"}]


async def test_trigger_without_a_required_store_key_is_refused_naming_the_key(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Concat])
    await greeting_graph(state_manager, namespace)

    with pytest.raises(InvalidArgumentError) as caught:
        await state_manager.trigger("greet", store={"greeting": "Hi"})
    assert "who" in str(caught.value)
    runs, _ = await state_manager.list_runs("greet")
    assert runs == []


async def test_a_store_write_by_a_node_is_seen_by_later_nodes_and_in_the_run(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([StoreWriter, Tag])
    await state_manager.upsert_graph(
        "cursor",
        [
            gnode(namespace, "StoreWriter", "writer", {"value": "42"}, next_nodes=["reader"]),
            gnode(namespace, "Tag", "reader", {"text": "cursor=${{ store.cursor }}"}),
        ],
        store_config={"default_values": {"cursor": "0"}},
    )
    run = await state_manager.trigger("cursor")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    assert states_of(result, "writer")[0].outputs == [{"before": "0"}]
    (reader,) = states_of(result, "reader")
    assert reader.inputs == {"text": "cursor=42"}
    assert reader.outputs == [{"text": "cursor=42"}]
    assert result.store == {"cursor": "42"}
    assert (await state_manager.get_run(run.run_id)).store["cursor"] == "42"


# ---------------------------------------------------------------------------------------------------- control


async def test_cancel_run_cancels_the_running_node_on_its_runtime(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Sleeper, Tag])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "sleepy",
        [
            gnode(namespace, "Sleeper", "sleeper", {"key": key, "seconds": "30"}, next_nodes=["after"]),
            gnode(namespace, "Tag", "after", {"text": "${{ sleeper.outputs.text }}"}),
        ],
    )
    run = await state_manager.trigger("sleepy")
    await assert_eventually(lambda: key in Sleeper.started, timeout=10)

    cancelled = await state_manager.cancel_run(run.run_id)
    assert cancelled.status is RunStatus.CANCELLED
    result = await state_manager.wait(run.run_id, timeout=10)
    assert result.status is RunStatus.CANCELLED
    assert [s.status for s in result.states] == [StateStatus.CANCELLED]
    assert states_of(result, "after") == []
    await assert_eventually(lambda: key in Sleeper.cancelled, timeout=10)


async def test_delete_graph_is_refused_while_a_run_is_pending_unless_forced(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Waiter])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph("held", [gnode(namespace, "Waiter", "wait", {"key": key})])
    run = await state_manager.trigger("held")
    try:
        await assert_eventually(lambda: key in Waiter.started, timeout=10)

        with pytest.raises(ConflictError, match="pending"):
            await state_manager.delete_graph("held")
        assert (await state_manager.get_graph("held")).name == "held"
        assert (await state_manager.get_run(run.run_id)).status is RunStatus.PENDING

        await state_manager.delete_graph("held", force=True)
        with pytest.raises(GraphNotFoundError):
            await state_manager.get_graph("held")
        result = await state_manager.wait(run.run_id, timeout=10)
        assert result.status is RunStatus.CANCELLED
        assert [s.status for s in result.states] == [StateStatus.CANCELLED]
    finally:
        Waiter.release(key)


async def test_retry_state_creates_one_new_attempt_per_request_id(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Tag, Flaky, Waiter])
    flaky_key, hold_key = uuid.uuid4().hex, uuid.uuid4().hex
    # The `hold` branch keeps the run pending while the `flaky` branch has failed for good.
    await state_manager.upsert_graph(
        "manual-retry",
        [
            gnode(namespace, "Tag", "root", {"text": "go"}, next_nodes=["flaky", "hold"]),
            gnode(namespace, "Flaky", "flaky", {"key": flaky_key, "fails": "1"}),
            gnode(namespace, "Waiter", "hold", {"key": hold_key}),
        ],
        retry_policy={"max_retries": 0},
    )
    run = await state_manager.trigger("manual-retry")
    try:

        async def flaky_errored() -> bool:
            states = states_of(await state_manager.get_run(run.run_id), "flaky")
            return bool(states) and states[0].status is StateStatus.ERRORED

        await assert_eventually(flaky_errored, timeout=10)
        before = await state_manager.get_run(run.run_id)
        assert before.status is RunStatus.PENDING
        (errored,) = states_of(before, "flaky")
        root = states_of(before, "root")[0]

        with pytest.raises(ConflictError):
            await state_manager.retry_state(root.state_id)  # a SUCCESS state cannot be retried

        request_id = uuid.uuid4().hex
        new_id = await state_manager.retry_state(errored.state_id, request_id=request_id)
        assert new_id != errored.state_id
        assert await state_manager.retry_state(errored.state_id, request_id=request_id) == new_id

        async def new_attempt_succeeded() -> bool:
            states = {s.state_id: s for s in (await state_manager.get_run(run.run_id)).states}
            return new_id in states and states[new_id].status is StateStatus.SUCCESS

        await assert_eventually(new_attempt_succeeded, timeout=10)
        after = await state_manager.get_run(run.run_id)
        attempts = states_of(after, "flaky")
        assert len(attempts) == 2  # the repeated request did not create a third state
        new = next(s for s in attempts if s.state_id == new_id)
        assert new.attempt == 2
        assert new.inputs == errored.inputs
        assert new.parent_id == errored.parent_id
        assert new.outputs == [{"attempts": "2"}]
        assert next(s for s in attempts if s.state_id == errored.state_id).status is StateStatus.ERRORED
        assert len(Flaky.starts[flaky_key]) == 2
    finally:
        Waiter.release(hold_key)
    result = await state_manager.wait(run.run_id, timeout=10)
    assert result.status is not RunStatus.PENDING


async def test_list_runs_returns_newest_first_with_state_counts(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Tag, Waiter])
    await state_manager.upsert_graph(
        "listed",
        [
            gnode(namespace, "Tag", "a", {"text": "x"}, next_nodes=["b"]),
            gnode(namespace, "Tag", "b", {"text": "${{ a.outputs.text }}"}),
        ],
    )
    hold_key = uuid.uuid4().hex
    await state_manager.upsert_graph("held", [gnode(namespace, "Waiter", "wait", {"key": hold_key})])

    async def trigger_after_clock_tick(graph: str) -> str:
        # created_at has millisecond resolution: make sure each run is created in a later millisecond.
        previous_ms = time.time() * 1000
        await assert_eventually(lambda: time.time() * 1000 >= previous_ms + 2)
        return (await state_manager.trigger(graph)).run_id

    listed_ids = []
    for _ in range(3):
        run_id = await trigger_after_clock_tick("listed")
        assert (await state_manager.wait(run_id, timeout=10)).status is RunStatus.SUCCESS
        listed_ids.append(run_id)
    held_id = await trigger_after_clock_tick("held")
    try:
        await assert_eventually(lambda: hold_key in Waiter.started, timeout=10)

        runs, token = await state_manager.list_runs("listed")
        assert [r.run_id for r in runs] == listed_ids[::-1]
        assert token == ""
        assert all(r.status is RunStatus.SUCCESS and r.state_counts == {"SUCCESS": 2} for r in runs)
        assert all(r.graph_name == "listed" for r in runs)

        everything, _ = await state_manager.list_runs()
        assert [r.run_id for r in everything] == [held_id, *listed_ids[::-1]]
        held = everything[0]
        assert held.status is RunStatus.PENDING
        assert sum(held.state_counts.values()) == 1
        assert held.state_counts.get("SUCCESS", 0) == 0

        first_page, token = await state_manager.list_runs(page_size=2)
        assert [r.run_id for r in first_page] == [held_id, listed_ids[2]]
        assert token
        second_page, _ = await state_manager.list_runs(page_size=2, page_token=token)
        assert [r.run_id for r in second_page] == listed_ids[1::-1]
    finally:
        Waiter.release(hold_key)
    assert (await state_manager.wait(held_id, timeout=10)).status is RunStatus.SUCCESS
