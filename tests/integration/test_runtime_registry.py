"""The runtime registry: which runtimes are connected, which nodes are online, and runs that wait for a runtime."""

from __future__ import annotations

import json

from exosphere import RunStatus, Runtime, StateManager, StateStatus
from tests.helpers.cli import cli
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo, Upper


async def test_list_runtimes_reports_each_connected_runtime(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, server_address: str
) -> None:
    await start_runtime([Echo, Upper], name="alpha", max_concurrency=7)
    await start_runtime([Echo], name="beta")

    runtimes = sorted(await state_manager.list_runtimes(), key=lambda r: r.runtime_name)
    assert [r.runtime_name for r in runtimes] == ["alpha", "beta"]
    alpha = runtimes[0]
    assert alpha.namespace == namespace
    assert alpha.node_names == ["Echo", "Upper"]
    assert (alpha.in_flight, alpha.max_concurrency) == (0, 7)
    assert alpha.connected_at is not None and alpha.last_heartbeat is not None
    assert alpha.last_heartbeat >= alpha.connected_at
    assert alpha.runtime_id and not alpha.draining

    async with StateManager("another-namespace", address=server_address) as other:
        assert await other.list_runtimes() == []
        everywhere = await other.list_runtimes(all_namespaces=True)
    assert {r.runtime_name for r in everywhere} >= {"alpha", "beta"}

    listed = await cli("runtimes", "list", namespace, "--address", server_address)
    assert listed.code == 0, listed.err
    assert "alpha" in listed.out and "beta" in listed.out and "0/7" in listed.out
    as_json = await cli("runtimes", "list", namespace, "--json", "--address", server_address)
    assert sorted(r["runtime_name"] for r in json.loads(as_json.out)) == ["alpha", "beta"]
    none = await cli("runtimes", "list", "nobody-here", "--address", server_address)
    assert none.code == 0 and "no runtime connected in namespace nobody-here" in none.err


async def test_a_run_waiting_for_an_offline_node_says_so(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, server_address: str
) -> None:
    # Both nodes registered once, then only Echo's runtime stays.
    async with RuntimeGroup() as group:
        both = await group.start(Runtime(nodes=[Echo, Upper], namespace=namespace, name="both", address=server_address))
        await state_manager.upsert_graph(
            "shout",
            [
                gnode(namespace, "Echo", "first", {"text": "hi"}, next_nodes=["second"]),
                gnode(namespace, "Upper", "second", {"text": "${{ first.outputs.text }}"}),
            ],
        )
        await group.stop(both)
    await start_runtime([Echo], name="echo-only")

    nodes = await cli("nodes", "list", namespace, "--address", server_address)
    assert nodes.code == 0, nodes.err
    marks = dict(line.split(maxsplit=1) for line in nodes.out.strip().splitlines())
    assert marks == {"Echo": "online", "Upper": "offline (no runtime)"}
    as_json = await cli("nodes", "list", namespace, "--json", "--address", server_address)
    assert json.loads(as_json.out) == [{"name": "Echo", "online": True}, {"name": "Upper", "online": False}]

    run_id = (await state_manager.trigger("shout")).run_id

    async def waits_for_upper() -> bool:
        run = await state_manager.get_run(run_id)
        return run.waiting_for_runtime == ["Upper"]

    await assert_eventually(waits_for_upper)
    run = await state_manager.get_run(run_id)
    assert run.status is RunStatus.PENDING
    # Nobody holds it: it stays CREATED, never QUEUED.
    assert [s.status for s in states_of(run, "second")] == [StateStatus.CREATED]

    shown = await cli("runs", "show", run_id, "--address", server_address)
    assert "waiting for a runtime: no connected runtime hosts Upper" in shown.out
    async for watched, _ in state_manager.watch(run_id):
        assert watched.waiting_for_runtime == ["Upper"]
        break

    waited = await cli("trigger", namespace, "shout", "--wait", "--timeout", "1.5", "--address", server_address)
    assert waited.code == 1
    first, *rest = waited.err.strip().splitlines()
    assert first.startswith("run ") and first.endswith(" started")
    assert "waiting for a runtime: no connected runtime hosts Upper" in rest[0]
    assert "still pending after 1.5s" in rest[-1]

    await start_runtime([Upper], name="upper")
    done = await state_manager.wait(run_id, timeout=10)
    assert done.status is RunStatus.SUCCESS
    assert (await state_manager.get_run(run_id)).waiting_for_runtime == []


async def test_each_state_records_the_runtime_that_ran_it_when_and_for_how_long(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, server_address: str
) -> None:
    await start_runtime([Echo], name="the-runner")
    await state_manager.upsert_graph("one", [gnode(namespace, "Echo", "e", {"text": "x"})])
    run = await state_manager.trigger_and_wait("one", timeout=10)
    [state] = run.states
    assert state.runtime_name == "the-runner"
    assert state.started_at is not None and state.created_at is not None and state.updated_at is not None
    assert state.created_at <= state.started_at <= state.updated_at
    assert 0 <= state.ran_ms <= (state.updated_at - state.created_at).total_seconds() * 1000 + 1
    shown = await cli("runs", "show", run.run_id, "--address", server_address)
    assert "the-runner" in shown.out


async def test_runs_list_filters_by_status(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str, server_address: str
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph("one", [gnode(namespace, "Echo", "e", {"text": "x"})])
    done = await state_manager.trigger_and_wait("one", timeout=10)
    succeeded = await cli("runs", "list", namespace, "--status", "SUCCESS", "--address", server_address)
    assert succeeded.code == 0 and done.run_id in succeeded.out
    failed = await cli("runs", "list", namespace, "--status", "FAILED", "--address", server_address)
    assert failed.code == 0 and done.run_id not in failed.out
    assert f"no FAILED runs in namespace {namespace}" in failed.err
