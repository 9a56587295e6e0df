"""The dashboard in cluster mode, in a real browser: two real replicas on PostgreSQL, real runtimes over gRPC.

Either replica's overview shows both replicas (address, shards owned, heartbeat age) and the runtimes connected
across them; a run the other replica owns shows from the database with its states, follows live to its end, and is
cancelled, or its failed state retried, from this replica's pages (the call goes to its owner).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import expect

from exosphere import RetryPolicyModel, RunStatus, Runtime, StateManager
from server.app import App
from tests.engine_nodes import Flaky, Waiter
from tests.helpers.browser import browsing
from tests.helpers.cluster import SHARDS, two_replicas
from tests.helpers.graphs import gnode
from tests.helpers.pg import pg_dsn  # noqa: F401 - the fixture
from tests.helpers.runtimes import RuntimeGroup, running
from tests.helpers.waiting import assert_eventually
from tests.helpers.web import http_client
from tests.nodes import Echo

pytestmark = pytest.mark.slow


async def overview(app: App, namespace: str) -> dict[str, Any]:
    async with http_client(app) as client:
        response = await client.get(f"/api/namespaces/{namespace}/overview")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


async def test_either_replica_shows_the_whole_cluster(pg_dsn: str, tmp_path: Any, namespace: str) -> None:  # noqa: F811
    keys = [f"{namespace}-{name}" for name in ("live", "cancel")]
    async with two_replicas(pg_dsn, tmp_path) as (a, b), RuntimeGroup() as group:
        # One runtime is given each replica; each learns the other replica and holds a stream to both.
        for app, name in ((a, "rt-alpha"), (b, "rt-beta")):
            await group.start(Runtime(namespace, name, [Waiter, Flaky], address=app.address, max_concurrency=4))
        try:
            await _check(a, b, namespace, keys)
        finally:
            for key in keys:
                Waiter.release(key)  # the runtimes stop promptly whatever happened


async def _check(a: App, b: App, namespace: str, keys: list[str]) -> None:
    addresses = sorted([a.address, b.address])

    async def whole(app: App) -> bool:
        assert app.cluster is not None
        await app.cluster.tick()
        o = await overview(app, namespace)
        return (
            sorted(r["address"] for r in o["replicas"]) == addresses
            and sum(r["shards"] for r in o["replicas"]) == SHARDS
            and sorted(r["runtime_name"] for r in o["runtimes"]) == ["rt-alpha", "rt-beta"]
            and all(r["replicas"] == addresses for r in o["runtimes"])
            and all(r["runtimes"] == 2 for r in o["replicas"])
        )

    for app in (a, b):
        seen = f"the whole cluster seen from {app.address}"
        await assert_eventually(lambda app=app: whole(app), timeout=20, message=seen)

    # Runs owned by b, read on a: from the database.
    async with StateManager(namespace, address=b.address) as sm:
        await sm.upsert_graph(
            "gated",
            [gnode(namespace, "Waiter", "wait", {"key": "${{ store.key }}"})],
            store_config={"required_keys": ["key"]},
            retry_policy=RetryPolicyModel(max_retries=0),
        )
        live, doomed = [(await sm.trigger("gated", store={"key": key})).run_id for key in keys]
        await sm.upsert_graph(
            "flaky",
            [gnode(namespace, "Flaky", "flaky", {"key": f"{namespace}-flaky", "fails": "1"})],
            retry_policy=RetryPolicyModel(max_retries=0),
        )
        failed = await sm.trigger_and_wait("flaky", timeout=10)
        assert failed.status is RunStatus.FAILED
    assert b.engine.is_live(live) and not a.engine.is_live(live)
    # The run's one state executes on b; a reads it from the database as committed (a hand-over to a runtime is
    # not committed, so it reads CREATED there).
    await assert_eventually(lambda: b.engine.get_run(live)[0].state_counts == {"QUEUED": 1}, timeout=10)
    assert a.engine.get_run(live)[0].state_counts == {"CREATED": 1}

    # A run waiting on a node no connected runtime hosts (its runtime came and went), held by b.
    async with running(Runtime(namespace, "gone", [Echo], address=b.address)):
        pass
    async with StateManager(namespace, address=b.address) as sm:
        await sm.upsert_graph("orphan", [gnode(namespace, "Echo", "echo", {"text": "x"})])
        orphan = (await sm.trigger("orphan")).run_id
    await assert_eventually(lambda: b.engine.get_run(orphan)[0].waiting_for_runtime == ["Echo"], timeout=10)

    assert a.http_url is not None
    async with browsing(a.http_url) as browser:
        page = browser.page
        await page.goto(f"/#/ns/{namespace}")
        replicas = page.get_by_test_id("replicas")
        for address in addresses:
            await expect(replicas.locator(f"tr[data-replica='{address}']")).to_be_visible()
        await expect(replicas.locator(f"tr[data-replica='{a.address}']")).to_contain_text("(this one)")
        await expect(page.get_by_test_id("runtimes")).to_contain_text("rt-alpha")
        await expect(page.get_by_test_id("runtimes")).to_contain_text("rt-beta")
        # Each runtime streams to both replicas (and the list waits for both rows).
        await expect(page.get_by_test_id("runtime-replicas")).to_have_text([", ".join(addresses)] * 2)
        await expect(page.get_by_test_id("pending-runs")).to_have_text("3")
        await browser.screenshot("cluster-overview")

        await page.goto(f"/#/ns/{namespace}/runs")
        row = page.locator(f"tr[data-run='{live}']")
        await expect(row).to_contain_text("PENDING")
        await expect(row).to_contain_text("CREATED 1")

        await page.goto(f"/#/runs/{live}")
        status = page.get_by_test_id("run-status")
        await expect(status).to_have_text("PENDING")
        await expect(page.get_by_test_id("states")).to_contain_text("wait")
        await expect(page.get_by_test_id("owned-elsewhere")).to_contain_text(
            f"held by the scheduler replica {b.address}"
        )
        await browser.screenshot("cluster-run-owned-elsewhere-pending")
        Waiter.release(keys[0])  # b finishes the run; a's page hears of it without a reload
        await expect(status).to_have_text("SUCCESS")
        await expect(page.get_by_test_id("states")).to_contain_text("SUCCESS")
        await expect(page.get_by_test_id("owned-elsewhere")).to_have_count(0)  # ended: nothing left uncommitted
        await browser.screenshot("cluster-run-owned-elsewhere-success")

        await page.goto(f"/#/runs/{doomed}")
        await expect(page.get_by_test_id("run-status")).to_have_text("PENDING")
        await page.get_by_test_id("cancel").click()  # a forwards it to b, the owner
        await expect(page.get_by_test_id("run-status")).to_have_text("CANCELLED")
        await browser.screenshot("cluster-run-cancelled-from-another-replica")

        await page.goto(f"/#/runs/{orphan}")
        await expect(page.get_by_test_id("waiting")).to_contain_text("no connected runtime hosts Echo")
        await browser.screenshot("cluster-run-waiting-for-a-runtime")

        (state,) = failed.states
        await page.goto(f"/#/states/{state.state_id}")
        await expect(page.get_by_test_id("state-error")).to_contain_text("ValueError: boom 1")
        await page.get_by_test_id("retry").click()  # a forwards it to b, the owner
        await page.wait_for_url(lambda url: state.state_id not in url)
        await expect(page.get_by_test_id("state-status")).to_contain_text("SUCCESS")
        failed_attempt = page.get_by_test_id("attempts").locator("details")  # every attempt's traceback
        await failed_attempt.locator("summary").click()
        await expect(failed_attempt).to_contain_text("ValueError: boom 1")
        await browser.screenshot("cluster-state-retried-attempts")
    Waiter.release(keys[1])
    async with StateManager(namespace, address=a.address) as sm:
        assert (await sm.get_run(live)).status is RunStatus.SUCCESS
        assert (await sm.get_run(doomed)).status is RunStatus.CANCELLED
        assert (await sm.get_run(failed.run_id)).status is RunStatus.SUCCESS
