"""The runtime protocol's obligations on the scheduler (docs/protocol.md), through a real scheduler and real streams:
declared defaults filled in, descriptors checked at Register, results that match no dispatch answered and counted."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto

import exosphere._executor
import exosphere.runtime
from exosphere import BaseNode, GraphNodeModel, RunStatus, Runtime, StateManager
from exosphere._convert import node_to_schema
from exosphere.errors import InvalidArgumentError
from exosphere.v1 import runtime_pb2
from server.app import App
from server.config import ServerConfig
from tests.helpers.raw import RawRuntime, descriptor, done, node_schema
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.servers import serving
from tests.helpers.waiting import assert_eventually
from tests.helpers.web import http_client, sample

REQUIRED = FieldDescriptorProto.LABEL_REQUIRED
OPTIONAL = FieldDescriptorProto.LABEL_OPTIONAL


# ---------------------------------------------------------------------------------------------- defaults


async def test_declared_defaults_are_filled_in_when_an_input_is_absent(
    server_address: str, namespace: str, state_manager: StateManager
) -> None:
    inputs = descriptor("Inputs", "x", optional=["mode=fast", "empty=", "note"])
    async with RawRuntime(server_address, namespace, [node_schema("Opt", inputs)]) as raw:
        await state_manager.upsert_graph(
            "g", [GraphNodeModel(node_name="Opt", namespace=namespace, identifier="o", inputs={"x": "1"})]
        )
        await state_manager.upsert_graph(
            "given",
            [GraphNodeModel(node_name="Opt", namespace=namespace, identifier="o", inputs={"x": "1", "mode": "slow"})],
        )
        await state_manager.trigger("g")
        (item,) = await raw.executes()
        # A default of "" is a default; a LABEL_OPTIONAL field without default_value stays absent.
        assert dict(item.inputs) == {"x": "1", "mode": "fast", "empty": ""}
        await raw.answer(done(item, "ok"))
        await state_manager.trigger("given")
        (item,) = await raw.executes()
        assert dict(item.inputs) == {"x": "1", "mode": "slow", "empty": ""}
        await raw.answer(done(item, "ok"))


class Defaults(BaseNode):
    class Inputs(BaseNode.Inputs):
        x: str
        mode: str = "fast"
        note: str = None  # type: ignore[assignment]  # optional, no default: absent stays absent

    class Outputs(BaseNode.Outputs):
        y: str

    async def execute(self) -> Any:
        return self.Outputs(y=f"{self.inputs.x}/{self.inputs.mode}/{self.inputs.note}")


def test_the_python_sdk_declares_a_default_and_none_as_no_default() -> None:
    fields = {f.name: f for f in node_to_schema(Defaults).inputs.field}
    assert fields["x"].label == REQUIRED and not fields["x"].HasField("default_value")
    assert fields["mode"].label == OPTIONAL and fields["mode"].default_value == "fast"
    assert fields["note"].label == OPTIONAL and not fields["note"].HasField("default_value")


async def test_a_python_node_gets_its_defaults_and_none(
    start_runtime: RuntimeFactory, namespace: str, state_manager: StateManager
) -> None:
    await start_runtime([Defaults])
    await state_manager.upsert_graph(
        "g", [GraphNodeModel(node_name="Defaults", namespace=namespace, identifier="d", inputs={"x": "1"})]
    )
    run = await state_manager.wait((await state_manager.trigger("g")).run_id, timeout=10)
    assert run.status is RunStatus.SUCCESS
    assert run.states[0].outputs == [{"y": "1/fast/None"}]


# ---------------------------------------------------------------------------------------------- descriptors


def _field(name: str = "x", number: int = 1, label: int | None = REQUIRED, **extra: Any) -> FieldDescriptorProto:
    fd = FieldDescriptorProto(name=name, number=number, **{"type": FieldDescriptorProto.TYPE_STRING, **extra})
    if label is not None:
        fd.label = label  # type: ignore[assignment]
    return fd


BAD_INPUTS = {
    "no label": ([_field(label=None)], "no label"),
    "repeated": ([_field(label=FieldDescriptorProto.LABEL_REPEATED)], "repeated fields are not supported"),
    "required with a default": ([_field(default_value="d")], "LABEL_REQUIRED with a default_value"),
    "number 0": ([_field(number=0)], "number 0 is outside 1..536870911"),
    "number too big": ([_field(number=2**29)], "number 536870912 is outside"),
    "reserved number": ([_field(number=19000)], "19000-19999"),
    "duplicate number": ([_field(), _field(name="z")], "number 1 is already field 'x'"),
    "duplicate name": ([_field(), _field(number=2)], "declared twice"),
    "not an identifier": ([_field(name="a-b")], "not a valid field name"),
    "name too long": ([_field(name="a" * 257)], "not a valid field name"),
    "not a string": ([_field(type=FieldDescriptorProto.TYPE_INT32)], "must be TYPE_STRING, got TYPE_INT32"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
async def test_register_refuses_a_bad_descriptor_naming_node_and_field(
    server_address: str, namespace: str, case: str
) -> None:
    fields, problem = BAD_INPUTS[case]
    inputs = DescriptorProto(name="Inputs", field=fields)
    raw = RawRuntime(server_address, namespace, [node_schema("Good"), node_schema("Bad", inputs)])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw.register()
    finally:
        await raw.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details() or ""
    assert "node 'Bad' Inputs field" in details and problem in details, details
    assert f"'{fields[-1].name[:80]}" in details, details


async def test_a_python_runtime_stops_on_a_final_registration_error(
    server_address: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unlabeled(node: type[BaseNode]) -> Any:
        schema = node_to_schema(node)
        schema.inputs.field[0].ClearField("label")
        return schema

    monkeypatch.setattr(exosphere.runtime, "node_to_schema", unlabeled)
    runtime = Runtime(namespace, "bad", [Defaults], address=server_address)
    with pytest.raises(InvalidArgumentError, match="node 'Defaults' Inputs field 'x': no label"):
        await asyncio.wait_for(runtime.run(), 10)  # INVALID_ARGUMENT is final: no reconnect


# ---------------------------------------------------------------------------------------------- rejected results


def _rejected(message: runtime_pb2.SchedulerMessage) -> list[tuple[str, str]]:
    return [
        (r.state_id, runtime_pb2.RejectReason.Name(r.reason).removeprefix("REJECT_REASON_"))
        for r in message.results_rejected.results
    ]


async def test_results_that_match_no_dispatch_are_answered_and_counted(
    app: App, server_address: str, namespace: str, state_manager: StateManager
) -> None:
    async with RawRuntime(server_address, namespace, [node_schema("Echo")]) as raw:
        await state_manager.upsert_graph(
            "g",
            [
                GraphNodeModel(
                    node_name="Echo", namespace=namespace, identifier="e", inputs={"x": "1"}, next_nodes=["f"]
                ),
                GraphNodeModel(
                    node_name="Echo", namespace=namespace, identifier="f", inputs={"x": "${{ e.outputs.y }}"}
                ),
            ],
        )
        run_id = (await state_manager.trigger("g")).run_id
        (item,) = await raw.executes()
        wrong_attempt = done(item, "a")
        wrong_attempt.attempt = item.attempt + 1
        await raw.answer(
            done(item, "a", state_id=item.state_id.upper()),  # a key in another case
            wrong_attempt,
            done(item, "a", state_id="no-such-state"),
        )
        first = await raw.next("results_rejected")
        assert _rejected(first) == [
            (item.state_id.upper(), "STATE_MISMATCH"),
            (item.state_id, "ATTEMPT_MISMATCH"),
            ("no-such-state", "STATE_MISMATCH"),
        ]
        assert "echo the Execute item's attempt" in first.results_rejected.results[1].message
        assert first.results_rejected.results[1].attempt == item.attempt + 1
        # None of them took the state or its credit: the right answer still does.
        await raw.answer(done(item, "right"))
        (child,) = await raw.executes()
        assert dict(child.inputs) == {"x": "right"}
        # Answered twice: the dispatch is no longer outstanding. A made-up dispatch of a made-up state: unknown.
        made_up = runtime_pb2.Result(state_id="nobody-0", attempt=1, dispatch_id=987654)
        await raw.answer(done(item, "again"), made_up)
        assert _rejected(await raw.next("results_rejected")) == [
            (item.state_id, "NOT_HELD"),
            ("nobody-0", "UNKNOWN_STATE"),
        ]
        await raw.answer(done(child, "end"))
        run = await state_manager.wait(run_id, timeout=10)
        assert [s.outputs for s in run.states] == [[{"y": "right"}], [{"y": "end"}]]
    async with http_client(app) as client:
        text = (await client.get("/metrics")).text
    for reason, count in {"STATE_MISMATCH": 2, "ATTEMPT_MISMATCH": 1, "NOT_HELD": 1, "UNKNOWN_STATE": 1}.items():
        assert sample(text, "exosphere_results_rejected_total", namespace=namespace, reason=reason) == count


async def test_the_python_runtime_warns_of_rejected_results(
    start_runtime: RuntimeFactory,
    namespace: str,
    state_manager: StateManager,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    execute_item = exosphere._executor.execute_item

    async def stale(*args: Any) -> runtime_pb2.Result:
        result = await execute_item(*args)
        result.attempt += 7  # the bug the scheduler must point out
        return result

    monkeypatch.setattr(exosphere.runtime, "execute_item", stale)
    await start_runtime([Defaults])
    await state_manager.upsert_graph(
        "g", [GraphNodeModel(node_name="Defaults", namespace=namespace, identifier="d", inputs={"x": "1"})]
    )
    with caplog.at_level(logging.WARNING, logger="exosphere.runtime"):
        run_id = (await state_manager.trigger("g")).run_id
        await assert_eventually(lambda: "result rejected by the scheduler" in caplog.text, timeout=10)
    assert f"state_id={run_id}-" in caplog.text and "reason=ATTEMPT_MISMATCH" in caplog.text


# ---------------------------------------------------------------------------------------------- cancel and credit


def _ack(item: runtime_pb2.Execute) -> runtime_pb2.Result:
    ack = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    ack.errored.message, ack.errored.type = "cancelled by the scheduler", "CancelledError"
    return ack


async def _cancel_first(raw: RawRuntime, sm: StateManager, namespace: str) -> tuple[runtime_pb2.Execute, str]:
    """On a runtime of credit 1: dispatch a run, cancel it, and trigger a second run (which must wait)."""
    await sm.upsert_graph(
        "g", [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="e", inputs={"x": "1"})]
    )
    first = await sm.trigger("g")
    (item,) = await raw.executes()
    await sm.cancel_run(first.run_id)
    assert list((await raw.next("cancel")).cancel.state_ids) == [item.state_id]
    return item, (await sm.trigger("g")).run_id


async def test_a_cancelled_dispatch_keeps_its_credit_until_the_runtime_answers(
    app: App, server_address: str, namespace: str, state_manager: StateManager
) -> None:
    async with RawRuntime(server_address, namespace, [node_schema("Echo")], credit=1) as raw:
        item, second = await _cancel_first(raw, state_manager, namespace)
        (session,) = app.engine.runtimes.connected(namespace)
        assert session.credit == 0 and app.engine.queue_depths()[namespace, "Echo"] == 1
        await raw.answer(_ack(item))  # the acknowledgement returns the credit; it is not a rejected result
        (next_item,) = await raw.executes()
        assert next_item.run_id == second
        assert not [m for m in raw.received if m.HasField("results_rejected")]
        await raw.answer(done(next_item, "ok"))
        assert (await state_manager.wait(second, timeout=10)).status is RunStatus.SUCCESS


async def test_a_cancel_never_answered_returns_its_credit_after_a_lease(db_path: Path, namespace: str) -> None:
    config = ServerConfig(
        port=0, db=str(db_path), lease=timedelta(seconds=1), heartbeat_interval=timedelta(seconds=0.2), http_port=-1
    )
    async with serving(config) as app, StateManager(namespace, address=app.address) as sm:
        async with RawRuntime(app.address, namespace, [node_schema("Echo")], credit=1) as raw:

            async def heartbeats() -> None:  # alive, but it never answers the cancel
                while True:
                    await raw.send(runtime_pb2.RuntimeMessage(heartbeat=runtime_pb2.Heartbeat(in_flight=1)))
                    await asyncio.sleep(0.2)

            beating = asyncio.create_task(heartbeats())
            try:
                _, second = await _cancel_first(raw, sm, namespace)
                cancelled_at = time.monotonic()
                (next_item,) = await raw.executes()
                assert next_item.run_id == second
                assert time.monotonic() - cancelled_at >= 0.8  # one lease, less the time the cancel took to arrive
            finally:
                beating.cancel()
                await asyncio.gather(beating, return_exceptions=True)
