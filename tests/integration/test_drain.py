"""Drain before stop (docs/protocol.md, "Drain"): a stopping scheduler sends Drain{grace_ms} on every runtime stream,
dispatches nothing more, commits the results that come within the grace, then requeues what is still held. Real
schedulers on one SQLite file, restarted on the same port; a real Python runtime, and a raw stream."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from exosphere import BaseNode, GraphNodeModel, RunStatus, StateManager
from exosphere.v1 import runtime_pb2
from server.app import App
from server.config import ServerConfig
from tests.helpers.raw import RawRuntime, done, node_schema
from tests.helpers.runtimes import RuntimeGroup
from tests.helpers.servers import ServerProcess, Start
from tests.helpers.waiting import assert_eventually

# The gate the slow node waits at, and how often each state started; reset by the fixture.
GATE: dict[str, asyncio.Event] = {}
STARTED: Counter[str] = Counter()


class Slow(BaseNode):
    class Inputs(BaseNode.Inputs):
        x: str

    class Outputs(BaseNode.Outputs):
        y: str

    async def execute(self) -> Any:
        STARTED[self.inputs.x] += 1
        await GATE["open"].wait()
        return self.Outputs(y=f"done {self.inputs.x}")


@pytest.fixture
def gate() -> asyncio.Event:
    GATE["open"] = asyncio.Event()
    STARTED.clear()
    return GATE["open"]


def _config(db_path: Path, drain: str, port: int = 0) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=port, db=str(db_path), drain_grace=drain, http_port=-1)


async def _hold_three(app: App, namespace: str, runtimes: RuntimeGroup) -> tuple[Any, list[str]]:
    """A Python runtime on ``app`` holding three Slow states (one run each)."""
    from exosphere import Runtime

    runtime = await runtimes.start(Runtime(namespace, "slow", [Slow], address=app.address, max_concurrency=4))
    async with StateManager(namespace, address=app.address) as sm:
        await sm.upsert_graph("g", [GraphNodeModel(node_name="Slow", namespace=namespace, identifier="s")])
        run_ids = [(await sm.trigger("g", inputs={"x": str(i)})).run_id for i in range(3)]
    await assert_eventually(lambda: sum(STARTED.values()) == 3, message=lambda: f"started {dict(STARTED)}")
    return runtime, run_ids


async def test_results_within_the_drain_grace_are_committed_and_the_runtime_comes_back(
    db_path: Path, namespace: str, runtimes: RuntimeGroup, gate: asyncio.Event, start: Start
) -> None:
    app = await start(_config(db_path, "PT10S"))
    runtime, run_ids = await _hold_three(app, namespace, runtimes)
    (session,) = app.engine.runtimes.connected(namespace)
    stopping = asyncio.create_task(app.stop())
    await assert_eventually(lambda: session.drain_sent and session.draining, message="Drain sent")
    assert not stopping.done()  # the scheduler waits for the runtime, within the grace
    gate.set()
    started = time.monotonic()
    await asyncio.wait_for(stopping, 10)
    assert time.monotonic() - started < 5, "the scheduler waited past the runtime's half-close"
    # The same database and port again: the runtime reconnects by itself, and nothing runs twice.
    restarted = await start(_config(db_path, "PT5S", app.port))
    await runtimes.wait_registered(runtime)
    async with StateManager(namespace, address=restarted.address) as sm:
        for run_id in run_ids:
            run = await sm.wait(run_id, timeout=10)
            assert run.status is RunStatus.SUCCESS
            assert [(s.attempt, s.outputs) for s in run.states] == [(1, [{"y": f"done {run_ids.index(run_id)}"}])]
        assert STARTED == Counter({"0": 1, "1": 1, "2": 1})
        # And it goes on taking work from the restarted scheduler.
        run = await sm.wait((await sm.trigger("g", inputs={"x": "after"})).run_id, timeout=10)
        assert run.status is RunStatus.SUCCESS


async def test_states_held_past_the_drain_grace_are_requeued_and_run_again(
    db_path: Path, namespace: str, runtimes: RuntimeGroup, gate: asyncio.Event, start: Start
) -> None:
    app = await start(_config(db_path, "PT0.3S"))
    runtime, run_ids = await _hold_three(app, namespace, runtimes)
    started = time.monotonic()
    await asyncio.wait_for(app.stop(), 10)
    assert time.monotonic() - started >= 0.3  # it waited the grace for states that were not done
    restarted = await start(_config(db_path, "PT5S", app.port))
    await runtimes.wait_registered(runtime)
    await assert_eventually(lambda: sum(STARTED.values()) == 6, message=lambda: f"started {dict(STARTED)}")
    gate.set()
    async with StateManager(namespace, address=restarted.address) as sm:
        for run_id in run_ids:
            run = await sm.wait(run_id, timeout=10)
            # Requeued, not failed: the same attempt ran again.
            assert run.status is RunStatus.SUCCESS and [s.attempt for s in run.states] == [1]


async def test_a_raw_runtime_gets_drain_and_its_answer_within_the_grace_counts(
    db_path: Path, namespace: str, start: Start
) -> None:
    app = await start(_config(db_path, "PT5S"))
    async with StateManager(namespace, address=app.address) as sm:
        async with RawRuntime(app.address, namespace, [node_schema("Echo")]) as raw:
            await sm.upsert_graph(
                "g", [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="e", inputs={"x": "1"})]
            )
            run_id = (await sm.trigger("g")).run_id
            (item,) = await raw.executes()
            stopping = asyncio.create_task(app.stop())
            drain = (await raw.next("drain")).drain
            assert drain.grace_ms == 5000
            # While draining, the scheduler takes no new runtime: it says so, and the runtime retries later.
            late = RawRuntime(app.address, namespace, [node_schema("Echo")])
            try:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await late.register()
            finally:
                await late.close()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            await raw.send(runtime_pb2.RuntimeMessage(draining=runtime_pb2.Draining()))
            await raw.answer(done(item, "drained"))
            await raw.half_close()
            assert await raw.ended() == (grpc.StatusCode.OK, "")
            await asyncio.wait_for(stopping, 5)
    restarted = await start(_config(db_path, "PT5S", 0))
    async with StateManager(namespace, address=restarted.address) as sm:
        run = await sm.get_run(run_id)
        assert run.status is RunStatus.SUCCESS and run.states[0].outputs == [{"y": "drained"}]


async def test_a_runtime_that_ignores_drain_loses_its_stream_at_the_grace(
    db_path: Path, namespace: str, start: Start
) -> None:
    app = await start(_config(db_path, "PT0.3S"))
    async with RawRuntime(app.address, namespace, [node_schema("Echo")]) as raw:
        stopping = asyncio.create_task(app.stop())
        await raw.next("drain")
        code, details = await raw.ended()
        assert code == grpc.StatusCode.UNAVAILABLE and "drain grace of 0.3s over" in details
        await asyncio.wait_for(stopping, 5)


def test_drain_grace_is_configured_and_checked() -> None:
    assert ServerConfig().drain_grace == timedelta(seconds=5)
    assert ServerConfig.from_env({"EXOSPHERE_DRAIN_GRACE": "PT2S"}).drain_grace == timedelta(seconds=2)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ServerConfig(drain_grace=timedelta(seconds=-1))


async def test_sigterm_drains_with_the_grace_given_on_the_command_line(tmp_path: Path, namespace: str) -> None:
    with ServerProcess(tmp_path / "exosphere.db", "--drain-grace", "PT3S") as server:
        async with RawRuntime(server.address, namespace, [node_schema("Echo")]) as raw:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            assert (await raw.next("drain")).drain.grace_ms == 3000
            await raw.send(runtime_pb2.RuntimeMessage(draining=runtime_pb2.Draining()))
            await raw.half_close()
            assert await raw.ended() == (grpc.StatusCode.OK, "")
        assert await asyncio.to_thread(server.stop) == 0
    assert "draining runtimes sessions=1 grace_s=3.0" in server.output
