"""The scheduler's error boundary, through a real server: errors arrive with the ids they are about, and a bug of
the scheduler comes back INTERNAL with an incident id, its text kept in the scheduler's log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc
import pytest

from exosphere import (
    ConflictError,
    GraphNodeModel,
    GraphNotFoundError,
    RunNotFoundError,
    StateManager,
    StateNotFoundError,
)
from exosphere.errors import InternalError
from exosphere.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from server.app import App
from tests.helpers.runtimes import RuntimeFactory
from tests.nodes import Echo

SECRET = "internal detail 7f3a"  # text of an injected bug; it must never reach a client


def _bug(*args: object, **kwargs: object) -> NoReturn:
    raise ValueError(SECRET)


async def _echo_graph(state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph(
        "g", [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="e", inputs={"text": "x"})]
    )


@pytest.fixture
async def channel(server_address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server_address) as channel:
        yield channel


# ---------------------------------------------------------------------------------- ids travel with the error


async def test_graph_not_found_carries_namespace_and_graph_name(state_manager: StateManager, namespace: str) -> None:
    name = "grâph 100% ✓ with spaces"  # non-ASCII, '%' and spaces survive the trailer encoding
    with pytest.raises(GraphNotFoundError) as info:
        await state_manager.get_graph(name)
    assert (info.value.namespace, info.value.graph_name) == (namespace, name)
    assert str(info.value) == f"graph {name!r} not found in namespace {namespace!r}"


async def test_run_not_found_carries_run_id(state_manager: StateManager) -> None:
    with pytest.raises(RunNotFoundError) as info:
        await state_manager.get_run("no-such-run")
    assert info.value.run_id == "no-such-run"
    with pytest.raises(RunNotFoundError) as info:
        await state_manager.cancel_run("other-run")
    assert info.value.run_id == "other-run"


async def test_state_not_found_carries_state_id(state_manager: StateManager) -> None:
    with pytest.raises(StateNotFoundError) as info:
        await state_manager.retry_state("nostate")
    assert info.value.state_id == "nostate"


async def test_conflicts_name_what_they_are_about(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await _echo_graph(state_manager, start_runtime, namespace)
    run = await state_manager.wait((await state_manager.trigger("g")).run_id, timeout=10)
    done = run.state("e")
    with pytest.raises(ConflictError, match="cannot be retried") as info:
        await state_manager.retry_state(done.state_id)
    assert (info.value.run_id, info.value.state_id) == (run.run_id, done.state_id)
    assert (info.value.namespace, info.value.graph_name) == (None, None)

    await state_manager.trigger("g", start_delay=60_000)  # stays pending
    with pytest.raises(ConflictError, match="pending run") as info:
        await state_manager.delete_graph("g")
    assert (info.value.namespace, info.value.graph_name) == (namespace, "g")
    assert (info.value.run_id, info.value.state_id) == (None, None)


async def test_a_batch_trigger_names_the_failing_item_and_keeps_the_ids(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await _echo_graph(state_manager, start_runtime, namespace)
    with pytest.raises(GraphNotFoundError, match=r"^trigger #0: graph 'missing' not found") as info:
        await state_manager.trigger_many("missing", [{}, {}])
    assert (info.value.namespace, info.value.graph_name) == (namespace, "missing")


# ---------------------------------------------------------------------------------- bugs of the scheduler


async def test_a_bug_is_internal_without_its_text_and_logged_with_its_traceback(
    app: App, state_manager: StateManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app.engine, "get_graph", _bug)  # a ValueError used to come back INVALID_ARGUMENT
    with caplog.at_level(logging.ERROR, logger="server.errors"), pytest.raises(InternalError) as info:
        await state_manager.get_graph("g")
    error = info.value
    assert SECRET not in str(error)
    assert isinstance(error.__cause__, grpc.aio.AioRpcError)
    assert error.__cause__.code() is grpc.StatusCode.INTERNAL
    assert error.incident_id and error.incident_id in str(error)
    [record] = [r for r in caplog.records if error.incident_id in r.getMessage()]
    assert record.exc_info is not None and record.exc_info[0] is ValueError
    assert SECRET in caplog.text  # the operator has the whole story


async def test_a_bug_on_a_streaming_rpc_is_internal(
    app: App, state_manager: StateManager, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(app.engine, "watch_run", _bug)
    with caplog.at_level(logging.ERROR, logger="server.errors"), pytest.raises(InternalError) as info:
        async for _ in state_manager.watch("some-run"):
            pass
    assert SECRET not in str(info.value)
    assert info.value.incident_id and info.value.incident_id in caplog.text


async def test_a_bug_on_the_runtime_stream_is_internal(
    app: App, channel: grpc.aio.Channel, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app.engine.runtimes, "register", _bug)
    call = runtime_pb2_grpc.RuntimeServiceStub(channel).Connect(timeout=10)
    await call.write(runtime_pb2.RuntimeMessage(register=runtime_pb2.Register(namespace=namespace, runtime_name="r")))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call.read()
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert SECRET not in (info.value.details() or "")
    assert ("exosphere-error", "InternalError") in tuple(info.value.trailing_metadata() or ())


# ---------------------------------------------------------------------------------- client input, decoded


async def test_unknown_enum_values_are_invalid_arguments(channel: grpc.aio.Channel, namespace: str) -> None:
    api = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.ListRuns(
            scheduler_pb2.ListRunsRequest(namespace=namespace, status=common_pb2.RunStatus.ValueType(99)), timeout=10
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown RUN_STATUS value 99" in (info.value.details() or "")

    graph = scheduler_pb2.Graph(namespace=namespace, name="g")
    graph.retry_policy.strategy = scheduler_pb2.RetryStrategy.ValueType(42)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.UpsertGraph(scheduler_pb2.UpsertGraphRequest(graph=graph), timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown RETRY_STRATEGY value 42" in (info.value.details() or "")


async def test_a_bad_page_token_is_an_invalid_argument(channel: grpc.aio.Channel, namespace: str) -> None:
    api = scheduler_pb2_grpc.SchedulerServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.ListRuns(scheduler_pb2.ListRunsRequest(namespace=namespace, page_token="x1"), timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert ("exosphere-error", "InvalidArgumentError") in tuple(info.value.trailing_metadata() or ())
