"""Processes and workloads of `make bench`: a real exosphere-server, real runtime processes, a client here."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from exosphere import GraphNodeModel, RunStatus, StateManager, UnitesModel

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
# Outputs of each second-stage fan-out in fanout_staged.
STAGE = 1000


@dataclass
class Cluster:
    address: str
    server: subprocess.Popen[str]
    runtimes: list[subprocess.Popen[bytes]]

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) used so far by the scheduler and by all runtimes."""
        return _cpu(self.server.pid), sum(_cpu(p.pid) for p in self.runtimes)

    def server_peak_rss_mb(self) -> float:
        """The scheduler's peak resident memory so far (MiB)."""
        return _status_mb(self.server.pid, "VmHWM:")

    def server_rss_mb(self) -> float:
        """The scheduler's resident memory now (MiB)."""
        return _status_mb(self.server.pid, "VmRSS:")


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _postgres(admin_dsn: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def _database(postgres: str | None) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A fresh database: a SQLite file, or (``postgres``: a server's DSN) a PostgreSQL database made for it."""
    if postgres is None:
        with tempfile.TemporaryDirectory(prefix="exo-bench-") as tmp:
            yield f"{tmp}/bench.db", {}
        return
    name = f"exo_bench_{uuid.uuid4().hex[:12]}"
    await _postgres(postgres, f'CREATE DATABASE "{name}"')
    try:
        key = base64.b64encode(os.urandom(32)).decode()
        yield urlunsplit(urlsplit(postgres)._replace(path=f"/{name}")), {"EXOSPHERE_SECRETS_KEY": key}
    finally:
        await _postgres(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def cluster(
    runtimes: int = 1,
    max_concurrency: int = 1024,
    postgres: str | None = None,
    server_module: Sequence[str] = ("exosphere_server",),
) -> AsyncIterator[Cluster]:
    """A scheduler on a fresh database (SQLite, or PostgreSQL on the server ``postgres`` names) and ``runtimes``
    runtime processes, all registered. ``server_module``: the module (and its first arguments) that runs the
    scheduler, given the scheduler's own arguments after them."""
    async with _database(postgres) as (db, server_env):
        server = subprocess.Popen(
            [sys.executable, "-m", *server_module, "--port", "0", "--db", db, "--log-level", "WARNING"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **server_env},
        )
        assert server.stdout is not None
        address = ""
        for line in server.stdout:
            m = re.search(r"listening on ([\d.]+:\d+)", line)
            if m:
                address = m.group(1)
                break
        if not address:
            raise RuntimeError("exosphere-server did not start")
        env = {**os.environ, "EXOSPHERE_SCHEDULER_ADDRESS": address, "EXOSPHERE_LOG_LEVEL": "WARNING"}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.runtime_main", NAMESPACE, str(max_concurrency)], env=env, cwd=ROOT
            )
            for _ in range(runtimes)
        ]
        try:
            async with StateManager(NAMESPACE, address=address) as sm:
                deadline = time.monotonic() + 60
                while len(await sm.list_nodes()) < 3 or not await _runtimes_up(sm, runtimes):
                    if time.monotonic() > deadline:
                        raise RuntimeError("benchmark runtimes did not register")
                    await asyncio.sleep(0.05)
                await _graphs(sm)
            yield Cluster(address, server, procs)
        finally:
            for proc in procs:
                _stop(proc)
            _stop(server)


async def _runtimes_up(sm: StateManager, count: int) -> bool:
    from exosphere.v1 import scheduler_pb2

    response = await sm._api().ListRuntimes(scheduler_pb2.ListRuntimesRequest(namespace=NAMESPACE), timeout=5)
    return len(response.runtimes) >= count


def _node(name: str, ident: str, inputs: dict[str, str], nxt: list[str] | None = None) -> GraphNodeModel:
    return GraphNodeModel(node_name=name, namespace=NAMESPACE, identifier=ident, inputs=inputs, next_nodes=nxt or [])


async def _graphs(sm: StateManager) -> None:
    await sm.upsert_graph(
        "fanout",
        [
            _node("FanOut", "root", {"n": "10"}, ["work"]),
            _node("Noop", "work", {"item": "${{ root.outputs.item }}"}, ["merge"]),
            GraphNodeModel(
                node_name="Merge",
                namespace=NAMESPACE,
                identifier="merge",
                inputs={"items": "${{ work.outputs.item }}"},
                unites=UnitesModel(identifier="root"),
            ),
        ],
    )
    # A result carries at most LIMIT_MAX_OUTPUTS_PER_RESULT (10,000) outputs: wider fan-outs go in two stages.
    await sm.upsert_graph(
        "fanout_staged",
        [
            _node("FanOut", "root", {"n": "10"}, ["mid"]),
            _node("FanOut", "mid", {"n": str(STAGE)}, ["work"]),
            _node("Noop", "work", {"item": "${{ mid.outputs.item }}"}, ["merge"]),
            GraphNodeModel(
                node_name="Merge",
                namespace=NAMESPACE,
                identifier="merge",
                inputs={"items": "${{ work.outputs.item }}"},
                unites=UnitesModel(identifier="root"),
            ),
        ],
    )
    await sm.upsert_graph("one", [_node("Noop", "only", {"item": "x"})])
    chain = [
        _node("Noop", f"n{i}", {"item": "x" if i == 0 else f"${{{{ n{i - 1}.outputs.item }}}}"}, [f"n{i + 1}"])
        for i in range(100)
    ]
    chain[-1].next_nodes = []
    await sm.upsert_graph("chain100", chain)
    await sm.upsert_graph(
        "chain3",
        [
            _node("Noop", "a", {"item": "x"}, ["b"]),
            _node("Noop", "b", {"item": "${{ a.outputs.item }}"}, ["c"]),
            _node("Noop", "c", {"item": "${{ b.outputs.item }}"}),
        ],
    )


async def _finish(sm: StateManager, graph: str, inputs: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    run = await sm.trigger(graph, inputs=inputs)
    async for event, _ in sm.watch(run.run_id, states=False):
        if event.status is not RunStatus.PENDING:
            if event.status is not RunStatus.SUCCESS:
                raise RuntimeError(f"benchmark run {run.run_id} ended {event.status}")
            break
    return time.perf_counter() - started


async def fanout(c: Cluster, n: int) -> float:
    """States per second of 1 -> n -> 1 with an aggregating merge."""
    return (await fanout_profile(c, n))[0]


async def fanout_staged(c: Cluster, n: int) -> int:
    """1 -> n / STAGE -> n -> 1 (n a multiple of STAGE); returns how many states the run had."""
    async with StateManager(NAMESPACE, address=c.address) as sm:
        await _finish(sm, "fanout_staged", {"n": str(n // STAGE)})
    return 1 + n // STAGE + n + 1


async def fanout_profile(c: Cluster, n: int) -> tuple[float, float, float]:
    """States per second of 1 -> n -> 1, and CPU microseconds per state in the scheduler and in the runtimes."""
    async with StateManager(NAMESPACE, address=c.address) as sm:
        server_before, runtime_before = c.cpu_seconds()
        seconds = await _finish(sm, "fanout", {"n": str(n)})
        server_after, runtime_after = c.cpu_seconds()
    states = n + 2
    return (
        states / seconds,
        (server_after - server_before) / states * 1e6,
        (runtime_after - runtime_before) / states * 1e6,
    )


async def _trigger_and_wait(sm: StateManager, graph: str) -> float:
    started = time.perf_counter()
    run = await sm.trigger_and_wait(graph, states=False)
    if run.status is not RunStatus.SUCCESS:
        raise RuntimeError(f"benchmark run {run.run_id} ended {run.status}")
    return time.perf_counter() - started


async def latency(c: Cluster, count: int, *, one_call: bool = True) -> tuple[float, float]:
    """p50 and p99 in ms of trigger -> completion seen by the client, ``count`` sequential runs.

    ``one_call``: StateManager.trigger_and_wait (one round trip); otherwise trigger() then a watch.
    """
    measure = _trigger_and_wait if one_call else _finish
    async with StateManager(NAMESPACE, address=c.address) as sm:
        for _ in range(20):  # warm up the channel and both processes
            await measure(sm, "one")
        samples = [await measure(sm, "one") * 1000 for _ in range(count)]
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def chain(c: Cluster) -> float:
    """Milliseconds per hop of a 100-node chain."""
    async with StateManager(NAMESPACE, address=c.address) as sm:
        await _finish(sm, "chain100")
        return await _finish(sm, "chain100") * 1000 / 100


async def runs(c: Cluster, total: int, clients: int = 4, in_flight: int = 32, batch: int = 1) -> float:
    """Runs per second: ``total`` 3-node chains triggered by ``clients`` concurrent clients, until all finish.

    With ``batch`` > 1 each call is a TriggerGraphs of that many runs.
    """
    per_client = total // clients

    async def client() -> None:
        async with StateManager(NAMESPACE, address=c.address) as sm:
            queue = iter(range(0, per_client, batch))

            async def worker() -> None:
                for _ in queue:
                    if batch == 1:
                        await sm.trigger("chain3")
                    else:
                        await sm.trigger_many("chain3", [{}] * batch)

            await asyncio.gather(*(worker() for _ in range(in_flight)))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    async with StateManager(NAMESPACE, address=c.address) as sm:
        while (await sm.list_runs("chain3", page_size=1, status=RunStatus.PENDING))[0]:
            await asyncio.sleep(0.01)
        seconds = time.perf_counter() - started
        failed, _ = await sm.list_runs("chain3", page_size=1, status=RunStatus.FAILED)
        if failed:
            raise RuntimeError("a benchmark run failed")
    return per_client * clients / seconds


async def transport_rtt(c: Cluster, count: int = 1000) -> float:
    """p50 in ms of a bare gRPC health check to the scheduler: the floor of one round trip on this machine.

    Trigger-to-done needs two (client <-> scheduler, scheduler <-> runtime)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(c.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        for _ in range(100):
            await stub.Check(request, timeout=5)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            await stub.Check(request, timeout=5)
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def machine_noise(rounds: int = 7) -> tuple[float, float, float]:
    """Spread of a fixed CPU-bound loop: (median ms, min ms, max ms)."""
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), min(samples), max(samples)
