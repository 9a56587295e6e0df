"""A misbehaving node fails only its own state, with a message that says what it did; a conflicting schema is
refused while runtimes with the old one are connected."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import BaseModel, field_validator

from exosphere import BaseNode, GraphNodeModel, RetryPolicyModel, RunStatus, Runtime, StateManager, StateStatus
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo
from tests.nodes import Echo as OldEcho


class ReturnsInt(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> int:
        return 42


class ReturnsPartialDict(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str
        other: str

    async def execute(self) -> dict[str, str]:
        return {"text": "only one"}


class Raises(BaseNode):
    class Inputs(BaseModel):
        text: str

    async def execute(self) -> None:
        raise KeyError("no such thing")


class Huge(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        print("x" * 2_000_000)  # megabytes on stdout are the node's business, not the scheduler's
        return self.Outputs(text="y" * (17 * 1024 * 1024))


class ValidatorRaises(BaseNode):
    class Inputs(BaseModel):
        text: str

        @field_validator("text")
        @classmethod
        def known(cls, value: str) -> str:
            return {"known": value}[value]  # a KeyError, which pydantic does not wrap

    async def execute(self) -> None:
        raise AssertionError("never reached")


class TimesOut(BaseNode):
    class Inputs(BaseModel):
        text: str

    async def execute(self) -> None:
        async with asyncio.timeout(0.05):  # the node's own deadline: it must cancel the node, nothing else
            await asyncio.Event().wait()


class GroupFails(BaseNode):
    class Inputs(BaseModel):
        text: str

    async def execute(self) -> None:
        async def fails() -> None:
            raise ValueError("a child failed")

        async with asyncio.TaskGroup() as group:  # cancels its parent task: the node's, never the runtime's
            group.create_task(asyncio.Event().wait())
            group.create_task(fails())


async def _run_one(sm: StateManager, namespace: str, node_name: str) -> tuple[RunStatus, dict[str, str]]:
    graph = f"g-{node_name}"
    await sm.upsert_graph(
        graph,
        [
            GraphNodeModel(
                node_name=node_name, namespace=namespace, identifier="bad", inputs={"text": "x"}, next_nodes=["ok"]
            ),
            GraphNodeModel(node_name="Echo", namespace=namespace, identifier="ok", inputs={"text": "after"}),
        ],
        retry_policy=RetryPolicyModel(max_retries=0),
    )
    run = await sm.trigger_and_wait(graph, timeout=30)
    bad = run.state("bad")
    assert bad.status is StateStatus.ERRORED
    assert not [s for s in run.states if s.identifier == "ok"]
    return run.status, bad.error or {}


async def test_misbehaving_nodes_fail_only_their_state(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exosphere.runtime")
    await start_runtime([ReturnsInt, ReturnsPartialDict, Raises, Huge, ValidatorRaises, TimesOut, GroupFails, Echo])
    _, error = await _run_one(state_manager, namespace, "ValidatorRaises")
    assert error["type"] == "KeyError" and "Traceback" in error["traceback"]
    _, error = await _run_one(state_manager, namespace, "TimesOut")
    assert error["type"] == "TimeoutError"
    _, error = await _run_one(state_manager, namespace, "GroupFails")
    assert error["type"] == "ExceptionGroup" and "a child failed" in error["traceback"]
    status, error = await _run_one(state_manager, namespace, "ReturnsInt")
    assert status is RunStatus.FAILED
    assert "ReturnsInt.execute returned int; expected ReturnsInt.Outputs" in error["message"]
    _, error = await _run_one(state_manager, namespace, "ReturnsPartialDict")
    assert "other" in error["message"] and "invalid outputs" in error["message"]
    _, error = await _run_one(state_manager, namespace, "Raises")
    assert error["type"] == "KeyError" and "no such thing" in error["message"]
    assert "Traceback" in error["traceback"]
    _, error = await _run_one(state_manager, namespace, "Huge")
    assert error["type"] == "ResultTooLargeError"
    # The runtime survived all of it and still runs other work.
    await state_manager.upsert_graph(
        "fine", [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="e", inputs={"text": "ok"})]
    )
    assert (await state_manager.trigger_and_wait("fine", timeout=10)).status is RunStatus.SUCCESS
    assert "runtime reconnecting" not in caplog.text  # one stream all along: no node took the runtime's down


async def test_conflicting_schema_is_refused_while_the_old_one_is_connected(
    server_address: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rolling deploy: the new schema is refused (naming the fields) until the old runtime leaves, then taken."""

    class Echo(BaseNode):  # the same node name as tests.nodes.Echo (OldEcho), with one more input
        class Inputs(BaseModel):
            text: str
            extra: str

        class Outputs(BaseModel):
            text: str

        async def execute(self) -> Outputs:
            return self.Outputs(text=self.inputs.text)

    async with RuntimeGroup(strict_stop=True) as runtimes:
        old = await runtimes.start(Runtime(namespace=namespace, name="old", nodes=[OldEcho], address=server_address))
        new = Runtime(namespace=namespace, name="new", nodes=[Echo], address=server_address)
        await runtimes.start(new, registered=False)
        await assert_eventually(lambda: "node 'Echo': inputs added ['extra']" in caplog.text, timeout=10)
        await runtimes.stop(old)
        await runtimes.wait_registered(new, timeout=20)
