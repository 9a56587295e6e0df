"""``Runtime(..., metrics_port=...)``: a runtime's own Prometheus metrics."""

from __future__ import annotations

import httpx

from exosphere import RetryPolicyModel, RunStatus, StateManager
from tests.engine_nodes import Flaky
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.web import sample
from tests.nodes import Echo


async def test_a_runtime_serves_its_own_metrics(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    runtime = await start_runtime([Echo, Flaky], name="measured", max_concurrency=5, metrics_port=0)
    assert runtime.metrics_port > 0
    await state_manager.upsert_graph("ok", [gnode(namespace, "Echo", "e", {"text": "x"})])
    await state_manager.upsert_graph(
        "bad",
        [gnode(namespace, "Flaky", "f", {"key": f"m-{namespace}", "fails": "1"})],
        retry_policy=RetryPolicyModel(max_retries=0),
    )
    assert (await state_manager.trigger_and_wait("ok", timeout=10)).status is RunStatus.SUCCESS
    assert (await state_manager.trigger_and_wait("bad", timeout=10)).status is RunStatus.FAILED
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{runtime.metrics_port}/metrics")).text
    assert sample(text, "exosphere_runtime_executions_total", node="Echo", outcome="executed") == 1
    assert sample(text, "exosphere_runtime_executions_total", node="Flaky", outcome="errored") == 1
    assert sample(text, "exosphere_runtime_execution_seconds_count", node="Echo") == 1
    labels = {"runtime": "measured", "namespace": namespace}
    assert sample(text, "exosphere_runtime_max_concurrency", **labels) == 5
    assert sample(text, "exosphere_runtime_in_flight", **labels) == 0
