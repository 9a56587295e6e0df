"""Manual retry of a failed state reopens a finished run; the run's outcome follows the new attempt."""

from __future__ import annotations

import uuid

from exosphere import GraphNodeModel, RetryPolicyModel, RunStatus, StateManager, StateStatus, UnitesModel
from tests.engine_nodes import Collect, Flaky, Split
from tests.helpers.runtimes import RuntimeFactory


async def test_retrying_the_failed_state_of_a_failed_run_makes_it_succeed(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Flaky])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "once",
        [GraphNodeModel(node_name="Flaky", namespace=namespace, identifier="f", inputs={"key": key, "fails": "1"})],
        retry_policy=RetryPolicyModel(max_retries=0),
    )
    run = await state_manager.wait((await state_manager.trigger("once")).run_id, timeout=10)
    assert run.status is RunStatus.FAILED
    failed = run.states[0]
    new_id = await state_manager.retry_state(failed.state_id, request_id="r1")
    assert await state_manager.retry_state(failed.state_id, request_id="r1") == new_id
    again = await state_manager.wait(run.run_id, timeout=10)
    assert again.status is RunStatus.SUCCESS
    assert [(s.attempt, s.status) for s in again.states] == [(1, StateStatus.ERRORED), (2, StateStatus.SUCCESS)]


async def test_retrying_a_failed_branch_lets_the_all_success_merge_run(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Split, Flaky, Collect])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "merge",
        [
            GraphNodeModel(
                node_name="Split", namespace=namespace, identifier="split", inputs={"csv": "a"}, next_nodes=["flaky"]
            ),
            GraphNodeModel(
                node_name="Flaky",
                namespace=namespace,
                identifier="flaky",
                inputs={"key": key + "${{ split.outputs.item }}", "fails": "1"},
                next_nodes=["collect"],
            ),
            GraphNodeModel(
                node_name="Collect",
                namespace=namespace,
                identifier="collect",
                inputs={"values": "${{ flaky.outputs.attempts }}"},
                unites=UnitesModel(identifier="split"),
            ),
        ],
        retry_policy=RetryPolicyModel(max_retries=0),
    )
    run = await state_manager.wait((await state_manager.trigger("merge")).run_id, timeout=10)
    assert run.status is RunStatus.FAILED
    assert not [s for s in run.states if s.identifier == "collect"]
    await state_manager.retry_state(run.state("flaky").state_id)
    again = await state_manager.wait(run.run_id, timeout=10)
    assert again.status is RunStatus.SUCCESS
    assert again.state("collect").inputs == {"values": '["2"]'}
