"""Cluster mode: several schedulers on one PostgreSQL database share the shards and take over each other's runs."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path
from typing import ClassVar

import pytest
from pydantic import BaseModel

from exosphere import BaseNode, GraphNodeModel, RunStatus, Runtime, StateManager
from server.cluster import rendezvous_owner
from server.config import ServerConfig
from tests.engine_nodes import Sleeper
from tests.helpers.pg import pg_dsn  # noqa: F401 - the fixture
from tests.helpers.runtimes import RuntimeGroup
from tests.helpers.servers import ServerProcess, serving
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo

pytestmark = pytest.mark.slow

SHARDS = 16


def replica_config(dsn: str, tmp_path: Path) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        db=dsn,
        secrets_key_file=str(tmp_path / "secrets.key"),
        shards=SHARDS,
        shard_lease=timedelta(seconds=2),
    )


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
    config = replica_config(pg_dsn, tmp_path)
    async with serving(config) as a, serving(config) as b, RuntimeGroup() as group:
        assert a.cluster is not None and b.cluster is not None
        await b.cluster.tick()
        await a.cluster.tick()
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
    config = replica_config(pg_dsn, tmp_path)
    async with serving(config) as a, serving(config) as b, RuntimeGroup() as group:
        assert a.cluster is not None and b.cluster is not None
        await b.cluster.tick()
        await a.cluster.tick()
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
