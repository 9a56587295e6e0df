"""Bad bytes and bad names: INVALID_ARGUMENT naming the field, never UNKNOWN, a traceback, or a forged log line."""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest
from pydantic import BaseModel

from exosphere import BaseNode, GraphNodeModel, Runtime, StateManager, StateStatus
from exosphere.errors import InvalidArgumentError
from exosphere.v1 import runtime_pb2
from exosphere.v1 import scheduler_pb2 as pb
from tests.helpers.runtimes import RuntimeFactory

BAD = b"a\xffb\xfe"  # four bytes that are not UTF-8, swapped for a four-character placeholder


def corrupt(message: Any, placeholder: str = "XXXX") -> bytes:
    raw: bytes = message.SerializeToString()
    assert raw.count(placeholder.encode()) == 1
    return raw.replace(placeholder.encode(), BAD)


async def raw_unary(address: str, method: str, request: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address) as channel:
        call: Any = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, timeout=10)
    return caught.value


def no_server_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


class WritesBadKey(BaseNode):
    class Inputs(BaseModel):
        text: str

    async def execute(self) -> None:
        self.store["fine\nINFO forged line"] = "x"


# ---------------------------------------------------------------------------------------------------- invalid UTF-8


@pytest.mark.parametrize(
    ("method", "request_bytes", "field"),
    [
        (
            "TriggerGraph",
            corrupt(pb.TriggerGraphRequest(namespace="ns", graph_name="XXXX")),
            "field graph_name is not valid UTF-8",
        ),
        ("ListGraphs", corrupt(pb.ListGraphsRequest(namespace="XXXX")), "field namespace is not valid UTF-8"),
        (
            "UpsertGraph",
            corrupt(
                pb.UpsertGraphRequest(
                    graph=pb.Graph(
                        namespace="ns",
                        name="g",
                        nodes=[pb.GraphNode(node_name="A", identifier="a"), pb.GraphNode(inputs={"text": "XXXX"})],
                    )
                )
            ),
            "field graph.nodes[1].inputs['text'] is not valid UTF-8",
        ),
        (
            "TriggerGraph",
            corrupt(pb.TriggerGraphRequest(namespace="ns", graph_name="g", store={"XXXX": "v"})),
            "field store (a key) is not valid UTF-8",
        ),
    ],
)
async def test_invalid_utf8_in_a_request_is_invalid_argument_naming_the_field(
    server_address: str, caplog: pytest.LogCaptureFixture, method: str, request_bytes: bytes, field: str
) -> None:
    error = await raw_unary(server_address, f"/exosphere.v1.SchedulerService/{method}", request_bytes)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (error.details() or "")
    no_server_errors(caplog)


async def test_invalid_utf8_on_a_server_stream_is_invalid_argument(
    server_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        call: Any = channel.unary_stream(
            "/exosphere.v1.SchedulerService/WatchRun", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call(corrupt(pb.WatchRunRequest(run_id="XXXX")), timeout=10):
                pass
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "field run_id is not valid UTF-8" in (caught.value.details() or "")
    no_server_errors(caplog)


async def test_invalid_utf8_on_the_runtime_stream_is_invalid_argument(
    server_address: str, caplog: pytest.LogCaptureFixture
) -> None:
    register = runtime_pb2.RuntimeMessage(
        register=runtime_pb2.Register(namespace="ns", runtime_name="XXXX", runtime_id="r", max_concurrency=1)
    )
    async with grpc.aio.insecure_channel(server_address) as channel:
        call: Any = channel.stream_stream(
            "/exosphere.v1.RuntimeService/Connect", request_serializer=None, response_deserializer=None
        )(timeout=10)
        await call.write(corrupt(register))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "field register.runtime_name is not valid UTF-8" in (caught.value.details() or "")
    no_server_errors(caplog)


# ---------------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("bad", ["Echo\nINFO forged", "Echo\x00", "Echo\u202etxt.exe", "Ec\tho", "E" * 257])
async def test_a_bad_node_name_in_a_graph_is_refused_naming_the_field_and_showing_the_value(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, bad: str
) -> None:
    await start_runtime([Echo])
    with pytest.raises(InvalidArgumentError) as caught:
        await state_manager.upsert_graph(
            "g", [GraphNodeModel(node_name=bad, namespace=namespace, identifier="a", inputs={"text": "x"})]
        )
    assert f"node #0 node_name {bad[:80]!r}" in str(caught.value) or "at most 256" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("graph name", {"graph_name": "g\nx"}),
        ("identifier", {"identifier": "a\x1b[31m"}),
        ("next_nodes entry", {"next_nodes": ["b\u200f"]}),
    ],
)
async def test_bad_graph_names_and_identifiers_are_refused(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, field: str, kwargs: dict[str, Any]
) -> None:
    await start_runtime([Echo])
    graph_name = kwargs.pop("graph_name", "g")
    node = {"node_name": "Echo", "namespace": namespace, "identifier": "a", "inputs": {"text": "x"}, **kwargs}
    with pytest.raises(InvalidArgumentError) as caught:
        await state_manager.upsert_graph(graph_name, [GraphNodeModel(**node)])
    assert field in str(caught.value)
    assert "may hold only letters, digits and '_-.:'" in str(caught.value)


async def test_valid_names_still_work(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo], name="My_Runtime-1.0:a")
    await state_manager.upsert_graph(
        "Graph-1.v2:x",
        [
            GraphNodeModel(
                node_name="Echo", namespace=namespace, identifier="éch_1", inputs={"text": "${{ store.k-1 }}"}
            )
        ],
        store_config={"required_keys": ["k-1"]},
    )
    run = await state_manager.trigger("Graph-1.v2:x", store={"k-1": "héllo\nworld"})  # values are free text
    result = await state_manager.wait(run.run_id, timeout=10)
    assert result.states[0].outputs == [{"text": "héllo\nworld"}]


async def test_a_bad_store_key_in_a_trigger_is_refused(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph(
        "g", [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="a", inputs={"text": "x"})]
    )
    with pytest.raises(InvalidArgumentError, match=r"store key 'k\\n'"):
        await state_manager.trigger("g", store={"k\n": "v"})


async def test_a_bad_store_key_written_by_a_node_fails_its_state(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([WritesBadKey])
    await state_manager.upsert_graph(
        "g",
        [GraphNodeModel(node_name="WritesBadKey", namespace=namespace, identifier="a", inputs={"text": "x"})],
        retry_policy={"max_retries": 0},
    )
    run = await state_manager.trigger("g")
    result = await state_manager.wait(run.run_id, timeout=10)
    [state] = result.states
    assert state.status is StateStatus.ERRORED
    assert state.error is not None and state.error["type"] == "StoreKeyError"
    assert "'fine\\nINFO forged line'" in state.error["message"]
    assert result.store == {}


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [("runtime_name", {"name": "rt\nINFO forged", "namespace": "ns"}), ("namespace", {"namespace": "ns\u202e"})],
)
async def test_a_runtime_with_a_bad_name_is_refused_at_registration(
    server_address: str, field: str, kwargs: dict[str, Any]
) -> None:
    kwargs.setdefault("name", "rt")
    runtime = Runtime(nodes=[Echo], address=server_address, **kwargs)
    with pytest.raises(InvalidArgumentError, match=f"^{field} "):
        await runtime.run()


async def test_a_bad_secret_name_is_refused(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo])
    node = GraphNodeModel(node_name="Echo", namespace=namespace, identifier="a", inputs={"text": "x"})
    with pytest.raises(InvalidArgumentError, match=r"secret name 'api\\nkey'"):
        await state_manager.upsert_graph("g", [node], secrets={"api\nkey": "v"})
