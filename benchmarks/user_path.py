"""The user's own path and reading a run back, beside the floor of the wire, measured in the same run.

- ``user_path``: a one-node graph as a user writes it, ``run = await sm.trigger(...)`` then ``await sm.wait(run_id)``,
  and ``await sm.trigger_and_wait(...)`` (with its states, the default), interleaved sample by sample with the floor:
  two bare gRPC round trips to the scheduler (client <-> scheduler, scheduler <-> runtime are the two hops any
  trigger-to-done needs). Interleaving keeps the machine's noise out of the differences.
- ``read_run``: a finished 1 -> 10,000 -> 1 run read back whole through ``get_run`` (its first read, from the
  database, then again) and through ``wait``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.harness import NAMESPACE, Cluster
from exosphere import RunStatus, StateManager

__all__ = ["ReadFigures", "UserPathFigures", "read_run", "user_path"]


@dataclass(frozen=True)
class UserPathFigures:
    """p50 and p99 in ms of each way, sampled in turn."""

    floor_p50: float
    floor_p99: float
    trigger_wait_p50: float
    trigger_wait_p99: float
    trigger_and_wait_p50: float
    trigger_and_wait_p99: float


@dataclass(frozen=True)
class ReadFigures:
    """States per second of reading a finished run whole: its first read (from the database), and later ones."""

    states: int
    first_get_run_per_s: float
    get_run_per_s: float
    wait_per_s: float


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(len(samples) * 0.99))]


async def user_path(c: Cluster, count: int) -> UserPathFigures:
    """``count`` samples of each: the floor, trigger() then wait(), and trigger_and_wait(), one of each in turn."""
    async with StateManager(NAMESPACE, address=c.address) as sm, grpc.aio.insecure_channel(c.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()

        async def floor() -> float:
            started = time.perf_counter()
            await health.Check(request, timeout=5)
            await health.Check(request, timeout=5)
            return time.perf_counter() - started

        async def trigger_wait() -> float:
            started = time.perf_counter()
            run = await sm.trigger("one")
            done = await sm.wait(run.run_id)
            seconds = time.perf_counter() - started
            if done.status is not RunStatus.SUCCESS or len(done.states) != 1:
                raise RuntimeError(f"benchmark run {run.run_id} ended {done.status} with {len(done.states)} states")
            return seconds

        async def trigger_and_wait() -> float:
            started = time.perf_counter()
            done = await sm.trigger_and_wait("one")
            seconds = time.perf_counter() - started
            if done.status is not RunStatus.SUCCESS or len(done.states) != 1:
                raise RuntimeError(f"benchmark run {done.run_id} ended {done.status} with {len(done.states)} states")
            return seconds

        ways = (floor, trigger_wait, trigger_and_wait)
        for _ in range(50):  # warm up the channels and all three processes
            for way in ways:
                await way()
        samples: list[list[float]] = [[], [], []]
        for _ in range(count):
            for way, into in zip(ways, samples, strict=True):
                into.append(await way() * 1000)
    (f50, f99), (tw50, tw99), (taw50, taw99) = (_p50_p99(s) for s in samples)
    return UserPathFigures(f50, f99, tw50, tw99, taw50, taw99)


async def read_run(c: Cluster, n: int, reads: int = 3) -> ReadFigures:
    """``reads`` times: run 1 -> ``n`` -> 1 to its end (its outcome only), then read it back whole with get_run
    (the first read), get_run again and wait; the best of each."""
    best = [float("inf")] * 3
    states = 0
    async with StateManager(NAMESPACE, address=c.address) as sm:
        for _ in range(reads):
            done = await sm.trigger_and_wait("fanout", inputs={"n": str(n)}, states=False, timeout=600)
            if done.status is not RunStatus.SUCCESS:
                raise RuntimeError(f"benchmark run {done.run_id} ended {done.status}")
            for i, read in enumerate((sm.get_run, sm.get_run, sm.wait)):
                started = time.perf_counter()
                run = await read(done.run_id)
                best[i] = min(best[i], time.perf_counter() - started)
                states = len(run.states)
                if states != n + 2:
                    raise RuntimeError(f"read {states} states of a run of {n + 2}")
    return ReadFigures(states, *(states / seconds for seconds in best))
