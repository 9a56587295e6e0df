from __future__ import annotations

from exosphere import GraphNodeModel, RunStatus, StateManager
from tests.helpers.runtimes import RuntimeFactory
from tests.nodes import Echo


async def test_one_node_graph_runs(state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph(
        "one", [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="echo", inputs={"text": "hi"})]
    )
    run = await state_manager.trigger("one")
    result = await state_manager.wait(run.run_id, timeout=10)
    assert result.status is RunStatus.SUCCESS
    assert result.states[0].outputs == [{"text": "hi"}]
