"""A flood of queued work in one namespace does not starve another."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from exosphere import BaseNode, GraphNodeModel, RunStatus, StateManager
from tests.engine_nodes import Count
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo


class Slow(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> Outputs:
        await asyncio.sleep(0.01)
        return self.Outputs(item=self.inputs.item)


async def test_flooded_namespace_does_not_starve_another(server_address: str, start_runtime: RuntimeFactory) -> None:
    await start_runtime([Count, Slow], namespace="flood", name="flood", max_concurrency=2)
    await start_runtime([Echo], namespace="quiet", name="quiet")
    async with (
        StateManager("flood", address=server_address) as flood,
        StateManager("quiet", address=server_address) as quiet,
    ):
        await flood.upsert_graph(
            "many",
            [
                GraphNodeModel(
                    node_name="Count", namespace="flood", identifier="n", inputs={"n": "5000"}, next_nodes=["s"]
                ),
                GraphNodeModel(
                    node_name="Slow", namespace="flood", identifier="s", inputs={"item": "${{ n.outputs.item }}"}
                ),
            ],
        )
        await quiet.upsert_graph(
            "one", [GraphNodeModel(node_name="Echo", namespace="quiet", identifier="e", inputs={"text": "hi"})]
        )
        flooded = await flood.trigger("many")

        async def queued() -> bool:
            run = await flood.get_run(flooded.run_id)
            return run.state_counts.get("CREATED", 0) > 4000

        await assert_eventually(queued, timeout=20)
        started = time.perf_counter()
        result = await quiet.trigger_and_wait("one", timeout=10)
        elapsed = time.perf_counter() - started
        assert result.status is RunStatus.SUCCESS
        assert elapsed < 1.0, f"quiet namespace waited {elapsed:.2f}s behind the flood"
        assert (await flood.get_run(flooded.run_id)).status is RunStatus.PENDING
        await flood.cancel_run(flooded.run_id)
