"""Crashes and graceful stops of real processes: the scheduler binary and runtime children, killed or signalled.

The test process is the client (StateManager). Runtimes are ``tests/faults/fault_runtime.py`` children whose nodes
log every execution to a shared file, so re-executions (at-least-once) can be counted exactly.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from exosphere import GraphNodeModel, RunModel, RunStatus, StateManager, StateStatus
from tests.helpers.cluster import Cluster
from tests.helpers.graphs import gnode, states_of
from tests.helpers.waiting import assert_eventually

pytestmark = pytest.mark.slow

FAN_NODES = ["Spread", "Record", "Tally"]


def fan_graph(namespace: str, n: int, delay: float) -> list[GraphNodeModel]:
    """spread(n) -> record(item) per branch -> tally(every record.item), uniting spread (ALL_SUCCESS)."""
    return [
        gnode(namespace, "Spread", "spread", {"n": str(n)}, next_nodes=["record"]),
        gnode(
            namespace,
            "Record",
            "record",
            {"item": "${{ spread.outputs.item }}", "delay": str(delay)},
            next_nodes=["tally"],
        ),
        gnode(
            namespace,
            "Tally",
            "tally",
            {"items": "${{ record.outputs.item }}"},
            unites={"identifier": "spread", "strategy": "ALL_SUCCESS"},
        ),
    ]


def lost_states(before: list[RunModel], after: dict[str, RunModel]) -> list[str]:
    """States SUCCESS in a snapshot taken before the fault that are not SUCCESS with the same outputs after it."""
    lost = []
    for run in before:
        now = {s.state_id: s for s in after[run.run_id].states}
        for state in run.states:
            if state.status is StateStatus.SUCCESS:
                again = now.get(state.state_id)
                if again is None or again.status is not StateStatus.SUCCESS or again.outputs != state.outputs:
                    lost.append(f"{state.state_id}: {state.outputs} -> {again and (again.status, again.outputs)}")
    return lost


# ---------------------------------------------------------------------------------------------------- scheduler


@pytest.mark.timeout(90)
async def test_scheduler_sigkill_mid_ten_thousand_fan_out_recovers_on_the_same_db_and_port(
    cluster: Cluster, namespace: str
) -> None:
    n = 10_000
    server = await cluster.start_server()
    port = server.port
    runtimes = [cluster.start_runtime(f"rt{i}", FAN_NODES, max_concurrency=256) for i in range(2)]
    await cluster.wait_registered(*runtimes)

    async with StateManager(namespace, address=cluster.address) as sm:
        await sm.upsert_graph("fan", fan_graph(namespace, n, delay=0.2), retry_policy={"max_retries": 0})
        run_id = (await sm.trigger("fan")).run_id
        # Mid-run: a good part of the branches executed, most not yet.
        await assert_eventually(lambda: cluster.log().count("exec") >= 3000, timeout=20, interval=0.05)
        before = await sm.get_run(run_id)
    acked = [s for s in before.states if s.status is StateStatus.SUCCESS]
    assert before.status is RunStatus.PENDING, "the run finished before the kill; the test needs it mid-run"
    assert 0 < len(acked) < n

    killed_at = time.monotonic()
    await asyncio.to_thread(server.kill)
    executed_at_kill = cluster.log().count("exec")
    server = await cluster.start_server(port=port)
    listening_s = time.monotonic() - killed_at
    await cluster.wait_registered(*runtimes, times=2, timeout=30)  # they reconnect by themselves
    reregistered_s = time.monotonic() - killed_at

    async with StateManager(namespace, address=cluster.address) as sm:
        after = await sm.wait(run_id, timeout=60)
    finished_s = time.monotonic() - killed_at

    assert after.status is RunStatus.SUCCESS, after.state_counts
    assert after.state_counts == {"SUCCESS": n + 2}
    (tally,) = states_of(after, "tally")
    assert tally.outputs == [{"count": str(n), "distinct": str(n)}]
    records = states_of(after, "record")
    assert sorted(int(s.outputs[0]["item"]) for s in records) == list(range(n))
    lost = lost_states([before], {run_id: after})
    assert lost == [], f"{len(lost)} acknowledged states lost, e.g. {lost[:5]}"

    executions, distinct, repeated = cluster.log().duplicates()
    assert distinct == n
    recovered = re.findall(r"recovered .* pending_runs=(\d+) states=(\d+) requeued=(\d+)", server.output)
    print(
        f"\nFIGURES scheduler SIGKILL mid fan-out: runs=1 states={len(after.states)} "
        f"acked_success_before_kill={len(acked)} executions_before_kill={executed_at_kill} lost={len(lost)} "
        f"executions={executions} distinct={distinct} duplicates={executions - distinct} "
        f"max_executions_per_item={max(repeated.values(), default=1)} "
        f"recovered(pending_runs,states,requeued)={recovered} "
        f"restart_listening_s={listening_s:.2f} runtimes_reregistered_s={reregistered_s:.2f} "
        f"run_success_after_kill_s={finished_s:.2f}"
    )
    assert executions - distinct <= 2 * 256 + 256, "more re-executions than states in flight at the kill"


# ---------------------------------------------------------------------------------------------------- runtimes


@pytest.mark.timeout(30)
async def test_runtime_sigkilled_while_executing_its_state_moves_to_the_other_runtime(
    cluster: Cluster, namespace: str
) -> None:
    await cluster.start_server("--lease", "PT2S", "--heartbeat-interval", "PT0.5S")
    async with StateManager(namespace, address=cluster.address) as sm:
        run_id, victim, survivor = await cluster.sleeper_on_one_of_two(sm, seconds=3)

        killed_at = time.monotonic()
        victim.signal(signal.SIGKILL)
        await assert_eventually(lambda: survivor.pid in cluster.log().pids("start", "k"), timeout=10)
        redispatched_s = time.monotonic() - killed_at
        result = await sm.wait(run_id, timeout=15)
        finished_s = time.monotonic() - killed_at

    assert victim.wait(5) == -signal.SIGKILL
    assert result.status is RunStatus.SUCCESS
    (state,) = result.states
    assert (state.status, state.attempt, state.outputs) == (StateStatus.SUCCESS, 1, [{"key": "k"}])
    log = cluster.log()
    assert log.pids("start", "k") == [victim.pid, survivor.pid]
    assert log.pids("end", "k") == [survivor.pid]
    assert cluster.server is not None
    gone = re.findall(r"runtime gone session=\S+ runtime=(\S+) reason=(.*) requeued=(\d+)", cluster.server.output)
    assert (victim.name, "1") in [(name, requeued) for name, _, requeued in gone], gone
    print(
        f"\nFIGURES runtime SIGKILL: scheduler saw {gone} ; re-dispatched to the other runtime "
        f"{redispatched_s:.2f}s after the kill; run SUCCESS {finished_s:.2f}s after the kill (node sleeps 3 s)"
    )


@pytest.mark.timeout(30)
async def test_sigterm_runtime_drains_finishes_its_state_takes_no_more_and_exits_0(
    cluster: Cluster, namespace: str
) -> None:
    await cluster.start_server()
    first = cluster.start_runtime("first", ["Sleeper"], max_concurrency=1)
    await cluster.wait_registered(first)

    async with StateManager(namespace, address=cluster.address) as sm:
        await sm.upsert_graph(
            "sleepy",
            [gnode(namespace, "Sleeper", "sleep", {"key": "${{ store.key }}", "seconds": "1"})],
            store_config={"required_keys": ["key"]},
            retry_policy={"max_retries": 0},
        )
        one = (await sm.trigger("sleepy", store={"key": "one"})).run_id
        await assert_eventually(lambda: cluster.log().count("start", "one") == 1, timeout=10)
        # Queued behind "one" (max_concurrency=1): must not be taken by the draining runtime.
        two = (await sm.trigger("sleepy", store={"key": "two"})).run_id

        stopped_at = time.monotonic()
        first.signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 15)
        exit_s = time.monotonic() - stopped_at
        assert code == 0, first.output[-3000:]
        assert "runtime stopped runtime=first executed=1" in first.output

        result_one = await sm.wait(one, timeout=10)
        assert result_one.status is RunStatus.SUCCESS
        assert result_one.states[0].attempt == 1
        assert (await sm.get_run(two)).status is RunStatus.PENDING
        assert cluster.log().count("start", "two") == 0

        second = cluster.start_runtime("second", ["Sleeper"], max_concurrency=1)
        result_two = await sm.wait(two, timeout=20)

    assert result_two.status is RunStatus.SUCCESS
    log = cluster.log()
    assert log.pids("start", "one") == [first.pid] and log.pids("end", "one") == [first.pid]
    assert log.pids("start", "two") == [second.pid]
    assert log.count("cancel") == 0
    print(f"\nFIGURES runtime SIGTERM: drained and exited 0 after {exit_s:.2f}s (node had <=1 s left)")


@pytest.mark.timeout(60)
async def test_sigterm_scheduler_with_runs_in_flight_exits_0_and_the_runs_finish_after_restart(
    cluster: Cluster, namespace: str
) -> None:
    n, runs = 300, 5
    server = await cluster.start_server()
    port = server.port
    runtimes = [cluster.start_runtime(f"rt{i}", FAN_NODES, max_concurrency=32) for i in range(2)]
    await cluster.wait_registered(*runtimes)

    async with StateManager(namespace, address=cluster.address) as sm:
        await sm.upsert_graph("fan", fan_graph(namespace, n, delay=0.05), retry_policy={"max_retries": 0})
        run_ids = [r.run_id for r in await sm.trigger_many("fan", [{}] * runs)]
        await assert_eventually(lambda: cluster.log().count("exec") >= n * runs // 3, timeout=20, interval=0.05)
        before = [await sm.get_run(run_id) for run_id in run_ids]
    assert any(r.status is RunStatus.PENDING for r in before)

    stopped_at = time.monotonic()
    code = await asyncio.to_thread(server.stop, signal.SIGTERM)
    stop_s = time.monotonic() - stopped_at
    assert code == 0, server.output[-3000:]
    assert "Traceback" not in server.output
    assert "exosphere-server stopped" in server.output

    server = await cluster.start_server(port=port)
    await cluster.wait_registered(*runtimes, times=2, timeout=30)
    async with StateManager(namespace, address=cluster.address) as sm:
        after = {run_id: await sm.wait(run_id, timeout=30) for run_id in run_ids}

    for run in after.values():
        assert run.status is RunStatus.SUCCESS, run.state_counts
        assert run.state_counts == {"SUCCESS": n + 2}
        (tally,) = states_of(run, "tally")
        assert tally.outputs == [{"count": str(n), "distinct": str(n)}]
    lost = lost_states(before, after)
    assert lost == [], f"{len(lost)} acknowledged states lost, e.g. {lost[:5]}"
    executions, distinct, _ = cluster.log().duplicates()
    assert distinct == n  # items repeat across runs: distinct counts item values, executions count all runs
    acked = sum(1 for r in before for s in r.states if s.status is StateStatus.SUCCESS)
    print(
        f"\nFIGURES scheduler SIGTERM: runs={runs} states={sum(len(r.states) for r in after.values())} "
        f"acked_success_before_stop={acked} lost={len(lost)} executions={executions} "
        f"duplicates={executions - n * runs} stop_took_s={stop_s:.2f}"
    )
