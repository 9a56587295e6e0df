"""Issue 9, bounded by bytes: no batch, page or event passes the gRPC message limit, whatever the data.

Each test moves tens of megabytes through a real scheduler and real runtimes, so most are marked slow.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, ClassVar

import grpc
import pytest
from pydantic import BaseModel

from exosphere import BaseNode, RunStatus, StateManager, StateStatus
from exosphere.errors import InvalidArgumentError
from exosphere.v1 import common_pb2, runtime_pb2, runtime_pb2_grpc
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually

MB = 1024 * 1024
LIMIT = common_pb2.LIMIT_MAX_MESSAGE_BYTES


NO_RETRY = {"max_retries": 0}


class Fan(BaseNode):
    """``n`` outputs; reads nothing from the store, but every dispatch carries it."""

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in range(int(self.inputs.n))]


class Leaf(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> Outputs:
        return self.Outputs(item=self.inputs.item)


class StoreSize(BaseNode):
    """Outputs how many characters of the store's ``blob`` it saw: every dispatch must see the whole store."""

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        size: str

    async def execute(self) -> Outputs:
        return self.Outputs(size=str(len(self.store.get("blob", ""))))


class Big(BaseNode):
    """Returns ``mb`` megabytes of output (plus ``store_mb`` written to the store) once ``together`` states of its
    ``key`` are running, so their results leave the runtime in one flush."""

    waiting: ClassVar[dict[str, int]] = defaultdict(int)

    class Inputs(BaseModel):
        item: str
        key: str
        together: str = "1"
        mb: str = "15"
        store_mb: str = "0"

    class Outputs(BaseModel):
        blob: str

    async def execute(self) -> Outputs:
        Big.waiting[self.inputs.key] += 1
        await assert_eventually(lambda: Big.waiting[self.inputs.key] >= int(self.inputs.together), timeout=20)
        if self.inputs.store_mb != "0":
            self.store["big"] = "s" * int(float(self.inputs.store_mb) * MB)
        return self.Outputs(blob=self.inputs.item * int(float(self.inputs.mb) * MB))


class Secretive(BaseNode):
    class Inputs(BaseModel):
        x: str

    class Secrets(BaseModel):
        token: str

    async def execute(self) -> None:
        return None


_BIG = [("grpc.max_send_message_length", LIMIT), ("grpc.max_receive_message_length", LIMIT)]


def _schema(name: str, *, default: str | None = None) -> common_pb2.NodeSchema:
    """A node with one input ``x`` (optional with ``default`` when given) and one required output ``item``."""
    schema = common_pb2.NodeSchema(name=name)
    schema.inputs.name = "Inputs"
    if default is not None:
        schema.inputs.field.add(name="x", number=1, type=9, label=1, default_value=default)  # TYPE_STRING, OPTIONAL
    schema.outputs.name = "Outputs"
    schema.outputs.field.add(name="item", number=1, type=9, label=2)  # LABEL_REQUIRED
    schema.secrets.name = "Secrets"
    return schema


async def raw_runtime(
    channel: grpc.aio.Channel,
    namespace: str,
    schemas: list[common_pb2.NodeSchema],
    *,
    credit: int = 1,
    shares_stores: bool = False,
) -> Any:
    """A runtime stream spoken by hand (as a runtime in another language would), registered."""
    call: Any = runtime_pb2_grpc.RuntimeServiceStub(channel).Connect()
    register = runtime_pb2.Register(
        namespace=namespace,
        runtime_name="raw",
        runtime_id="raw-1",
        nodes=schemas,
        max_concurrency=credit,
        shares_stores=shares_stores,
    )
    await call.write(runtime_pb2.RuntimeMessage(register=register))
    assert (await call.read()).HasField("registered")
    return call


# ---------------------------------------------------------------------------------------------------- dispatch


@pytest.mark.slow
async def test_big_store_fanned_out_to_one_runtime_finishes(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # 300 dispatches of a 300 KB store: 256 of them in one batch would be 77 MB, over the 64 MiB limit.
    await start_runtime([Fan, StoreSize], max_concurrency=400)
    await state_manager.upsert_graph(
        "wide",
        [
            gnode(namespace, "Fan", "fan", {"n": "300"}, next_nodes=["size"]),
            gnode(namespace, "StoreSize", "size", {"item": "${{ fan.outputs.item }}"}),
        ],
    )
    run = await state_manager.trigger("wide", store={"blob": "x" * 300_000})
    result = await state_manager.wait(run.run_id, timeout=30)
    assert result.status is RunStatus.SUCCESS
    assert result.state_counts == {"SUCCESS": 301}
    assert {s.outputs[0]["size"] for s in result.states if s.identifier == "size"} == {"300000"}


@pytest.mark.parametrize(
    ("shares_stores", "width", "blob"),
    [
        (True, 3, 1000),
        # Without sharing, 256 items of a 300 KB store would be 77 MB in one batch: the batch must be cut by size.
        pytest.param(False, 300, 300_000, marks=pytest.mark.slow),
    ],
)
async def test_a_store_travels_once_per_batch_to_runtimes_that_share_stores(
    state_manager: StateManager,
    start_runtime: RuntimeFactory,
    server_address: str,
    namespace: str,
    shares_stores: bool,
    width: int,
    blob: int,
) -> None:
    # Runtimes that do not announce Register.shares_stores (older SDKs, other languages) get it in every item.
    await start_runtime([Fan])
    async with grpc.aio.insecure_channel(server_address, options=_BIG) as channel:
        call = await raw_runtime(channel, namespace, [_schema("Raw")], credit=400, shares_stores=shares_stores)
        await state_manager.upsert_graph(
            "fan",
            [gnode(namespace, "Fan", "fan", {"n": str(width)}, next_nodes=["raw"]), gnode(namespace, "Raw", "raw", {})],
        )
        await state_manager.trigger("fan", store={"blob": "b" * blob})
        items: list[runtime_pb2.Execute] = []
        while len(items) < width:
            message = await asyncio.wait_for(call.read(), timeout=10)
            assert message.ByteSize() < LIMIT
            items.extend(message.execute.items)
        call.cancel()
    assert len({item.state_id for item in items}) == width
    first, *rest = items
    assert first.store == {"blob": "b" * blob} and not first.store_as_previous
    if shares_stores:
        assert all(item.store_as_previous and not item.store for item in rest)
    else:
        assert all(item.store == first.store and not item.store_as_previous for item in rest)


@pytest.mark.slow
async def test_a_state_too_large_to_dispatch_fails_alone_with_a_clear_error(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # A 60 MB secret and a 10 MB store: each fits its request, but one Execute carrying both cannot.
    runtime = await start_runtime([Secretive, Leaf])
    await state_manager.upsert_graph(
        "huge",
        [gnode(namespace, "Secretive", "s", {"x": "1"})],
        secrets={"token": "k" * 60 * MB},
        retry_policy=NO_RETRY,
    )
    await state_manager.upsert_graph("small", [gnode(namespace, "Leaf", "leaf", {"item": "ok"})])
    run = await state_manager.trigger("huge", store={"pad": "p" * 10 * MB})
    result = await state_manager.wait(run.run_id, timeout=20)

    assert result.status is RunStatus.FAILED
    [state] = result.states
    assert state.status is StateStatus.ERRORED
    assert state.error is not None and state.error["type"] == "MessageTooLargeError"
    assert f"over the {LIMIT - 64 * 1024}-byte limit" in state.error["message"]
    # The stream survived: the same runtime still executes other states, and never saw the big one.
    other = await state_manager.trigger("small")
    assert (await state_manager.wait(other.run_id, timeout=10)).status is RunStatus.SUCCESS
    assert runtime.executed_count == 1


# ---------------------------------------------------------------------------------------------------- results


@pytest.mark.slow
async def test_results_together_over_the_limit_are_sent_in_several_batches_and_the_run_reads_back(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # Five 15 MB results finish together: one batch would be 75 MB. The finished run (75 MB of states) must read.
    await start_runtime([Fan, Big], max_concurrency=8)
    await state_manager.upsert_graph(
        "bigs",
        [
            gnode(namespace, "Fan", "fan", {"n": "5"}, next_nodes=["big"]),
            gnode(namespace, "Big", "big", {"item": "${{ fan.outputs.item }}", "key": namespace, "together": "5"}),
        ],
        retry_policy=NO_RETRY,
    )
    run = await state_manager.trigger("bigs")
    result = await state_manager.wait(run.run_id, timeout=30)

    assert result.status is RunStatus.SUCCESS
    bigs = sorted((s for s in result.states if s.identifier == "big"), key=lambda s: s.outputs[0]["blob"][0])
    assert [s.outputs[0]["blob"][:1] for s in bigs] == ["0", "1", "2", "3", "4"]
    assert all(len(s.outputs[0]["blob"]) == 15 * MB for s in bigs)
    # The watch stream of the finished run splits its one big event too.
    seen = []
    async for _, states in state_manager.watch(run.run_id):
        seen.extend(states)
    assert len(seen) == 6


@pytest.mark.slow
async def test_a_result_too_large_for_any_message_fails_its_state_not_the_stream(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # 10 MB of outputs (under the 16 MiB outputs limit) plus 60 MB written to the store: 70 MB in one result.
    await start_runtime([Big, Leaf])
    await state_manager.upsert_graph(
        "toobig",
        [gnode(namespace, "Big", "big", {"item": "b", "key": namespace, "mb": "10", "store_mb": "60"})],
        retry_policy=NO_RETRY,
    )
    await state_manager.upsert_graph("small", [gnode(namespace, "Leaf", "leaf", {"item": "ok"})])
    run = await state_manager.trigger("toobig")
    result = await state_manager.wait(run.run_id, timeout=20)

    assert result.status is RunStatus.FAILED
    [state] = result.states
    assert state.error is not None and state.error["type"] == "ResultTooLargeError"
    assert "bytes, over the" in state.error["message"] and "LIMIT_MAX_MESSAGE_BYTES" in state.error["message"]
    assert "big" not in result.store
    other = await state_manager.trigger("small")
    assert (await state_manager.wait(other.run_id, timeout=10)).status is RunStatus.SUCCESS


# ---------------------------------------------------------------------------------------------------- reads


@pytest.mark.slow
async def test_list_runs_and_list_graphs_page_by_size(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # Five graphs and five runs of 15 MB each: 75 MB in one response before paging by size.
    await start_runtime([Leaf])
    for i in range(5):
        await state_manager.upsert_graph(f"g{i}", [gnode(namespace, "Leaf", "leaf", {"item": str(i) * 15 * MB})])
    graphs = await state_manager.list_graphs()
    assert [g.name for g in graphs] == [f"g{i}" for i in range(5)]
    assert all(len(g.nodes[0].inputs["item"]) == 15 * MB for g in graphs)

    for i in range(5):
        await state_manager.trigger("g0", store={"blob": str(i) * 15 * MB}, start_delay=3_600_000)
    runs, token = await state_manager.list_runs(page_size=50)
    while token:
        more, token = await state_manager.list_runs(page_size=50, page_token=token)
        runs.extend(more)
    assert len(runs) == 5
    assert len(runs) == len({r.run_id for r in runs})


async def test_list_runs_pages_lose_no_run_started_in_the_same_millisecond(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # TriggerGraphs starts its runs in one millisecond; a page boundary among them used to skip the rest.
    await start_runtime([Leaf])
    await state_manager.upsert_graph("g", [gnode(namespace, "Leaf", "leaf", {"item": "x"})])
    started = {r.run_id for r in await state_manager.trigger_many("g", [{} for _ in range(120)])}
    runs, token = await state_manager.list_runs(page_size=50)
    while token:
        more, token = await state_manager.list_runs(page_size=50, page_token=token)
        runs.extend(more)
    assert sorted(r.run_id for r in runs) == sorted(started)


@pytest.mark.slow
async def test_list_nodes_pages_by_size(state_manager: StateManager, server_address: str, namespace: str) -> None:
    # 70 node schemas carrying a 1 MB default each, registered by two runtimes (each Register fits one message).
    names = [f"N{i:02d}" for i in range(70)]
    async with grpc.aio.insecure_channel(server_address, options=_BIG) as channel:
        calls = [
            await raw_runtime(channel, namespace, [_schema(n, default="d" * MB) for n in half])
            for half in (names[:35], names[35:])
        ]
        assert await state_manager.list_nodes() == names
        for call in calls:
            call.cancel()


# ---------------------------------------------------------------------------------------------------- outputs


class Wide(BaseNode):
    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item="x")] * int(self.inputs.n)


async def test_python_runtime_refuses_more_outputs_than_a_result_may_carry(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Wide, Leaf])
    await state_manager.upsert_graph(
        "wide",
        [
            gnode(namespace, "Wide", "wide", {"n": "10001"}, next_nodes=["leaf"]),
            gnode(namespace, "Leaf", "leaf", {"item": "${{ wide.outputs.item }}"}),
        ],
        retry_policy=NO_RETRY,
    )
    run = await state_manager.trigger("wide")
    result = await state_manager.wait(run.run_id, timeout=20)
    [state] = result.states
    assert state.status is StateStatus.ERRORED
    assert state.error is not None and state.error["type"] == "TooManyOutputsError"
    assert "at most 10000 outputs (LIMIT_MAX_OUTPUTS_PER_RESULT), got 10001" in state.error["message"]


async def test_scheduler_refuses_more_outputs_than_a_result_may_carry(
    state_manager: StateManager, server_address: str, namespace: str
) -> None:
    # A runtime in another language may skip the check: the scheduler enforces it, with the same words.
    async with grpc.aio.insecure_channel(server_address) as channel:
        call = await raw_runtime(channel, namespace, [_schema("Raw")])
        await state_manager.upsert_graph("raw", [gnode(namespace, "Raw", "raw", {})], retry_policy=NO_RETRY)
        run = await state_manager.trigger("raw")
        message = await asyncio.wait_for(call.read(), timeout=10)
        [item] = message.execute.items
        result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
        for _ in range(10_001):
            result.executed.outputs.add().fields["item"] = "x"
        await call.write(runtime_pb2.RuntimeMessage(results=runtime_pb2.ResultBatch(results=[result])))
        finished = await state_manager.wait(run.run_id, timeout=10)
        call.cancel()
    [state] = finished.states
    assert state.status is StateStatus.ERRORED
    assert state.error is not None and state.error["type"] == "TooManyOutputsError"
    assert "at most 10000 outputs (LIMIT_MAX_OUTPUTS_PER_RESULT), got 10001" in state.error["message"]


# ---------------------------------------------------------------------------------------------------- the store


class Writes(BaseNode):
    """Writes ``mb`` megabytes to the store key ``key``."""

    class Inputs(BaseModel):
        key: str
        mb: str

    class Outputs(BaseModel):
        key: str

    async def execute(self) -> Outputs:
        self.store[self.inputs.key] = "w" * int(float(self.inputs.mb) * MB)
        return self.Outputs(key=self.inputs.key)


@pytest.mark.slow
async def test_a_run_store_is_bounded_so_the_run_stays_readable(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # Each write fits a result, but a store growing without bound would make every read of the run fail.
    await start_runtime([Writes])
    await state_manager.upsert_graph(
        "grow",
        [
            gnode(namespace, "Writes", "first", {"key": "a", "mb": "10"}, next_nodes=["second"]),
            gnode(namespace, "Writes", "second", {"key": "b", "mb": "10"}),
        ],
        retry_policy=NO_RETRY,
    )
    run = await state_manager.trigger("grow")
    result = await state_manager.wait(run.run_id, timeout=20)
    first, second = sorted(result.states, key=lambda s: s.identifier)
    assert first.status is StateStatus.SUCCESS
    assert second.status is StateStatus.ERRORED
    assert second.error is not None and second.error["type"] == "StoreTooLargeError"
    assert f"at most {16 * MB}" in second.error["message"]
    assert set(result.store) == {"a"}

    with pytest.raises(InvalidArgumentError, match=f"a run's store may hold at most {16 * MB}"):
        await state_manager.trigger("grow", store={"big": "x" * 17 * MB})


class Held(BaseNode):
    """Runs until the test releases its ``key``."""

    released: ClassVar[set[str]] = set()

    class Inputs(BaseModel):
        key: str

    async def execute(self) -> None:
        await assert_eventually(lambda: self.inputs.key in Held.released, timeout=20)


async def test_a_run_only_watch_sends_the_store_once_with_the_outcome(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # A client waiting for the outcome would otherwise receive the whole store (up to 16 MiB) at every commit.
    await start_runtime([Held])
    await state_manager.upsert_graph("held", [gnode(namespace, "Held", "held", {"key": namespace})])
    run = await state_manager.trigger("held", store={"k": "v" * 1000})
    events = []
    async for event, _ in state_manager.watch(run.run_id, states=False):
        events.append(event)
        Held.released.add(namespace)
    assert events[0].status is RunStatus.PENDING and events[0].store == {}
    assert events[-1].status is RunStatus.SUCCESS and events[-1].store == {"k": "v" * 1000}


class Gather(BaseNode):
    class Inputs(BaseModel):
        blobs: str

    async def execute(self) -> None:
        return None


@pytest.mark.slow
async def test_a_merge_whose_inputs_cannot_fit_fails_and_the_run_stays_readable(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    # Five 14 MB branches: a merge reading all of them would have 70 MB of inputs, a state no message can carry.
    await start_runtime([Fan, Big, Gather], max_concurrency=8)
    await state_manager.upsert_graph(
        "gather",
        [
            gnode(namespace, "Fan", "fan", {"n": "5"}, next_nodes=["big"]),
            gnode(namespace, "Big", "big", {"item": "${{ fan.outputs.item }}", "key": namespace, "mb": "14"},
                  next_nodes=["gather"]),
            gnode(namespace, "Gather", "gather", {"blobs": "${{ big.outputs.blob }}"},
                  unites={"identifier": "fan"}),
        ],
        retry_policy=NO_RETRY,
    )  # fmt: skip
    run = await state_manager.trigger("gather")
    result = await state_manager.wait(run.run_id, timeout=30)

    assert result.status is RunStatus.FAILED
    [fan] = [s for s in result.states if s.identifier == "fan"]
    assert fan.status is StateStatus.NEXT_CREATED_ERROR
    assert fan.error is not None and "a state's inputs may be at most 33554432" in fan.error["message"]
    assert not [s for s in result.states if s.identifier == "gather"]


@pytest.mark.slow
async def test_scheduler_refuses_outputs_over_16_mib_from_any_runtime(
    state_manager: StateManager, server_address: str, namespace: str
) -> None:
    async with grpc.aio.insecure_channel(server_address, options=_BIG) as channel:
        call = await raw_runtime(channel, namespace, [_schema("Raw")])
        await state_manager.upsert_graph("raw", [gnode(namespace, "Raw", "raw", {})], retry_policy=NO_RETRY)
        run = await state_manager.trigger("raw")
        message = await asyncio.wait_for(call.read(), timeout=10)
        [item] = message.execute.items
        result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
        result.executed.outputs.add().fields["item"] = "x" * (16 * MB + 1)
        await call.write(runtime_pb2.RuntimeMessage(results=runtime_pb2.ResultBatch(results=[result])))
        finished = await state_manager.wait(run.run_id, timeout=10)
        call.cancel()
    [state] = finished.states
    assert state.status is StateStatus.ERRORED
    assert state.error is not None and state.error["type"] == "ResultTooLargeError"
    assert f"{16 * MB + 1} bytes of outputs; limit {16 * MB}" in state.error["message"]


@pytest.mark.slow
async def test_error_text_is_cut_and_huge_prune_data_refused_for_runtimes_in_any_language(
    state_manager: StateManager, server_address: str, namespace: str
) -> None:
    async with grpc.aio.insecure_channel(server_address, options=_BIG) as channel:
        call = await raw_runtime(channel, namespace, [_schema("Raw")], credit=2)
        await state_manager.upsert_graph("raw", [gnode(namespace, "Raw", "raw", {})], retry_policy=NO_RETRY)
        runs = [(await state_manager.trigger("raw")).run_id for _ in range(2)]
        items: list[runtime_pb2.Execute] = []
        while len(items) < 2:
            items.extend((await asyncio.wait_for(call.read(), timeout=10)).execute.items)
        results = [runtime_pb2.Result(state_id=i.state_id, attempt=i.attempt, dispatch_id=i.dispatch_id) for i in items]
        results[0].errored.message = "m" * 30 * MB
        results[0].errored.traceback = "t" * 30 * MB
        results[1].pruned.data_json = '"' + "p" * 20 * MB + '"'
        for result in results:
            await call.write(runtime_pb2.RuntimeMessage(results=runtime_pb2.ResultBatch(results=[result])))
        finished = [await state_manager.wait(run_id, timeout=10) for run_id in runs]
        call.cancel()
    by_state = {s.state_id: s for run in finished for s in run.states}
    errored, pruned = (by_state[i.state_id] for i in items)
    assert errored.error is not None
    assert errored.error["message"].endswith(f"... ({30 * MB - 64 * 1024} more characters)")
    assert len(errored.error["traceback"]) < 70 * 1024
    assert pruned.status is StateStatus.ERRORED
    assert pruned.error is not None and pruned.error["type"] == "ResultTooLargeError"
