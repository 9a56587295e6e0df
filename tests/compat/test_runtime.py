"""exospherehost's Runtime on a real scheduler: start() inside a loop, and workers as the concurrency limit."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

import exosphere
from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager


class Slow(BaseNode):
    running = 0
    most = 0

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        n: str

    async def execute(self) -> Outputs:
        Slow.running += 1
        Slow.most = max(Slow.most, Slow.running)
        try:
            await asyncio.sleep(0.05)
        finally:
            Slow.running -= 1
        return self.Outputs(n=self.inputs.n)


async def test_start_in_a_running_loop_returns_a_task_and_workers_bound_concurrency(
    namespace: str, state_manager_uri: str, state_manager: exosphere.StateManager
) -> None:
    runtime = Runtime(namespace, "in-loop", [Slow], state_manager_uri, workers=1)
    task = runtime.start()
    assert isinstance(task, asyncio.Task)
    try:
        sm = StateManager(namespace, state_manager_uri)
        nodes = [GraphNodeModel(node_name="Slow", namespace=namespace, identifier="s", inputs={"n": "0"})]
        await sm.upsert_graph("g", nodes, {})
        run_ids = [(await sm.trigger("g", inputs={"n": str(i)}))["run_id"] for i in range(4)]
        for run_id in run_ids:
            assert (await state_manager.wait(run_id, timeout=20)).status is exosphere.RunStatus.SUCCESS
        assert Slow.most == 1  # workers=1: one state at a time
    finally:
        runtime.stop()
        async with asyncio.timeout(10):
            await task
