"""OpenTelemetry: a span for the trigger, one per state dispatch, one per execution in the runtime as its child."""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from exosphere import RetryPolicyModel, RunStatus, Runtime, StateManager
from server.config import ServerConfig
from tests.engine_nodes import Flaky
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.servers import serving
from tests.nodes import Echo

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """Spans of this process (scheduler and runtime alike), in memory. The global provider can be set only once
    per process, so the exporter is shared and each test picks its own run's spans."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    return _EXPORTER


def _of_run(exporter: InMemorySpanExporter, run_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if (s.attributes or {}).get("exosphere.run_id") == run_id]


async def test_trigger_dispatch_and_execution_spans_form_one_trace(
    tmp_path: Path, exporter: InMemorySpanExporter, namespace: str
) -> None:
    config = ServerConfig(port=0, db=str(tmp_path / "t.db"), otel=True, http_port=-1)
    async with serving(config) as app, RuntimeGroup() as group:
        address = f"127.0.0.1:{app.port}"
        await group.start(Runtime(nodes=[Echo, Flaky], namespace=namespace, name="traced", address=address))
        async with StateManager(namespace, address=address) as sm:
            await sm.upsert_graph(
                "traced",
                [
                    gnode(namespace, "Echo", "first", {"text": "hi"}, next_nodes=["second"]),
                    gnode(namespace, "Flaky", "second", {"key": f"trace-{namespace}", "fails": "1"}),
                ],
                retry_policy=RetryPolicyModel(max_retries=0),
            )
            run = await sm.trigger_and_wait("traced", timeout=10)
    assert run.status is RunStatus.FAILED
    spans = _of_run(exporter, run.run_id)
    [trigger] = [s for s in spans if s.name == "exosphere.trigger"]
    dispatches = {s.attributes["exosphere.identifier"]: s for s in spans if s.name == "exosphere.state"}  # type: ignore[index]
    executions = {s.name: s for s in spans if s.name.startswith("exosphere.execute")}
    assert set(dispatches) == {"first", "second"}
    assert set(executions) == {"exosphere.execute Echo", "exosphere.execute Flaky"}
    assert trigger.context is not None and trigger.parent is None
    trace_id = trigger.context.trace_id
    assert {s.context.trace_id for s in spans if s.context} == {trace_id}
    for identifier, node in (("first", "Echo"), ("second", "Flaky")):
        dispatch, execution = dispatches[identifier], executions[f"exosphere.execute {node}"]
        assert dispatch.parent is not None and dispatch.parent.span_id == trigger.context.span_id
        assert execution.parent is not None and dispatch.context is not None
        assert execution.parent.span_id == dispatch.context.span_id  # the runtime's span is the dispatch's child
        assert dispatch.attributes is not None and dispatch.attributes["exosphere.runtime"] == "traced"
    assert dispatches["first"].status.status_code is StatusCode.UNSET
    assert dispatches["second"].status.status_code is StatusCode.ERROR
    assert executions["exosphere.execute Flaky"].status.status_code is StatusCode.ERROR
    assert "ValueError: boom 1" in (dispatches["second"].status.description or "")


async def test_no_spans_when_the_scheduler_does_not_trace(
    exporter: InMemorySpanExporter, state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph("quiet", [gnode(namespace, "Echo", "e", {"text": "x"})])
    run = await state_manager.trigger_and_wait("quiet", timeout=10)
    assert run.status is RunStatus.SUCCESS
    assert _of_run(exporter, run.run_id) == []
