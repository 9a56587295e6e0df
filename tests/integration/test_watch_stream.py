"""Issue 13: the client's watches go as messages on one SchedulerService.Watches stream, and trigger() then wait()
is one request: trigger() starts the run with a watch that names it at once (WatchRunRequest.announce) and keeps it
for the wait() that follows.

Nothing may be lost on the way: a kept watch evicted, never waited for or grown too big, a trigger the scheduler
refuses, a client closed with watches open, a scheduler restarted under an open stream, and a scheduler without
Watches all behave as separate calls did.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest

from exosphere import GraphNotFoundError, RunStatus, Runtime, StateManager, StateStatus, _watches
from exosphere._watches import OpenWatches
from exosphere.errors import WATCHES_HEADER
from exosphere.v1 import common_pb2, scheduler_pb2_grpc
from exosphere.v1 import scheduler_pb2 as pb
from server import watch_streams
from server.app import App
from server.config import ServerConfig
from tests.engine_nodes import Split, Tag, Waiter
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.servers import Start
from tests.helpers.waiting import assert_eventually

SERVICE = "/exosphere.v1.SchedulerService/"


def _calls(app: App, method: str) -> int:
    return sum(count for (name, _), count in app.rpcs.calls.items() if name == SERVICE + method)


@pytest.fixture
async def tag_graph(state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str) -> str:
    await start_runtime([Tag, Waiter, Split])
    await state_manager.upsert_graph("tag", [gnode(namespace, "Tag", "tag", {"text": "x", "suffix": "!"})])
    await state_manager.upsert_graph("hold", [gnode(namespace, "Waiter", "hold", {"key": "k", "item": "i"})])
    await state_manager.upsert_graph(
        "fan",
        [
            gnode(namespace, "Split", "split", {"csv": "x"}, next_nodes=["tag"]),
            gnode(namespace, "Tag", "tag", {"text": "${{ split.outputs.item }}", "suffix": "!"}),
        ],
    )
    return "tag"


async def test_triggers_and_waits_go_over_one_stream_and_trigger_then_wait_is_one_request(
    app: App, server_address: str, namespace: str, tag_graph: str
) -> None:
    async with StateManager(namespace, address=server_address) as sm:
        done = []
        for text in ("a", "b", "c"):
            run = await sm.trigger(tag_graph, inputs={"text": text})
            done.append(await sm.wait(run.run_id, timeout=20))
        both = await sm.trigger_and_wait(tag_graph, inputs={"text": "d"}, timeout=20)
        outcome = await sm.trigger_and_wait(tag_graph, inputs={"text": "e"}, timeout=20, states=False)
        # Each wait read the watch its trigger kept: no watch was asked for again.
        assert len(sm._runs.kept) == 0

    assert [d.status for d in done] == [RunStatus.SUCCESS] * 3
    assert [states_of(d, "tag")[0].outputs[0]["text"] for d in done] == ["a!", "b!", "c!"]
    assert all(d.states[0].status is StateStatus.SUCCESS for d in done)
    assert both.status is RunStatus.SUCCESS and states_of(both, "tag")[0].outputs[0]["text"] == "d!"
    assert outcome.status is RunStatus.SUCCESS and outcome.states == []
    # One stream, which ended when the client closed; no call of its own for any trigger, watch or read.
    await assert_eventually(lambda: _calls(app, "Watches") == 1, message="the one Watches stream ended")
    assert [_calls(app, m) for m in ("TriggerGraph", "WatchRun", "GetRun")] == [0, 0, 0]


async def test_evicted_and_unclaimed_watches_lose_nothing(
    app: App, state_manager: StateManager, tag_graph: str
) -> None:
    state_manager._runs.kept = OpenWatches(limit=2)
    runs = [await state_manager.trigger(tag_graph, inputs={"text": t}) for t in ("p", "q", "r")]
    assert len(state_manager._runs.kept) == 2  # p's watch was cancelled to make room

    # Waited for out of order, the evicted one included: each through a watch of its own if it has to.
    for run, text in reversed(list(zip(runs, ("p", "q", "r"), strict=True))):
        done = await state_manager.wait(run.run_id, timeout=20)
        assert done.status is RunStatus.SUCCESS
        assert states_of(done, "tag")[0].outputs[0]["text"] == f"{text}!"
    assert len(state_manager._runs.kept) == 0
    # A second wait on a run whose kept watch was used asks again and gets the same answer.
    again = await state_manager.wait(runs[1].run_id, timeout=20)
    assert states_of(again, "tag")[0].outputs[0]["text"] == "q!"


async def test_a_kept_watch_that_would_buffer_too_much_is_dropped_and_its_wait_asks_again(
    state_manager: StateManager, tag_graph: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_watches, "KEEP_BYTES", 2_000)
    key = uuid.uuid4().hex
    other = await state_manager.trigger("hold", inputs={"key": key})  # a second watch kept open on the stream
    stream = state_manager._runs.stream
    call, reader = stream._call, stream._reader
    csv = ",".join(f"{i:04d}" * 100 for i in range(40))  # 40 branches of 400 characters: ~40 KB of final snapshot
    run = await state_manager.trigger("fan", inputs={"csv": csv})
    kept = state_manager._runs.kept._calls[run.run_id]
    # Its last event is over the bound: the watch is dropped, and the stream and its other watches go on.
    await assert_eventually(lambda: kept._ended, message="the kept watch was dropped once it passed KEEP_BYTES")
    assert (stream._call, stream._reader) == (call, reader) and reader is not None and not reader.done()

    done = await state_manager.wait(run.run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS
    assert sorted(s.outputs[0]["text"] for s in states_of(done, "tag")) == [f"{i:04d}" * 100 + "!" for i in range(40)]
    Waiter.release(key)
    assert (await state_manager.wait(other.run_id, timeout=20)).status is RunStatus.SUCCESS
    assert stream._call is call  # the same stream throughout


async def test_a_refused_trigger_raises_its_error_and_the_stream_goes_on(
    app: App, state_manager: StateManager, tag_graph: str
) -> None:
    with pytest.raises(GraphNotFoundError, match="no-such-graph"):
        await state_manager.trigger("no-such-graph")
    with pytest.raises(GraphNotFoundError, match="no-such-graph"):
        await state_manager.trigger_and_wait("no-such-graph")
    assert len(state_manager._runs.kept) == 0
    run = await state_manager.trigger(tag_graph, inputs={"text": "ok"})
    assert states_of(await state_manager.wait(run.run_id, timeout=20), "tag")[0].outputs[0]["text"] == "ok!"
    assert _calls(app, "Watches") == 0  # the same stream throughout: still open


async def test_a_kept_watch_is_told_of_the_end_alone_not_of_each_commit_before_it(
    app: App, state_manager: StateManager, namespace: str, tag_graph: str
) -> None:
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "split-hold",
        [
            gnode(namespace, "Split", "split", {"csv": "x"}, next_nodes=["hold"]),
            gnode(namespace, "Waiter", "hold", {"key": "${{ split.outputs.item }}", "item": "done"}),
        ],
    )
    keys = [f"{key}-{i}" for i in range(3)]
    held = await state_manager.trigger("split-hold", inputs={"csv": ",".join(keys)})
    await assert_eventually(lambda: all(k in Waiter.started for k in keys), message="every branch started")
    run = app.engine._table.runs[held.run_id]
    (queue,) = run.end_watchers
    puts = _count_puts(queue)
    for succeeded, k in enumerate(keys[:2], start=2):  # two commits of the run, each a branch's success
        Waiter.release(k)
        await assert_eventually(
            lambda n=succeeded: sum(s.status == "SUCCESS" for s in run.states) >= n,
            message="the branch's result was committed",
        )
    assert not run.watchers and puts == []  # woken by none of them
    Waiter.release(keys[2])
    done = await state_manager.wait(held.run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS
    assert [s.outputs[0]["text"] for s in states_of(done, "hold")] == ["done"] * 3


async def test_more_requests_than_a_stream_holds_wait_for_a_place_in_the_client(
    state_manager: StateManager, tag_graph: str
) -> None:
    slots = state_manager._runs.stream._slots = _Counting(2)  # LIMIT_MAX_WATCHES_PER_STREAM, made small
    texts = [f"t{i}" for i in range(8)]
    done = await asyncio.gather(
        *(state_manager.trigger_and_wait(tag_graph, inputs={"text": t}, timeout=20) for t in texts)
    )
    assert [states_of(d, "tag")[0].outputs[0]["text"] for d in done] == [f"{t}!" for t in texts]
    assert (slots.most, slots.held) == (2, 0)  # never more open at once, and every place given back


class _Counting(asyncio.Semaphore):
    """A semaphore that remembers how many were held at most."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.held = self.most = 0

    async def acquire(self) -> Literal[True]:
        await super().acquire()
        self.held += 1
        self.most = max(self.most, self.held)
        return True

    def release(self) -> None:
        self.held -= 1
        super().release()


async def _response(call: grpc.aio.StreamStreamCall[pb.WatchesRequest, pb.WatchesResponse]) -> pb.WatchesResponse:
    response = await call.read()
    assert isinstance(response, pb.WatchesResponse), response
    return response


async def test_the_scheduler_ends_a_request_over_the_streams_limit_and_serves_the_rest(
    server_address: str, state_manager: StateManager, namespace: str, tag_graph: str
) -> None:
    key = uuid.uuid4().hex
    held = await state_manager.trigger("hold", inputs={"key": key})
    limit = common_pb2.LIMIT_MAX_WATCHES_PER_STREAM
    async with grpc.aio.insecure_channel(server_address) as channel:
        call = scheduler_pb2_grpc.SchedulerServiceStub(channel).Watches()
        assert (WATCHES_HEADER, "1") in tuple(await call.initial_metadata())
        for request_id in range(1, limit + 2):
            await call.write(pb.WatchesRequest(id=request_id, watch=pb.WatchRunRequest(run_id=held.run_id)))
        refused = None
        while refused is None:
            response = await _response(call)
            if response.WhichOneof("kind") == "end":
                refused = response
        assert refused.id == limit + 1 and refused.end.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        Waiter.release(key)  # every other request gets the run's end
        ended: set[int] = set()
        while len(ended) < limit:
            response = await _response(call)
            if response.WhichOneof("kind") == "event" and response.event.last:
                ended.add(response.id)
        assert ended == set(range(1, limit + 1))
        call.cancel()


def _count_puts(queue: asyncio.Queue[Any]) -> list[object]:
    """What is put into ``queue`` from now on (a spy: the queue works as before)."""
    puts: list[object] = []
    put = queue.put_nowait

    def counted(item: Any) -> None:
        puts.append(item)
        put(item)

    queue.put_nowait = counted  # type: ignore[method-assign]
    return puts


async def test_a_watch_cancelled_before_it_is_written_gives_its_place_back(
    state_manager: StateManager, tag_graph: str
) -> None:
    await state_manager.trigger_and_wait(tag_graph, timeout=20)  # the stream is open
    stream = state_manager._runs.stream
    slots = stream._slots = _Counting(5)
    async with stream._lock:  # holds the stream's writes: the request waits to be written
        waiting = asyncio.create_task(state_manager.trigger_and_wait(tag_graph, timeout=20))
        await assert_eventually(lambda: slots.held == 1, message="the request took its place")
        waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await assert_eventually(lambda: slots.held == 0, message="the cancelled request gave its place back")
    assert stream._watches == {}
    done = await state_manager.trigger_and_wait(tag_graph, inputs={"text": "after"}, timeout=20)
    assert states_of(done, "tag")[0].outputs[0]["text"] == "after!"


async def test_a_request_cancelled_while_it_is_written_leaves_the_stream_up(
    app: App, state_manager: StateManager, tag_graph: str
) -> None:
    """grpc.aio cancels a whole call when one of its writes is cancelled: a caller's cancel must not reach it."""
    await state_manager.trigger_and_wait(tag_graph, timeout=20)
    stream = state_manager._runs.stream
    gate, writing = asyncio.Event(), asyncio.Event()
    stream._call = call = _SlowWrites(stream._call, gate, writing)
    cancelled = asyncio.create_task(state_manager.trigger_and_wait(tag_graph, inputs={"text": "gone"}, timeout=20))
    await asyncio.wait_for(writing.wait(), 10)  # its request is being written
    cancelled.cancel()
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    done = await state_manager.trigger_and_wait(tag_graph, inputs={"text": "after"}, timeout=20)
    assert states_of(done, "tag")[0].outputs[0]["text"] == "after!"
    assert stream._call is call and not call.cancelled()  # the same stream, still up


class _SlowWrites:
    """A stream call whose writes wait for ``gate`` (and say so through ``writing``); the rest is the call's own."""

    def __init__(self, call: Any, gate: asyncio.Event, writing: asyncio.Event) -> None:
        self._call, self._gate, self._writing = call, gate, writing

    async def write(self, message: Any) -> None:
        self._writing.set()
        await self._gate.wait()
        await self._call.write(message)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


async def test_cancelled_watches_never_put_the_scheduler_over_its_limit(
    state_manager: StateManager, tag_graph: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel gives its place back once written, so a request after it never reaches the scheduler first."""
    monkeypatch.setattr(watch_streams, "MAX_OPEN", 2)
    state_manager._runs.stream._slots = _Counting(2)
    state_manager._runs.kept = OpenWatches(limit=1)  # each trigger cancels the watch the one before it kept
    key = uuid.uuid4().hex
    runs = [await state_manager.trigger("hold", inputs={"key": f"{key}-{i}"}) for i in range(6)]
    assert len({r.run_id for r in runs}) == 6
    for i, run in enumerate(runs):
        Waiter.release(f"{key}-{i}")
        assert (await state_manager.wait(run.run_id, timeout=20)).status is RunStatus.SUCCESS


async def test_closing_the_client_ends_the_watches_it_kept(
    app: App, server_address: str, namespace: str, tag_graph: str
) -> None:
    key = uuid.uuid4().hex
    async with StateManager(namespace, address=server_address) as sm:
        held = await sm.trigger("hold", inputs={"key": key})
        await assert_eventually(lambda: key in Waiter.started, message="the held run's state started")
        run = app.engine._table.runs[held.run_id]
        # The watch trigger() started it with, kept for a wait().
        await assert_eventually(lambda: len(run.end_watchers) == 1, message="the kept watch is on the scheduler")

    await assert_eventually(lambda: not run.end_watchers, message="the kept watch ended on the scheduler")
    Waiter.release(key)
    async with StateManager(namespace, address=server_address) as sm:
        done = await sm.wait(held.run_id, timeout=20)
    assert done.status is RunStatus.SUCCESS and done.states[0].outputs[0]["text"] == "i"


async def test_a_wait_survives_a_scheduler_restart_under_its_stream(
    db_path: Path, namespace: str, start: Start, runtimes: RuntimeGroup
) -> None:
    key = uuid.uuid4().hex

    def config(port: int = 0) -> ServerConfig:
        return ServerConfig(host="127.0.0.1", port=port, db=str(db_path), drain_grace="PT0.1S", http_port=-1)

    app = await start(config())
    await runtimes.start(Runtime(namespace, "rt", [Waiter, Tag], address=app.address))
    async with StateManager(namespace, address=app.address) as sm:
        await sm.upsert_graph("hold", [gnode(namespace, "Waiter", "hold", {"key": key, "item": "i"})])
        held = await sm.trigger("hold")
        waiting = asyncio.create_task(sm.wait(held.run_id, timeout=30))
        await assert_eventually(lambda: key in Waiter.started, message="the held state started")

        # The stream under the kept watch ends at once (a stream outlives runs: the scheduler does not wait the
        # 10 s shutdown grace for it), and the wait watches again until it can.
        started = time.monotonic()
        await app.stop()
        assert time.monotonic() - started < 5
        assert not waiting.done()
        restarted = await start(config(app.port))
        await _reconnected(restarted, namespace)
        Waiter.release(key)
        done = await waiting
        assert done.status is RunStatus.SUCCESS and done.states[-1].outputs[0]["text"] == "i"
        # The client goes on over a new stream.
        await sm.upsert_graph("tag", [gnode(namespace, "Tag", "tag", {"text": "x", "suffix": "!"})])
        again = await sm.wait((await sm.trigger("tag")).run_id, timeout=20)
        assert again.status is RunStatus.SUCCESS
        assert _calls(restarted, "TriggerGraph") == 0


async def test_during_a_drain_triggers_start_runs_and_a_trigger_and_wait_goes_on_after_the_restart(
    db_path: Path, namespace: str, start: Start, runtimes: RuntimeGroup
) -> None:
    keys = [uuid.uuid4().hex, uuid.uuid4().hex]

    def config(port: int = 0) -> ServerConfig:
        return ServerConfig(host="127.0.0.1", port=port, db=str(db_path), drain_grace="PT2S", http_port=-1)

    app = await start(config())
    await runtimes.start(Runtime(namespace, "rt", [Waiter, Tag], address=app.address))
    async with StateManager(namespace, address=app.address) as sm:
        await sm.upsert_graph("hold", [gnode(namespace, "Waiter", "hold", {"key": "k", "item": "i"})])
        await sm.upsert_graph("tag", [gnode(namespace, "Tag", "tag", {"text": "x", "suffix": "!"})])
        # A trigger-and-wait in flight when the scheduler is told to stop, and a run the drain holds.
        in_flight = asyncio.create_task(sm.trigger_and_wait("hold", inputs={"key": keys[0]}, timeout=30))
        held = await sm.trigger("hold", inputs={"key": keys[1]})
        await assert_eventually(lambda: all(k in Waiter.started for k in keys), message="both states started")

        started = time.monotonic()
        stopping = asyncio.create_task(app.stop())
        await assert_eventually(lambda: app.engine.runtimes.stopping, message="the scheduler is draining")
        during = await sm.trigger("tag")  # started, not refused: the scheduler takes triggers in its drain
        # A trigger-and-wait made during the drain: its run starts now and is waited for across the restart.
        during_wait = asyncio.create_task(sm.trigger_and_wait("tag", inputs={"text": "y"}, timeout=30))
        await assert_eventually(
            lambda: sum(r.graph_name == "tag" for r in app.engine._table.runs.values()) == 2,
            message="the trigger-and-wait's run started",
        )
        await asyncio.wait_for(stopping, 10)
        # Nothing made it wait its 10 s shutdown grace: not the open stream, not the trigger-and-wait on it.
        assert time.monotonic() - started < 5
        assert not in_flight.done()

        await _reconnected(await start(config(app.port)), namespace)
        for key in keys:
            Waiter.release(key)
        done = await in_flight  # the same call: once announced, its run is waited for, not lost
        assert done.status is RunStatus.SUCCESS and done.states[-1].outputs[0]["text"] == "i"
        assert (await sm.wait(held.run_id, timeout=20)).status is RunStatus.SUCCESS
        tagged = await sm.wait(during.run_id, timeout=20)
        assert tagged.status is RunStatus.SUCCESS and states_of(tagged, "tag")[0].outputs[0]["text"] == "x!"
        waited = await during_wait
        assert waited.status is RunStatus.SUCCESS and states_of(waited, "tag")[0].outputs[0]["text"] == "y!"
        # Each trigger started one run, none twice.
        runs, _ = await sm.list_runs("tag")
        assert sorted(r.run_id for r in runs) == sorted({during.run_id, waited.run_id})


async def _reconnected(app: App, namespace: str) -> None:
    """The runtime is back on the restarted scheduler (its own registered event may still be the old stream's)."""
    await assert_eventually(lambda: bool(app.engine.runtimes.connected(namespace)), message="the runtime reconnected")


class _SilentScheduler:
    """A scheduler from before Watches: it answers TriggerGraph and WatchRun calls, and UNIMPLEMENTED to Watches."""

    def __init__(self) -> None:
        self.triggers = 0
        self.watches = 0

    async def trigger(self, request: pb.TriggerGraphRequest, context: object) -> pb.TriggerGraphResponse:
        self.triggers += 1
        return pb.TriggerGraphResponse(run_id=f"run-{self.triggers}")

    async def watch(self, request: pb.WatchRunRequest, context: object) -> AsyncIterator[pb.WatchRunResponse]:
        self.watches += 1
        yield pb.WatchRunResponse(run=pb.Run(run_id=request.run_id, status=common_pb2.RUN_STATUS_SUCCESS), last=True)

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


async def test_a_scheduler_without_watches_gets_plain_calls() -> None:
    server = grpc.aio.server()
    servicer = _SilentScheduler()
    server.add_generic_rpc_handlers((servicer.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with StateManager("ns", address=f"127.0.0.1:{port}") as sm:
            ids = [(await sm.trigger("g")).run_id for _ in range(3)]
            outcome = await sm.wait("run-1", timeout=5)
            assert sm._runs.stream.supported is False
    finally:
        await server.stop(None)
    assert ids == ["run-1", "run-2", "run-3"]
    assert outcome.run_id == "run-1" and outcome.status is RunStatus.SUCCESS
    assert (servicer.triggers, servicer.watches) == (3, 1)
