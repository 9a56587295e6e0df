"""Retries (policies, delays, overrides) and the node signals, through the real scheduler and runtimes."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest

from exosphere import GraphNodeModel, ReQueueAfterSignal, RunStatus, StateManager, StateStatus
from tests.engine_nodes import Flaky, Pruner, Requeuer, Tag
from tests.helpers.graphs import attempts_of, gnode
from tests.helpers.runtimes import RuntimeFactory

# Timestamps are in milliseconds; a retry may start early by at most this much, and late by scheduling noise.
TOLERANCE_MS = 80
LATE_MS = 1000


def ms(value: datetime | None) -> float:
    assert value is not None
    return value.timestamp() * 1000


def flaky_graph(namespace: str, key: str, fails: int, **flaky_extra: Any) -> list[GraphNodeModel]:
    """root(Tag) -> flaky(Flaky), so the retried state has a parent."""
    return [
        gnode(namespace, "Tag", "root", {"text": "go"}, next_nodes=["flaky"]),
        gnode(namespace, "Flaky", "flaky", {"key": key, "fails": str(fails)}, **flaky_extra),
    ]


# ---------------------------------------------------------------------------------------------------- retries


async def test_failing_twice_then_succeeding_keeps_each_attempt_and_its_error(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Tag, Flaky])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "flaky",
        flaky_graph(namespace, key, fails=2),
        retry_policy={"max_retries": 3, "strategy": "FIXED", "backoff_factor": 50},
    )
    run = await state_manager.trigger("flaky")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    attempts = attempts_of(result, "flaky")
    assert [(s.attempt, s.status) for s in attempts] == [
        (1, StateStatus.RETRY_CREATED),
        (2, StateStatus.RETRY_CREATED),
        (3, StateStatus.SUCCESS),
    ]
    root = attempts_of(result, "root")[0]
    for number, state in enumerate(attempts[:2], start=1):
        assert state.error is not None
        assert state.error["message"] == f"boom {number}"
        assert state.error["type"] == "ValueError"
        assert "Traceback" in state.error["traceback"] and f"ValueError: boom {number}" in state.error["traceback"]
    assert attempts[2].error is None
    assert attempts[2].outputs == [{"attempts": "3"}]
    assert all(s.inputs == {"key": key, "fails": "2"} for s in attempts)
    assert all(s.parent_id == root.state_id for s in attempts)
    assert len(Flaky.starts[key]) == 3


async def test_exhausted_retries_leave_the_state_errored_and_fail_the_run(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Tag, Flaky])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "hopeless",
        flaky_graph(namespace, key, fails=100),
        retry_policy={"max_retries": 2, "strategy": "FIXED", "backoff_factor": 10},
    )
    run = await state_manager.trigger("hopeless")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.FAILED
    attempts = attempts_of(result, "flaky")
    assert [(s.attempt, s.status) for s in attempts] == [
        (1, StateStatus.RETRY_CREATED),
        (2, StateStatus.RETRY_CREATED),
        (3, StateStatus.ERRORED),
    ]
    assert attempts[2].error is not None and attempts[2].error["message"] == "boom 3"
    assert len(Flaky.starts[key]) == 3


@pytest.mark.parametrize(
    ("policy", "expected_gaps_ms"),
    [
        ({"strategy": "EXPONENTIAL", "backoff_factor": 100, "exponent": 2}, [100, 200, 400]),
        ({"strategy": "LINEAR", "backoff_factor": 100}, [100, 200, 300]),
        ({"strategy": "FIXED", "backoff_factor": 150}, [150, 150, 150]),
    ],
    ids=["exponential", "linear", "fixed"],
)
async def test_retry_delays_follow_the_strategy(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    policy: dict[str, Any],
    expected_gaps_ms: list[int],
) -> None:
    await start_runtime([Tag, Flaky])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "delays", flaky_graph(namespace, key, fails=3), retry_policy={"max_retries": 3, **policy}
    )
    run = await state_manager.trigger("delays")
    result = await state_manager.wait(run.run_id, timeout=15)

    assert result.status is RunStatus.SUCCESS
    attempts = attempts_of(result, "flaky")
    assert [s.attempt for s in attempts] == [1, 2, 3, 4]
    starts = Flaky.starts[key]
    assert len(starts) == 4
    for k, expected in enumerate(expected_gaps_ms):
        failed, retry = attempts[k], attempts[k + 1]
        # The new attempt is created when the previous one fails...
        assert abs(ms(retry.created_at) - ms(failed.updated_at)) <= TOLERANCE_MS
        # ...and finishes one delay later (plus dispatch and execution time).
        gap = ms(retry.updated_at) - ms(failed.updated_at)
        assert expected - TOLERANCE_MS <= gap <= expected + LATE_MS, (k + 1, gap, expected)
        # Measured in the node: the retry started no earlier than the delay after the failed execution.
        started_gap = starts[k + 1] - starts[k]
        assert expected - TOLERANCE_MS <= started_gap <= expected + LATE_MS, (k + 1, started_gap, expected)


async def test_node_retry_policy_overrides_the_graph_policy(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Tag, Flaky])
    more, fewer = uuid.uuid4().hex, uuid.uuid4().hex
    node_policy_more = {"max_retries": 2, "strategy": "FIXED", "backoff_factor": 10}
    await state_manager.upsert_graph(
        "node-more",
        flaky_graph(namespace, more, fails=2, retry_policy=node_policy_more),
        retry_policy={"max_retries": 0},
    )
    await state_manager.upsert_graph(
        "node-fewer",
        flaky_graph(namespace, fewer, fails=1, retry_policy={"max_retries": 0}),
        retry_policy={"max_retries": 3, "strategy": "FIXED", "backoff_factor": 10},
    )
    run_more = await state_manager.trigger("node-more")
    run_fewer = await state_manager.trigger("node-fewer")
    result_more = await state_manager.wait(run_more.run_id, timeout=10)
    result_fewer = await state_manager.wait(run_fewer.run_id, timeout=10)

    assert result_more.status is RunStatus.SUCCESS
    assert [(s.attempt, s.status) for s in attempts_of(result_more, "flaky")] == [
        (1, StateStatus.RETRY_CREATED),
        (2, StateStatus.RETRY_CREATED),
        (3, StateStatus.SUCCESS),
    ]
    assert result_fewer.status is RunStatus.FAILED
    assert [(s.attempt, s.status) for s in attempts_of(result_fewer, "flaky")] == [(1, StateStatus.ERRORED)]
    assert len(Flaky.starts[fewer]) == 1


# ---------------------------------------------------------------------------------------------------- signals


async def test_prune_signal_ends_the_branch_keeps_its_data_and_the_run_succeeds(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Pruner, Tag])
    await state_manager.upsert_graph(
        "prune",
        [
            gnode(namespace, "Pruner", "pruner", {"reason": "x"}, next_nodes=["after"]),
            gnode(namespace, "Tag", "after", {"text": "${{ pruner.outputs.text }}"}),
        ],
    )
    run = await state_manager.trigger("prune")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    (pruned,) = attempts_of(result, "pruner")
    assert pruned.status is StateStatus.PRUNED
    assert pruned.pruned_data == {"reason": "x"}
    assert pruned.outputs == []
    assert attempts_of(result, "after") == []
    assert result.state_counts == {"PRUNED": 1}


async def test_requeue_after_signal_runs_the_same_state_again_later(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Requeuer, Tag])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "requeue",
        [
            gnode(namespace, "Requeuer", "requeuer", {"key": key, "delay_ms": "200"}, next_nodes=["after"]),
            gnode(namespace, "Tag", "after", {"text": "${{ requeuer.outputs.runs }}"}),
        ],
    )
    started = time.monotonic()
    run = await state_manager.trigger("requeue")
    result = await state_manager.wait(run.run_id, timeout=10)

    assert result.status is RunStatus.SUCCESS
    (state,) = attempts_of(result, "requeuer")  # the same state, not a new attempt
    assert state.status is StateStatus.SUCCESS
    assert state.attempt == 1
    assert state.error is None
    assert state.inputs == {"key": key, "delay_ms": "200"}
    assert state.outputs == [{"runs": "2"}]
    (after,) = attempts_of(result, "after")
    assert after.inputs == {"text": "2"}
    calls = Requeuer.calls[key]
    assert len(calls) == 2
    (first_at, first_inputs), (second_at, second_inputs) = calls
    assert first_inputs == second_inputs == {"key": key, "delay_ms": "200"}
    assert second_at - first_at >= 0.2
    assert second_at - started < 5


def test_requeue_after_signal_refuses_a_non_positive_delay() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        ReQueueAfterSignal(timedelta(0))
    with pytest.raises(ValueError, match="greater than 0"):
        ReQueueAfterSignal(timedelta(milliseconds=-5))
    assert ReQueueAfterSignal(timedelta(milliseconds=1)).delay == timedelta(milliseconds=1)
