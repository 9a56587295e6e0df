"""Cluster mode: several schedulers on one PostgreSQL database share the shards and take over each other's runs."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from pydantic import BaseModel

from exosphere import BaseNode, GraphNodeModel, RetryPolicyModel, RunStatus, Runtime, StateManager, StateStatus
from exosphere.errors import ConnectionFailedError, InvalidArgumentError
from exosphere.v1 import scheduler_pb2, scheduler_pb2_grpc
from server.app import App
from server.cluster import rendezvous_owner
from tests.engine_nodes import Collect, Count, Flaky, Sleeper
from tests.helpers.cluster import SHARDS, replica_config, two_replicas
from tests.helpers.pg import pg_dsn  # noqa: F401 - the fixture
from tests.helpers.runtimes import RuntimeGroup
from tests.helpers.servers import ServerProcess, serving
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo

pytestmark = pytest.mark.slow


def echo_graph(namespace: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="Echo", namespace=namespace, identifier="e", inputs={"text": "hi"})]


def test_rendezvous_spreads_shards_and_moves_only_the_leaving_replicas() -> None:
    three = ["a", "b", "c"]
    owners = {s: rendezvous_owner(s, three) for s in range(64)}
    counts = {r: sum(1 for o in owners.values() if o == r) for r in three}
    assert all(10 <= c <= 35 for c in counts.values()), counts
    two = {s: rendezvous_owner(s, ["a", "b"]) for s in range(64)}
    assert all(two[s] == owners[s] for s in range(64) if owners[s] != "c")  # only c's shards move


async def test_two_replicas_split_the_shards_and_one_takes_over_when_the_other_stops(
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
    namespace: str,
) -> None:
    async with two_replicas(pg_dsn, tmp_path) as (a, b), RuntimeGroup() as group:
        await assert_eventually(lambda: len(a.engine.shards.owned) + len(b.engine.shards.owned) == SHARDS)
        owned_a, owned_b = a.engine.shards.owned, b.engine.shards.owned
        assert owned_a and owned_b and not owned_a & owned_b
        for app in (a, b):
            await group.start(Runtime(namespace=namespace, name="rt", nodes=[Echo], address=f"127.0.0.1:{app.port}"))
        async with StateManager(namespace, address=f"127.0.0.1:{a.port}") as sm_a:
            await sm_a.upsert_graph("g", echo_graph(namespace))
            async with StateManager(namespace, address=f"127.0.0.1:{b.port}") as sm_b:
                runs = [(await sm.trigger("g")).run_id for sm in (sm_a, sm_b) for _ in range(10)]
                for sm, run_ids in ((sm_a, runs[:10]), (sm_b, runs[10:])):
                    for run_id in run_ids:  # a trigger creates its run in a shard of the replica it reached
                        assert (await sm.wait(run_id, timeout=20)).status is RunStatus.SUCCESS
        assert {a.engine.shards.of(r) for r in runs[:10]} <= owned_a
        assert {b.engine.shards.of(r) for r in runs[10:]} <= owned_b

        await b.stop(grace=0.5)  # SIGTERM's path: b hands its shards over at once
        assert a.cluster is not None
        await a.cluster.tick()
        assert a.engine.shards.owned == frozenset(range(SHARDS))


async def test_a_killed_replicas_runs_finish_on_the_survivor(pg_dsn: str, tmp_path: Path, namespace: str) -> None:  # noqa: F811
    """Two real exosphere-server processes; the one whose runs are executing is killed with SIGKILL."""
    env = {"EXOSPHERE_SECRETS_KEY_FILE": str(tmp_path / "secrets.key")}
    args = ("--shards", str(SHARDS), "--shard-lease", "PT2S")
    survivor = ServerProcess(pg_dsn, *args, env=env).start()  # creates the secrets key first
    victim = ServerProcess(pg_dsn, *args, env=env).start()
    try:
        async with RuntimeGroup() as group:
            for proc in (survivor, victim):
                runtime = Runtime(namespace=namespace, name="rt", nodes=[Sleeper], address=proc.address)
                await group.start(runtime)
            async with StateManager(namespace, address=victim.address) as sm:
                await sm.upsert_graph(
                    "sleepy",
                    [
                        GraphNodeModel(
                            node_name="Sleeper", namespace=namespace, identifier="s",
                            inputs={"key": "${{ store.key }}", "seconds": "1"},
                        )
                    ],
                    store_config={"required_keys": ["key"]},
                )  # fmt: skip
                keys = [f"{namespace}-{i}" for i in range(12)]
                run_ids = [(await sm.trigger("sleepy", store={"key": k})).run_id for k in keys]
                await assert_eventually(lambda: any(k in Sleeper.started for k in keys), timeout=10)
            assert victim.proc is not None
            os.kill(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait(10)
            async with StateManager(namespace, address=survivor.address) as sm:
                for run_id in run_ids:  # the survivor takes the dead one's shards once their leases expire
                    assert (await sm.wait(run_id, timeout=30)).status is RunStatus.SUCCESS
    finally:
        for proc in (victim, survivor):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()


class Counted(BaseNode):
    """Sleeps a little and records how many run at once in this process."""

    running: ClassVar[int] = 0
    peak: ClassVar[int] = 0

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        Counted.running += 1
        Counted.peak = max(Counted.peak, Counted.running)
        try:
            await asyncio.sleep(0.05)
        finally:
            Counted.running -= 1
        return self.Outputs(text=self.inputs.text)


async def test_a_runtime_given_one_replica_serves_every_replica_within_its_concurrency(
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
    namespace: str,
) -> None:
    async with two_replicas(pg_dsn, tmp_path) as (a, b), RuntimeGroup() as group:
        runtime = Runtime(
            namespace=namespace, name="rt", nodes=[Counted], address=f"127.0.0.1:{a.port}", max_concurrency=3
        )
        await group.start(runtime)  # given a's address only: it learns b from a
        await assert_eventually(lambda: len(b.engine.runtimes.connected(namespace)) == 1, timeout=10)
        graph = [GraphNodeModel(node_name="Counted", namespace=namespace, identifier="c", inputs={"text": "x"})]
        Counted.peak = 0
        async with StateManager(namespace, address=f"127.0.0.1:{a.port}") as sm_a:
            await sm_a.upsert_graph("g", graph)
            async with StateManager(namespace, address=f"127.0.0.1:{b.port}") as sm_b:
                runs = [(await sm.trigger("g")).run_id for sm in (sm_a, sm_b) for _ in range(15)]
                for run_id in runs:
                    assert (await sm_b.wait(run_id, timeout=30)).status is RunStatus.SUCCESS
        assert runtime.executed_count == 30
        assert 1 < Counted.peak <= 3  # both replicas' states ran through the one limiter of 3


class Slowish(BaseNode):
    """Echoes ``item`` after 50 ms: a fan-out long enough to kill its owner halfway. Counts executions."""

    executions: ClassVar[int] = 0

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        await asyncio.sleep(0.05)
        Slowish.executions += 1
        return self.Outputs(text=self.inputs.item)


def fan_graph(namespace: str, n: int) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name="Count", namespace=namespace, identifier="count", inputs={"n": str(n)}, next_nodes=["b"]
        ),
        GraphNodeModel(
            node_name="Slowish", namespace=namespace, identifier="b",
            inputs={"item": "${{ count.outputs.item }}"}, next_nodes=["merge"],
        ),
        GraphNodeModel(
            node_name="Collect", namespace=namespace, identifier="merge",
            inputs={"values": "${{ b.outputs.text }}"}, unites={"identifier": "count", "strategy": "ALL_SUCCESS"},
        ),
    ]  # fmt: skip


async def test_three_replicas_a_fan_out_of_10000_survives_the_kill_of_its_owner_halfway(
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
    namespace: str,
) -> None:
    env = {"EXOSPHERE_SECRETS_KEY_FILE": str(tmp_path / "secrets.key")}
    args = ("--shards", str(SHARDS), "--shard-lease", "PT2S", "--log-level", "WARNING")
    replicas = [ServerProcess(pg_dsn, *args, env=env).start() for _ in range(3)]  # one by one: the first makes the key
    owner = replicas[2]
    try:
        async with RuntimeGroup() as group:
            for proc in replicas[:2]:  # two runtimes, each given one replica's address; they learn the third
                await group.start(
                    Runtime(
                        namespace=namespace, name="rt", nodes=[Count, Slowish, Collect],
                        address=proc.address, max_concurrency=64,
                    )
                )  # fmt: skip
            Slowish.executions = 0
            async with StateManager(namespace, address=owner.address) as sm:
                await sm.upsert_graph("fan", fan_graph(namespace, 10_000))
                run_id = (await sm.trigger("fan")).run_id  # created in a shard of the replica it reached
            async with grpc.aio.insecure_channel(replicas[0].address) as channel:
                api = scheduler_pb2_grpc.SchedulerServiceStub(channel)

                async def succeeded() -> int:
                    reply = await api.GetRun(scheduler_pb2.GetRunRequest(run_id=run_id, page_size=1), timeout=10)
                    return int(reply.run.state_counts.get("SUCCESS", 0))

                await assert_eventually(lambda: _at_least(succeeded, 3_000), timeout=60, interval=0.05)
                assert owner.proc is not None
                os.kill(owner.proc.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                before = await succeeded()
                await assert_eventually(lambda: _at_least(succeeded, before + 1), timeout=30, interval=0.05)
                takeover_s = time.monotonic() - killed_at
            async with StateManager(namespace, address=replicas[1].address) as sm:
                done = await sm.wait(run_id, timeout=120)
        assert done.status is RunStatus.SUCCESS
        [merge] = [s for s in done.states if s.identifier == "merge"]
        assert merge.outputs == [{"count": "10000"}]
        branches = [s for s in done.states if s.identifier == "b"]
        assert sorted({s.inputs["item"] for s in branches if s.status is StateStatus.SUCCESS}, key=int) == [
            str(i) for i in range(10_000)
        ]
        assert len(branches) == 10_000  # a state dispatched again keeps its id: none is created twice
        rerun = Slowish.executions - 10_000  # executed before the kill, not committed, run again (at-least-once)
        print(f"\ntakeover after SIGKILL: {takeover_s:.2f}s (lease 2s); branches executed again: {rerun}")
        assert rerun >= 0
        assert takeover_s < 2 + 5
    finally:
        for proc in replicas:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()


async def _at_least(count: Callable[[], Awaitable[int]], value: int) -> bool:
    return await count() >= value


async def test_a_paused_replica_that_lost_its_lease_writes_nothing_when_it_resumes(
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
    namespace: str,
) -> None:
    env = {"EXOSPHERE_SECRETS_KEY_FILE": str(tmp_path / "secrets.key")}
    args = ("--shards", str(SHARDS), "--shard-lease", "PT2S")
    other = ServerProcess(pg_dsn, *args, env=env).start()
    paused = ServerProcess(pg_dsn, *args, env=env).start()
    try:
        async with RuntimeGroup() as group:
            await group.start(
                Runtime(namespace=namespace, name="rt", nodes=[Count, Slowish, Collect], address=paused.address)
            )
            Slowish.executions = 0
            async with StateManager(namespace, address=paused.address) as sm:
                await sm.upsert_graph("fan", fan_graph(namespace, 200))
                run_id = (await sm.trigger("fan")).run_id  # in a shard of the replica about to be paused
                await assert_eventually(lambda: Slowish.executions > 0, timeout=20)
            assert paused.proc is not None
            os.kill(paused.proc.pid, signal.SIGSTOP)
            try:
                async with StateManager(namespace, address=other.address) as sm:
                    done = await sm.wait(run_id, timeout=60)  # the other takes the shard once the lease expires
            finally:
                os.kill(paused.proc.pid, signal.SIGCONT)
            # Awake again, the paused replica finds its lease gone: it drops the shard, and whatever it still held
            # for the run (results its runtime sent meanwhile) is refused by the fence, not written.
            await assert_eventually(lambda: "shards lost" in paused.output or "commit fenced" in paused.output)
            async with StateManager(namespace, address=other.address) as sm:
                after = await sm.get_run(run_id)
        assert done.status is RunStatus.SUCCESS
        [merge] = [s for s in done.states if s.identifier == "merge"]
        assert merge.outputs == [{"count": "200"}]
        assert after.status is RunStatus.SUCCESS and len(after.states) == len(done.states) == 202
        assert [(s.state_id, s.status, s.outputs) for s in after.states] == [
            (s.state_id, s.status, s.outputs) for s in done.states
        ]  # nothing the paused replica did after waking reached the database
        assert "Traceback" not in paused.output
    finally:
        for proc in (paused, other):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()


async def test_cancel_and_retry_reach_the_runs_owner_from_any_replica(
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
    namespace: str,
) -> None:
    async with two_replicas(pg_dsn, tmp_path) as (a, b), RuntimeGroup() as group:
        await group.start(
            Runtime(namespace=namespace, name="rt", nodes=[Sleeper, Flaky], address=f"127.0.0.1:{a.port}")
        )
        await assert_eventually(lambda: len(b.engine.runtimes.connected(namespace)) == 1, timeout=10)
        key = uuid.uuid4().hex
        async with (
            StateManager(namespace, address=f"127.0.0.1:{a.port}") as sm_a,
            StateManager(namespace, address=f"127.0.0.1:{b.port}") as sm_b,
        ):
            node = GraphNodeModel(node_name="Sleeper", namespace=namespace, identifier="s", inputs={"key": key})
            await sm_b.upsert_graph("sleepy", [node])
            held = (await sm_b.trigger("sleepy")).run_id  # owned by b
            await assert_eventually(lambda: key in Sleeper.started, timeout=10)
            assert not a.engine.is_live(held)
            cancelled = await sm_a.cancel_run(held)  # asked of a, done by b
            assert cancelled.status is RunStatus.CANCELLED

            flaky = GraphNodeModel(
                node_name="Flaky", namespace=namespace, identifier="f", inputs={"key": key, "fails": "1"}
            )
            await sm_b.upsert_graph("flaky", [flaky], retry_policy=RetryPolicyModel(max_retries=0))
            failed = await sm_b.wait((await sm_b.trigger("flaky")).run_id, timeout=20)
            assert failed.status is RunStatus.FAILED
            new_state = await sm_a.retry_state(failed.states[0].state_id, request_id="r1")  # forwarded to b
            assert new_state.startswith(failed.run_id)
            assert (await sm_a.wait(failed.run_id, timeout=20)).status is RunStatus.SUCCESS


async def test_a_rolling_restart_of_three_replicas_under_load_loses_no_run(
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
    namespace: str,
) -> None:
    env = {"EXOSPHERE_SECRETS_KEY_FILE": str(tmp_path / "secrets.key")}
    args = ("--shards", str(SHARDS), "--shard-lease", "PT2S", "--log-level", "WARNING")
    replicas = [ServerProcess(pg_dsn, *args, env=env).start() for _ in range(3)]
    addresses = [r.address for r in replicas]
    acknowledged: list[str] = []
    try:
        async with RuntimeGroup() as group:
            for address in addresses[:2]:
                await group.start(Runtime(namespace=namespace, name="rt", nodes=[Slowish], address=address))
            async with StateManager(namespace, address=addresses[0]) as sm:
                graph = [GraphNodeModel(node_name="Slowish", namespace=namespace, identifier="s", inputs={"item": "x"})]
                await sm.upsert_graph("one", graph)

            async def client(index: int, count: int) -> None:
                managers = [StateManager(namespace, address=a) for a in addresses]
                try:
                    sent = 0
                    while sent < count:
                        sm = managers[(index + sent) % len(managers)]
                        try:
                            acknowledged.append((await sm.trigger("one")).run_id)
                            sent += 1
                        except ConnectionFailedError:  # that replica is restarting: another one takes it
                            await asyncio.sleep(0.05)
                finally:
                    for sm in managers:
                        await sm.close()

            async def restart_each() -> None:
                for i, proc in enumerate(replicas):
                    await asyncio.sleep(1.0)
                    assert await asyncio.to_thread(proc.stop) == 0  # SIGTERM: its shards move at once
                    port = int(addresses[i].rpartition(":")[2])
                    replicas[i] = await asyncio.to_thread(ServerProcess(pg_dsn, *args, port=port, env=env).start)

            await asyncio.gather(*(client(i, 250) for i in range(4)), restart_each())
            assert len(acknowledged) == 1_000
            async with StateManager(namespace, address=addresses[2]) as sm:
                for run_id in acknowledged:
                    assert (await sm.wait(run_id, timeout=60)).status is RunStatus.SUCCESS, run_id
    finally:
        for proc in replicas:
            if proc.proc is not None and proc.proc.poll() is None:
                proc.stop()


async def test_a_replica_with_another_secrets_key_refuses_to_join(pg_dsn: str, tmp_path: Path) -> None:  # noqa: F811
    async with serving(replica_config(pg_dsn, tmp_path)):
        other = replica_config(pg_dsn, tmp_path / "elsewhere")
        (tmp_path / "elsewhere").mkdir()
        with pytest.raises(InvalidArgumentError, match="not the key of the cluster"):
            App(other)


class Gated(BaseNode):
    """Echoes ``text`` once ``gate`` opens; counts the executions started."""

    gate: ClassVar[asyncio.Event | None] = None
    started: ClassVar[int] = 0

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        Gated.started += 1
        assert Gated.gate is not None
        await Gated.gate.wait()
        return self.Outputs(text=self.inputs.text)


async def test_a_stopping_replica_drains_its_runtimes_before_handing_its_shards_over(
    pg_dsn: str,  # noqa: F811
    tmp_path: Path,
    namespace: str,
) -> None:
    Gated.gate, Gated.started = asyncio.Event(), 0
    async with two_replicas(pg_dsn, tmp_path) as (a, b), RuntimeGroup() as group:
        await group.start(Runtime(namespace=namespace, name="rt", nodes=[Gated], address=a.address, max_concurrency=8))
        await assert_eventually(lambda: len(b.engine.runtimes.connected(namespace)) == 1, timeout=10)
        graph = [GraphNodeModel(node_name="Gated", namespace=namespace, identifier="g", inputs={"text": "x"})]
        async with StateManager(namespace, address=b.address) as sm_b:
            await sm_b.upsert_graph("g", graph)
            runs = [(await sm_b.trigger("g")).run_id for _ in range(3)]  # in b's shards, held on the stream to b
        await assert_eventually(lambda: Gated.started == 3)
        (session,) = b.engine.runtimes.connected(namespace)
        stopping = asyncio.create_task(b.stop(grace=10))
        await assert_eventually(lambda: session.drain_sent, message="Drain sent on the stream to b")
        assert b.engine.shards.owned and not stopping.done()  # its shards wait for the drain
        Gated.gate.set()
        await asyncio.wait_for(stopping, 10)
        assert a.cluster is not None
        await a.cluster.tick()
        async with StateManager(namespace, address=a.address) as sm_a:
            for run_id in runs:
                run = await sm_a.wait(run_id, timeout=20)
                assert run.status is RunStatus.SUCCESS and [s.attempt for s in run.states] == [1]
        assert Gated.started == 3  # their results were committed by b within the grace: none ran again on a
