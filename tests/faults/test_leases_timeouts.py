"""Leases, late results, timeouts and backpressure, with real processes.

The scheduler is the real binary (ServerProcess), except where a test reads the engine's ``ignored_results``
counter: there it runs in this process (the same App the binary runs) while the runtimes stay child processes,
so they can be SIGSTOPped or block their own event loop without blocking the scheduler.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from datetime import timedelta

import pytest

from exosphere import (
    ExosphereTimeoutError,
    RunStatus,
    Runtime,
    StateManager,
    StateModel,
    StateStatus,
)
from tests.faults.fault_nodes import Concurrent, LongTimeout, NoTimeout, SlowWithTimeout, Spread
from tests.helpers.cluster import Cluster
from tests.helpers.graphs import attempts_of, gnode
from tests.helpers.runtimes import running
from tests.helpers.waiting import assert_eventually

pytestmark = pytest.mark.slow

SHORT_LEASE = ("--lease", "PT2S", "--heartbeat-interval", "PT0.5S")


def ms_between(a: StateModel) -> float:
    """Milliseconds from when a state could first run (run_at, else created_at) to its last update."""
    start = a.run_at or a.created_at
    assert start is not None and a.updated_at is not None
    return (a.updated_at - start).total_seconds() * 1000


# ---------------------------------------------------------------------------------------------------- leases


@pytest.mark.timeout(30)
async def test_runtime_with_its_event_loop_blocked_past_the_lease_keeps_the_lease_and_runs_the_state_once(
    cluster: Cluster, namespace: str
) -> None:
    """Required behaviour: heartbeats must not depend on the runtime's event loop (a node may block it)."""
    await cluster.start_server(*SHORT_LEASE)
    runtime = cluster.start_runtime("blocky", ["Blocker"], max_concurrency=4)
    await cluster.wait_registered(runtime)

    async with StateManager(namespace, address=cluster.address) as sm:
        graph = [gnode(namespace, "Blocker", "block", {"key": "b", "seconds": "4"})]
        await sm.upsert_graph("blocky", graph, retry_policy={"max_retries": 0})
        run_id = (await sm.trigger("blocky")).run_id
        try:
            result = await sm.wait(run_id, timeout=14)
        except ExosphereTimeoutError:
            result = await sm.get_run(run_id)

    log = cluster.log()
    assert cluster.server is not None
    expired = re.findall(r"runtime gone .*reason=(lease expired[^=]*) requeued=(\d+)", cluster.server.output)
    observed = (
        f"run={result.status} states={[(s.status.value, s.attempt) for s in result.states]} "
        f"executions={log.count('start', 'b')} finished={log.count('end', 'b')} "
        f"registrations={runtime.registrations()} lease_expiries={expired}"
    )
    print(f"\nOBSERVED blocked event loop (4 s block, 2 s lease): {observed}")
    assert expired == [], observed
    assert log.count("start", "b") == 1, observed
    assert result.status is RunStatus.SUCCESS, observed
    (state,) = result.states
    assert (state.status, state.attempt) == (StateStatus.SUCCESS, 1)


@pytest.mark.timeout(30)
async def test_late_result_of_a_sigstopped_runtime_after_its_lease_expired_is_ignored(
    cluster: Cluster, namespace: str
) -> None:
    settings = {"lease": timedelta(seconds=2), "heartbeat_interval": timedelta(milliseconds=500)}
    async with cluster.in_process_scheduler(**settings) as app:
        async with StateManager(namespace, address=cluster.address) as sm:
            run_id, a, b = await cluster.sleeper_on_one_of_two(sm, seconds=1.5)

            stopped_at = time.monotonic()
            a.signal(signal.SIGSTOP)
            try:
                # A is frozen past its lease: its state goes back to the queue and B runs it.
                await assert_eventually(lambda: b.pid in cluster.log().pids("start", "k"), timeout=10)
                redispatched_s = time.monotonic() - stopped_at
                first = await sm.wait(run_id, timeout=10)
            finally:
                a.signal(signal.SIGCONT)
            # A wakes up, finishes (or is cancelled) and comes back with a new session.
            await assert_eventually(
                lambda: a.pid in cluster.log().pids("end", "k") + cluster.log().pids("cancel", "k"), timeout=10
            )
            await cluster.wait_registered(a, times=2, timeout=15)
            again = await sm.get_run(run_id)
            ignored = app.engine.ignored_results

    assert first.status is RunStatus.SUCCESS
    assert again.status is RunStatus.SUCCESS
    assert [(s.status, s.attempt, s.outputs) for s in again.states] == [(StateStatus.SUCCESS, 1, [{"key": "k"}])]
    assert again.states[0].updated_at == first.states[0].updated_at  # not applied a second time
    log = cluster.log()
    assert log.pids("start", "k") == [a.pid, b.pid]
    assert b.pid in log.pids("end", "k")
    assert ignored <= 1
    print(
        f"\nOBSERVED SIGSTOP past lease: re-dispatched to the other runtime {redispatched_s:.2f}s after SIGSTOP; "
        f"A after SIGCONT: end={log.pids('end', 'k').count(a.pid)} cancel={log.pids('cancel', 'k').count(a.pid)}; "
        f"engine.ignored_results={ignored} (A's old stream was closed with its session)"
    )


@pytest.mark.timeout(30)
async def test_result_arriving_after_its_state_timed_out_and_was_retried_is_ignored_exactly_once(
    cluster: Cluster, namespace: str
) -> None:
    async with cluster.in_process_scheduler() as app:
        runtime = cluster.start_runtime("blocky", ["BlockOnce"], max_concurrency=1)
        await cluster.wait_registered(runtime)
        async with StateManager(namespace, address=cluster.address) as sm:
            # The first execution blocks its runtime's loop past the 500 ms timeout, so it cannot be cancelled and
            # its result reaches the scheduler on the live stream after the state was TIMEDOUT and retried.
            graph = [gnode(namespace, "BlockOnce", "block", {"key": "late", "seconds": "1.5"}, timeout_ms=500)]
            await sm.upsert_graph(
                "late", graph, retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 0}
            )
            run_id = (await sm.trigger("late")).run_id
            result = await sm.wait(run_id, timeout=15)
            await assert_eventually(lambda: app.engine.ignored_results >= 1, timeout=5)
            again = await sm.get_run(run_id)
        ignored = app.engine.ignored_results

    assert result.status is RunStatus.SUCCESS, result.states
    assert [(s.status, s.attempt) for s in again.states] == [(StateStatus.TIMEDOUT, 1), (StateStatus.SUCCESS, 2)]
    assert again.states[0].error is not None and "timeout of 500 ms" in again.states[0].error["message"]
    assert again.states[1].outputs == [{"key": "late"}]
    assert ignored == 1
    assert cluster.log().count("start", "late") == 2 and cluster.log().count("end", "late") == 2
    print(f"\nOBSERVED late result after timeout: engine.ignored_results={ignored}")


# ---------------------------------------------------------------------------------------------------- timeouts


@pytest.mark.timeout(30)
async def test_node_class_timeout_times_out_cancels_on_the_runtime_and_retries_per_policy(
    cluster: Cluster, namespace: str
) -> None:
    await cluster.start_server("--default-timeout", "PT1S")
    key = uuid.uuid4().hex
    async with running(Runtime(namespace, "inproc", [SlowWithTimeout], address=cluster.address)):
        async with StateManager(namespace, address=cluster.address) as sm:
            graph = [gnode(namespace, "SlowWithTimeout", "slow", {"key": key, "seconds": "5"})]
            await sm.upsert_graph(
                "slow", graph, retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50}
            )
            run_id = (await sm.trigger("slow")).run_id
            result = await sm.wait(run_id, timeout=10)
            await assert_eventually(lambda: SlowWithTimeout.cancels.get(key) == 2, timeout=5)

    assert result.status is RunStatus.FAILED
    states = attempts_of(result, "slow")
    assert [(s.status, s.attempt) for s in states] == [(StateStatus.TIMEDOUT, 1), (StateStatus.TIMEDOUT, 2)]
    for state in states:
        assert state.error is not None
        assert state.error["type"] == "TimeoutError"
        assert "timeout of 500 ms" in state.error["message"]
        assert 400 <= ms_between(state) < 1500, ms_between(state)
    assert SlowWithTimeout.starts[key] == 2
    assert SlowWithTimeout.ends.get(key, 0) == 0


@pytest.mark.timeout(30)
async def test_graph_node_timeout_ms_overrides_the_node_class_timeout_both_ways(
    cluster: Cluster, namespace: str
) -> None:
    await cluster.start_server("--default-timeout", "PT1S")
    key = uuid.uuid4().hex
    async with running(Runtime(namespace, "inproc", [LongTimeout, SlowWithTimeout], address=cluster.address)):
        async with StateManager(namespace, address=cluster.address) as sm:
            # Class says 20 s, graph says 300 ms: times out after 300 ms.
            shorter = [gnode(namespace, "LongTimeout", "n", {"key": key, "seconds": "3"}, timeout_ms=300)]
            await sm.upsert_graph("shorter", shorter, retry_policy={"max_retries": 0})
            # Class says 500 ms, graph says 5 s: a 1.2 s execution succeeds.
            longer = [gnode(namespace, "SlowWithTimeout", "n", {"key": key, "seconds": "1.2"}, timeout_ms=5000)]
            await sm.upsert_graph("longer", longer, retry_policy={"max_retries": 0})
            runs = await asyncio.gather(sm.trigger("shorter"), sm.trigger("longer"))
            short_run, long_run = await asyncio.gather(*(sm.wait(r.run_id, timeout=10) for r in runs))
            await assert_eventually(lambda: LongTimeout.cancels.get(key) == 1, timeout=5)

    assert short_run.status is RunStatus.FAILED
    (timed_out,) = short_run.states
    assert timed_out.status is StateStatus.TIMEDOUT
    assert timed_out.error is not None and "timeout of 300 ms" in timed_out.error["message"]
    assert ms_between(timed_out) < 1000
    assert long_run.status is RunStatus.SUCCESS
    assert long_run.states[0].outputs == [{"key": key}]
    assert SlowWithTimeout.ends.get(key) == 1 and SlowWithTimeout.cancels.get(key, 0) == 0


@pytest.mark.timeout(30)
async def test_scheduler_default_timeout_applies_when_neither_node_nor_graph_sets_one(
    cluster: Cluster, namespace: str
) -> None:
    await cluster.start_server("--default-timeout", "PT1S")
    key = uuid.uuid4().hex
    async with running(Runtime(namespace, "inproc", [NoTimeout], address=cluster.address)):
        async with StateManager(namespace, address=cluster.address) as sm:
            graph = [gnode(namespace, "NoTimeout", "n", {"key": key, "seconds": "4"})]
            await sm.upsert_graph("default", graph, retry_policy={"max_retries": 0})
            result = await sm.wait((await sm.trigger("default")).run_id, timeout=10)
            await assert_eventually(lambda: NoTimeout.cancels.get(key) == 1, timeout=5)

    assert result.status is RunStatus.FAILED
    (state,) = result.states
    assert state.status is StateStatus.TIMEDOUT
    assert state.error is not None and "timeout of 1000 ms" in state.error["message"]
    assert 900 <= ms_between(state) < 2500, ms_between(state)
    assert NoTimeout.ends.get(key, 0) == 0


@pytest.mark.timeout(30)
async def test_timed_out_state_gives_its_runtime_slot_back(cluster: Cluster, namespace: str) -> None:
    """With max_concurrency=1, the retry of a timed-out (and cancelled) state must still be dispatched."""
    await cluster.start_server()
    key = uuid.uuid4().hex
    async with running(Runtime(namespace, "inproc", [SlowWithTimeout], address=cluster.address, max_concurrency=1)):
        async with StateManager(namespace, address=cluster.address) as sm:
            graph = [gnode(namespace, "SlowWithTimeout", "slow", {"key": key, "seconds": "5"})]
            await sm.upsert_graph(
                "slot", graph, retry_policy={"max_retries": 1, "strategy": "FIXED", "backoff_factor": 50}
            )
            run_id = (await sm.trigger("slot")).run_id
            try:
                result = await sm.wait(run_id, timeout=8)
            except ExosphereTimeoutError:
                result = await sm.get_run(run_id)

    observed = f"run={result.status} states={[(s.status.value, s.attempt) for s in attempts_of(result, 'slow')]}"
    print(f"\nOBSERVED timeout with max_concurrency=1: {observed} starts={SlowWithTimeout.starts.get(key)}")
    assert result.status is RunStatus.FAILED, observed
    assert [(s.status, s.attempt) for s in attempts_of(result, "slow")] == [
        (StateStatus.TIMEDOUT, 1),
        (StateStatus.TIMEDOUT, 2),
    ], observed


# ---------------------------------------------------------------------------------------------------- backpressure


@pytest.mark.timeout(30)
async def test_runtime_never_holds_more_than_its_max_concurrency(cluster: Cluster, namespace: str) -> None:
    await cluster.start_server()
    Concurrent.running = Concurrent.peak = Concurrent.executed = 0
    async with running(
        Runtime(namespace, "inproc", [Spread, Concurrent], address=cluster.address, max_concurrency=4)
    ) as runtime:
        async with StateManager(namespace, address=cluster.address) as sm:
            await sm.upsert_graph(
                "wide",
                [
                    gnode(namespace, "Spread", "spread", {"n": "200"}, next_nodes=["conc"]),
                    gnode(namespace, "Concurrent", "conc", {"item": "${{ spread.outputs.item }}"}),
                ],
                retry_policy={"max_retries": 0},
            )
            result = await sm.wait((await sm.trigger("wide")).run_id, timeout=20)
        in_flight_peak = Concurrent.peak
        executed = runtime.executed_count

    print(f"\nOBSERVED backpressure: max_concurrency=4 peak_concurrent_executions={in_flight_peak} of 200")
    assert result.status is RunStatus.SUCCESS
    assert result.state_counts == {"SUCCESS": 201}
    assert Concurrent.executed == 200 and executed == 201
    assert 1 <= in_flight_peak <= 4


@pytest.mark.timeout(30)
async def test_cancelled_run_gives_its_runtime_slot_back(cluster: Cluster, namespace: str) -> None:
    """With max_concurrency=1, cancelling the run that holds the only slot must let the next run execute."""
    await cluster.start_server()
    key, after = uuid.uuid4().hex, uuid.uuid4().hex
    async with running(Runtime(namespace, "inproc", [NoTimeout], address=cluster.address, max_concurrency=1)):
        async with StateManager(namespace, address=cluster.address) as sm:
            graph = [gnode(namespace, "NoTimeout", "n", {"key": "${{ store.key }}", "seconds": "${{ store.s }}"})]
            await sm.upsert_graph("cancel", graph, store_config={"required_keys": ["key", "s"]})
            first = (await sm.trigger("cancel", store={"key": key, "s": "10"})).run_id
            await assert_eventually(lambda: NoTimeout.starts.get(key) == 1, timeout=10)
            cancelled = await sm.cancel_run(first)
            await assert_eventually(lambda: NoTimeout.cancels.get(key) == 1, timeout=5)
            second = (await sm.trigger("cancel", store={"key": after, "s": "0"})).run_id
            try:
                result = await sm.wait(second, timeout=5)
            except ExosphereTimeoutError:
                result = await sm.get_run(second)

    observed = f"second run={result.status} states={[s.status.value for s in result.states]}"
    print(f"\nOBSERVED after cancelling the run holding the only slot: {observed}")
    assert cancelled.status is RunStatus.CANCELLED
    assert result.status is RunStatus.SUCCESS, observed
