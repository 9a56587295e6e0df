"""Issue 13: trigger() then wait() is one call. Once the scheduler says it announces runs, trigger() starts the run on
a watch stream that names it at once (WatchRunRequest.announce) and keeps it for the wait() that follows.

Nothing may be lost on the way: a kept watch that is evicted or never waited for, a trigger the scheduler refuses,
a client closed with watches open, and a scheduler that does not announce all behave as before.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from exosphere import GraphNotFoundError, RunStatus, StateManager, StateStatus
from exosphere._watches import OpenWatches
from exosphere.v1 import scheduler_pb2 as pb
from server.app import App
from tests.engine_nodes import Tag, Waiter
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually

TRIGGER = "/exosphere.v1.SchedulerService/TriggerGraph"
WATCH = "/exosphere.v1.SchedulerService/WatchRun"


def _calls(app: App, method: str) -> int:
    return sum(count for (name, _), count in app.rpcs.calls.items() if name == method)


@pytest.fixture
async def tag_graph(state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str) -> str:
    await start_runtime([Tag, Waiter])
    await state_manager.upsert_graph("tag", [gnode(namespace, "Tag", "tag", {"text": "x", "suffix": "!"})])
    await state_manager.upsert_graph("hold", [gnode(namespace, "Waiter", "hold", {"key": "k", "item": "i"})])
    return "tag"


async def test_trigger_then_wait_uses_one_watch_once_the_scheduler_announces(
    app: App, state_manager: StateManager, tag_graph: str
) -> None:
    first = await state_manager.trigger(tag_graph, inputs={"text": "a"})  # learns that the scheduler announces
    assert (await state_manager.wait(first.run_id, timeout=20)).status is RunStatus.SUCCESS
    await assert_eventually(lambda: _calls(app, WATCH) == 1, message="the first wait's watch ended")
    assert _calls(app, TRIGGER) == 1

    done = []
    for text in ("b", "c", "d"):
        run = await state_manager.trigger(tag_graph, inputs={"text": text})
        done.append(await state_manager.wait(run.run_id, timeout=20))

    assert [d.status for d in done] == [RunStatus.SUCCESS] * 3
    assert [states_of(d, "tag")[0].outputs[0]["text"] for d in done] == ["b!", "c!", "d!"]
    assert all(d.states[0].status is StateStatus.SUCCESS for d in done)
    # One watch each (the trigger's own), no TriggerGraph, and no GetRun: the final snapshot came on the stream.
    await assert_eventually(lambda: _calls(app, WATCH) == 4, message="each trigger's watch ended with its run")
    assert _calls(app, TRIGGER) == 1
    assert not [key for key in app.rpcs.calls if key[0].endswith("/GetRun")]


async def test_evicted_and_unclaimed_watches_lose_nothing(
    app: App, state_manager: StateManager, tag_graph: str
) -> None:
    state_manager._watches = OpenWatches(limit=2)
    await state_manager.wait((await state_manager.trigger(tag_graph)).run_id, timeout=20)

    runs = [await state_manager.trigger(tag_graph, inputs={"text": t}) for t in ("p", "q", "r")]
    assert len(state_manager._watches) == 2  # p's watch was cancelled to make room

    # Waited for out of order, the evicted one included: each through a watch of its own if it has to.
    for run, text in reversed(list(zip(runs, ("p", "q", "r"), strict=True))):
        done = await state_manager.wait(run.run_id, timeout=20)
        assert done.status is RunStatus.SUCCESS
        assert states_of(done, "tag")[0].outputs[0]["text"] == f"{text}!"
    assert len(state_manager._watches) == 0
    # A second wait on a run whose kept watch was used opens a new one and gets the same answer.
    again = await state_manager.wait(runs[1].run_id, timeout=20)
    assert states_of(again, "tag")[0].outputs[0]["text"] == "q!"


async def test_a_refused_trigger_on_the_watch_path_raises_its_error(
    state_manager: StateManager, tag_graph: str
) -> None:
    await state_manager.wait((await state_manager.trigger(tag_graph)).run_id, timeout=20)

    with pytest.raises(GraphNotFoundError, match="no-such-graph"):
        await state_manager.trigger("no-such-graph")
    assert len(state_manager._watches) == 0
    run = await state_manager.trigger(tag_graph, inputs={"text": "ok"})
    assert states_of(await state_manager.wait(run.run_id, timeout=20), "tag")[0].outputs[0]["text"] == "ok!"


async def test_closing_the_client_ends_the_watches_it_kept(
    app: App, server_address: str, namespace: str, tag_graph: str
) -> None:
    key = uuid.uuid4().hex
    async with StateManager(namespace, address=server_address) as sm:
        await sm.wait((await sm.trigger(tag_graph)).run_id, timeout=20)
        held = await sm.trigger("hold", inputs={"key": key})
        await assert_eventually(lambda: key in Waiter.started, message="the held run's state started")
        run = app.engine._table.runs[held.run_id]
        assert len(run.watchers) == 1  # the watch trigger() opened and kept

    await assert_eventually(
        lambda: not run.watchers, message="closing the client ended the kept watch on the scheduler"
    )
    Waiter.release(key)
    async with StateManager(namespace, address=server_address) as sm:
        done = await sm.wait(held.run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS and done.states[0].outputs[0]["text"] == "i"


class _SilentScheduler:
    """A scheduler from before announce: it answers TriggerGraph and never says it announces."""

    def __init__(self) -> None:
        self.triggers = 0
        self.watches = 0

    async def trigger(self, request: pb.TriggerGraphRequest, context: object) -> pb.TriggerGraphResponse:
        self.triggers += 1
        return pb.TriggerGraphResponse(run_id=f"run-{self.triggers}")

    async def watch(self, request: pb.WatchRunRequest, context: object) -> AsyncIterator[pb.WatchRunResponse]:
        self.watches += 1
        yield pb.WatchRunResponse()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "exosphere.v1.SchedulerService",
            {
                "TriggerGraph": grpc.unary_unary_rpc_method_handler(
                    self.trigger, pb.TriggerGraphRequest.FromString, pb.TriggerGraphResponse.SerializeToString
                ),
                "WatchRun": grpc.unary_stream_rpc_method_handler(
                    self.watch, pb.WatchRunRequest.FromString, pb.WatchRunResponse.SerializeToString
                ),
            },
        )


async def test_a_scheduler_that_does_not_announce_gets_plain_triggers() -> None:
    server = grpc.aio.server()
    servicer = _SilentScheduler()
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with StateManager("ns", address=f"127.0.0.1:{port}") as sm:
            ids = [(await sm.trigger("g")).run_id for _ in range(3)]
    finally:
        await server.stop(None)
    assert ids == ["run-1", "run-2", "run-3"]
    assert (servicer.triggers, servicer.watches) == (3, 0)
