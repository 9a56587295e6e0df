"""exospherehost's StateManager against a real scheduler: its return shapes, its waiting, its error wording."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

import exosphere
from exospherehost import BaseNode, CronTrigger, GraphNodeModel, StateManager, StoreConfigModel
from tests.helpers.runtimes import RuntimeFactory


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    class Secrets(BaseModel):
        token: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


def _echo(namespace: str, **inputs: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="echo", inputs=inputs or {"text": "t"})]


async def test_upsert_get_and_trigger_return_exosphereshosts_dicts(
    namespace: str, state_manager_uri: str, start_runtime: RuntimeFactory
) -> None:
    await start_runtime([Echo])
    sm = StateManager(namespace, state_manager_uri)
    graph = await sm.upsert_graph(
        "g",
        _echo(namespace),
        {"token": "s3cret"},
        store_config=StoreConfigModel(default_values={"k": "v"}),
        triggers=[CronTrigger(expression="0 9 * * 1-5")],
    )
    assert graph["validation_status"] == "VALID" and graph["validation_errors"] == []
    assert graph["secrets"] == {"token": True}  # names only, never values
    assert graph["nodes"] == [
        {
            "node_name": "Echo",
            "namespace": namespace,
            "identifier": "echo",
            "inputs": {"text": "t"},
            "next_nodes": [],
            "unites": None,
        }
    ]
    assert graph["store_config"] == {"required_keys": [], "default_values": {"k": "v"}}
    assert graph["retry_policy"] == {
        "max_retries": 3,
        "strategy": "EXPONENTIAL",
        "backoff_factor": 2000,
        "exponent": 2,
        "max_delay": None,
    }
    assert graph["triggers"] == [{"type": "CRON", "value": {"expression": "0 9 * * 1-5", "timezone": "UTC"}}]
    assert isinstance(graph["created_at"], str) and isinstance(graph["updated_at"], str)
    assert await sm.get_graph("g") == graph
    triggered = await sm.trigger("g", inputs={"text": "hello"})
    assert triggered["status"] == "CREATED" and set(triggered) == {"status", "run_id"}
    async with exosphere.StateManager(namespace, address=state_manager_uri.removeprefix("http://")) as ours:
        done = await ours.wait(triggered["run_id"], timeout=20)
    assert done.states[0].outputs == [{"text": "hello"}]


async def test_upsert_waits_for_a_runtime_still_registering(
    namespace: str, state_manager_uri: str, start_runtime: RuntimeFactory
) -> None:
    sm = StateManager(namespace, state_manager_uri)
    upsert = asyncio.create_task(sm.upsert_graph("late", _echo(namespace), {"token": "t"}, validation_timeout=20))
    await asyncio.sleep(0.3)
    assert not upsert.done()
    await start_runtime([Echo])
    graph = await upsert
    assert graph["validation_status"] == "VALID"


async def test_upsert_gives_up_after_validation_timeout(namespace: str, state_manager_uri: str) -> None:
    sm = StateManager(namespace, state_manager_uri)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ValueError, match=r"^Graph validation failed: INVALID and errors: \[") as info:
        await sm.upsert_graph("never", _echo(namespace), {}, validation_timeout=1, polling_interval=0.2)
    assert 0.7 < loop.time() - started < 5  # it waited for the node, then gave up
    assert isinstance(info.value, exosphere.GraphValidationError)
    assert any("is not registered" in e for e in info.value.errors)


async def test_other_graph_problems_fail_at_once(
    namespace: str, state_manager_uri: str, start_runtime: RuntimeFactory
) -> None:
    await start_runtime([Echo])
    sm = StateManager(namespace, state_manager_uri)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(exosphere.GraphValidationError, match="Graph validation failed: INVALID") as info:
        await sm.upsert_graph("bad", _echo(namespace, wrong="x"), {"token": "t"}, validation_timeout=30)
    assert loop.time() - started < 5
    assert info.value.errors


async def test_errors_keep_our_classes_with_exosphereshosts_wording(namespace: str, state_manager_uri: str) -> None:
    sm = StateManager(namespace, state_manager_uri)
    with pytest.raises(exosphere.GraphNotFoundError, match=r"^Failed to get graph: 404 "):
        await sm.get_graph("missing")
    with pytest.raises(exosphere.GraphNotFoundError, match=r"^Failed to trigger state: 404 "):
        await sm.trigger("missing")


async def test_one_state_manager_serves_several_event_loops(namespace: str, state_manager_uri: str) -> None:
    """Scripts call asyncio.run() more than once with one module-level StateManager; each call has its own loop."""
    sm = StateManager(namespace, state_manager_uri)

    def two_loops() -> list[str]:
        messages = []
        for _ in range(2):
            try:
                asyncio.run(sm.get_graph("missing"))
            except exosphere.GraphNotFoundError as exc:
                messages.append(str(exc))
        return messages

    messages = await asyncio.to_thread(two_loops)
    assert len(messages) == 2 and all(m.startswith("Failed to get graph: 404") for m in messages)
