"""Issue 13: a finished run's final snapshot, its states included, comes back on the watch stream itself.

``wait()`` and ``trigger_and_wait()`` then need no GetRun; a big snapshot travels in several events below the size
budget, the last one marked; clients that never heard of the snapshot get what they always got.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from exosphere import RunStatus, Runtime, StateManager, StateStatus
from exosphere.v1 import common_pb2, scheduler_pb2_grpc
from exosphere.v1 import scheduler_pb2 as pb
from server import snapshots
from server.api import Ctx, SchedulerApi
from server.app import App
from server.config import ServerConfig
from server.sizes import SNAPSHOT_EVENT_BYTES
from tests.engine_nodes import Flaky, Split, Tag
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.servers import serving

GET_RUN = "/exosphere.v1.SchedulerService/GetRun"
BRANCHES = 30
ITEM = 20_000  # characters of each branch's item: 30 branches carry ~1.2 MB of states, several events' worth


@pytest.fixture
async def stub(server_address: str) -> AsyncIterator[scheduler_pb2_grpc.SchedulerServiceAsyncStub]:
    async with grpc.aio.insecure_channel(server_address) as channel:
        yield scheduler_pb2_grpc.SchedulerServiceStub(channel)


async def _fan_graph(state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str) -> None:
    await start_runtime([Split, Tag])
    await state_manager.upsert_graph(
        "fan",
        [
            gnode(namespace, "Split", "split", {"csv": "x"}, next_nodes=["tag"]),
            gnode(namespace, "Tag", "tag", {"text": "${{ split.outputs.item }}", "suffix": "!"}),
        ],
    )


def _csv(branches: int = BRANCHES) -> str:
    return ",".join(chr(ord("a") + i % 26) * ITEM for i in range(branches))


async def _events(
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub, request: pb.WatchRunRequest
) -> list[pb.WatchRunResponse]:
    return [event async for event in stub.WatchRun(request, timeout=30)]


async def test_wait_reads_the_final_snapshot_from_the_watch_stream_without_get_run(
    app: App, state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await _fan_graph(state_manager, start_runtime, namespace)

    run = await state_manager.trigger("fan", inputs={"csv": _csv()}, store={"k": "v"})
    result = await state_manager.wait(run.run_id, timeout=20)
    both = await state_manager.trigger_and_wait("fan", inputs={"csv": "p,q"}, timeout=20)

    assert result.status is RunStatus.SUCCESS and result.store == {"k": "v"}
    tags = states_of(result, "tag")
    assert len(tags) == BRANCHES and all(s.status is StateStatus.SUCCESS for s in tags)
    assert sorted(s.outputs[0]["text"][0] for s in tags) == sorted(chr(ord("a") + i % 26) for i in range(BRANCHES))
    assert all(s.outputs[0]["text"] == s.inputs["text"] + "!" for s in tags)
    assert both.status is RunStatus.SUCCESS
    assert sorted(s.outputs[0]["text"] for s in states_of(both, "tag")) == ["p!", "q!"]
    # The same snapshot a GetRun reads, and none was made.
    assert not [key for key in app.rpcs.calls if key[0] == GET_RUN]
    assert (await state_manager.get_run(run.run_id)).states == result.states


async def test_a_big_final_snapshot_travels_in_events_below_the_budget_and_the_last_is_marked(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
) -> None:
    await _fan_graph(state_manager, start_runtime, namespace)
    request = pb.WatchRunRequest(
        run_only=True,
        final_snapshot=True,
        trigger=pb.TriggerGraphRequest(namespace=namespace, graph_name="fan", inputs={"csv": _csv()}),
    )

    live = await _events(stub, request)  # the run ends while watched: the snapshot comes from memory
    run_id = live[0].run.run_id
    finished = await _events(stub, pb.WatchRunRequest(run_id=run_id, final_snapshot=True))  # from the database

    for events in (live, finished):
        assert len(events) > 1
        assert [e.last for e in events] == [False] * (len(events) - 1) + [True]
        assert all(e.run.status == common_pb2.RUN_STATUS_SUCCESS and e.run.run_id == run_id for e in events)
        # Within the budget, but for the split's own state (every item in its outputs), which travels alone.
        assert all(e.ByteSize() <= SNAPSHOT_EVENT_BYTES or len(e.states) == 1 for e in events)
        states = [s for e in events for s in e.states]
        assert len(states) == BRANCHES + 1 and len({s.state_id for s in states}) == BRANCHES + 1
    assert [s.state_id for e in live for s in e.states] == [s.state_id for e in finished for s in e.states]


async def test_a_final_snapshot_over_its_event_bound_is_left_out_and_a_small_one_is_sent(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
) -> None:
    """WatchRunRequest.final_snapshot_max_events (what trigger() asks for the watch it keeps): a snapshot needing
    more events than that is left out, so a wait() that never comes costs the scheduler one event at most."""
    await _fan_graph(state_manager, start_runtime, namespace)

    def bounded(csv: str) -> pb.WatchRunRequest:
        trigger = pb.TriggerGraphRequest(namespace=namespace, graph_name="fan", inputs={"csv": csv})
        return pb.WatchRunRequest(
            run_only=True, final_snapshot=True, final_snapshot_max_events=1, announce=True, trigger=trigger
        )

    announced, big = await _events(stub, bounded(_csv()))
    assert announced.run.status == common_pb2.RUN_STATUS_PENDING and not announced.last
    assert big.last and big.states_left_out and not big.states
    assert big.run.status == common_pb2.RUN_STATUS_SUCCESS
    # From the finished run's snapshot too, and without the bound the same run comes whole.
    (again,) = await _events(
        stub, pb.WatchRunRequest(run_id=big.run.run_id, final_snapshot=True, final_snapshot_max_events=1)
    )
    assert again.last and again.states_left_out and not again.states
    whole = await _events(stub, pb.WatchRunRequest(run_id=big.run.run_id, final_snapshot=True))
    assert len(whole) > 1 and sum(len(e.states) for e in whole) == BRANCHES + 1

    _, small = await _events(stub, bounded("p,q"))
    assert small.last and not small.states_left_out and len(small.states) == 3


async def test_clients_before_the_snapshot_get_what_they_always_got(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
) -> None:
    await _fan_graph(state_manager, start_runtime, namespace)
    trigger = pb.TriggerGraphRequest(namespace=namespace, graph_name="fan", inputs={"csv": "a,b"}, store={"k": "v"})

    # An older trigger-and-wait: one event, the outcome, no states.
    (outcome,) = await _events(stub, pb.WatchRunRequest(run_only=True, trigger=trigger))
    assert outcome.run.status == common_pb2.RUN_STATUS_SUCCESS and not outcome.states
    assert dict(outcome.run.store) == {"k": "v"}
    # An older wait() on a finished run: the outcome without states; its states come from GetRun.
    (done,) = await _events(stub, pb.WatchRunRequest(run_id=outcome.run.run_id, run_only=True))
    assert done.run.status == common_pb2.RUN_STATUS_SUCCESS and not done.states
    page = await stub.GetRun(pb.GetRunRequest(run_id=outcome.run.run_id), timeout=10)
    assert len(page.states) == 3 and not page.next_page_token
    # An older full watch: every state, then the stream ends.
    events = await _events(stub, pb.WatchRunRequest(run_id=outcome.run.run_id))
    assert sum(len(e.states) for e in events) == 3 and events[-1].last


async def test_a_watch_of_a_pending_run_sends_nothing_until_the_end_then_the_whole_run(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
) -> None:
    await _fan_graph(state_manager, start_runtime, namespace)
    run = await state_manager.trigger("fan", inputs={"csv": "a,b,c"}, start_delay=300)
    call = stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id, run_only=True, final_snapshot=True), timeout=30)

    events = [event async for event in call]

    assert len(events) == 1 and events[0].last
    assert events[0].run.status == common_pb2.RUN_STATUS_SUCCESS
    assert sorted(s.identifier for s in events[0].states) == ["split", "tag", "tag", "tag"]
    assert all(s.status == common_pb2.STATE_STATUS_SUCCESS for s in events[0].states)


async def test_wait_on_a_scheduler_before_the_snapshot_reads_the_states_with_get_run(
    server_config: ServerConfig, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real scheduler answering WatchRun as one before final_snapshot did: the field unknown, `last` never set.
    newer = SchedulerApi.WatchRun

    async def older(
        self: SchedulerApi, request: pb.WatchRunRequest, context: Ctx
    ) -> AsyncIterator[pb.WatchRunResponse]:
        request.ClearField("final_snapshot")
        async for event in newer(self, request, context):
            event.ClearField("last")
            yield event

    monkeypatch.setattr(SchedulerApi, "WatchRun", older)  # before the server binds its handlers
    async with serving(server_config) as app, RuntimeGroup() as group:
        address = f"127.0.0.1:{app.port}"
        await group.start(Runtime(namespace=namespace, name="older", nodes=[Split, Tag], address=address))
        async with StateManager(namespace, address=address) as sm:
            await sm.upsert_graph(
                "fan",
                [
                    gnode(namespace, "Split", "split", {"csv": "x"}, next_nodes=["tag"]),
                    gnode(namespace, "Tag", "tag", {"text": "${{ split.outputs.item }}", "suffix": "!"}),
                ],
            )
            run = await sm.trigger("fan", inputs={"csv": "a,b"})
            waited = await sm.wait(run.run_id, timeout=20)
            both = await sm.trigger_and_wait("fan", inputs={"csv": "c"}, timeout=20)

        assert waited.status is RunStatus.SUCCESS and len(waited.states) == 3
        assert both.status is RunStatus.SUCCESS and [s.outputs for s in states_of(both, "tag")] == [[{"text": "c!"}]]
        assert sum(count for key, count in app.rpcs.calls.items() if key[0] == GET_RUN) == 2


async def test_a_finished_run_reads_in_pages_from_its_snapshot(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    stub: scheduler_pb2_grpc.SchedulerServiceAsyncStub,
) -> None:
    await _fan_graph(state_manager, start_runtime, namespace)
    (done,) = await _events(
        stub,
        pb.WatchRunRequest(
            run_only=True, trigger=pb.TriggerGraphRequest(namespace=namespace, graph_name="fan", inputs={"csv": _csv()})
        ),
    )
    run_id = done.run.run_id

    pages, token = [], ""
    while True:  # the first page encodes the run once; the others are cut from that
        page = await stub.GetRun(pb.GetRunRequest(run_id=run_id, page_size=7, page_token=token), timeout=10)
        pages.append(page)
        token = page.next_page_token
        if not token:
            break
    whole = await state_manager.get_run(run_id)

    assert [len(p.states) for p in pages] == [7, 7, 7, 7, 3]
    assert all(p.run.status == common_pb2.RUN_STATUS_SUCCESS for p in pages)
    seqs = [int(s.state_id.rpartition("-")[2]) for p in pages for s in p.states]
    assert seqs == sorted(seqs) and len(set(seqs)) == BRANCHES + 1
    assert [s.state_id for s in whole.states] == [s.state_id for p in pages for s in p.states]
    assert sorted(s.outputs[0]["text"][:1] for s in states_of(whole, "tag")) == sorted(
        chr(ord("a") + i % 26) for i in range(BRANCHES)
    )
    # A token past the end gives an empty last page, as before.
    beyond = await stub.GetRun(pb.GetRunRequest(run_id=run_id, page_token=str(10**9)), timeout=10)
    assert not beyond.states and not beyond.next_page_token


async def test_reads_of_a_finished_run_follow_a_manual_retry(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Flaky])
    key = uuid.uuid4().hex
    await state_manager.upsert_graph(
        "once", [gnode(namespace, "Flaky", "f", {"key": key, "fails": "1"})], retry_policy={"max_retries": 0}
    )
    run = await state_manager.trigger("once")
    failed = await state_manager.wait(run.run_id, timeout=10)
    assert failed.status is RunStatus.FAILED
    assert (await state_manager.get_run(run.run_id)).states == failed.states  # read once more: now kept encoded

    await state_manager.retry_state(failed.states[0].state_id)
    async for event, _ in state_manager.watch(run.run_id, states=False):  # no snapshot made on the way
        if event.status is not RunStatus.PENDING:
            break

    for again in (await state_manager.get_run(run.run_id), await state_manager.wait(run.run_id, timeout=10)):
        assert again.status is RunStatus.SUCCESS
        assert [(s.attempt, s.status) for s in again.states] == [(1, StateStatus.ERRORED), (2, StateStatus.SUCCESS)]


async def test_a_run_too_big_to_snapshot_is_waited_for_and_read_as_before(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(snapshots, "MAX_SNAPSHOT_STATES", 10)  # the 31-state run below is then too big
    await _fan_graph(state_manager, start_runtime, namespace)

    run = await state_manager.trigger("fan", inputs={"csv": _csv()})
    live = await state_manager.wait(run.run_id, timeout=20)  # its end seen live: the snapshot from memory
    finished = await state_manager.wait(run.run_id, timeout=20)  # from the store, every state at once
    read = await state_manager.get_run(run.run_id)  # page by page from the store

    assert live.status is RunStatus.SUCCESS and len(live.states) == BRANCHES + 1
    assert finished.states == live.states and read.states == live.states
