"""The dashboard's run list in a real browser: more than a page of runs, paged by cursor, filters kept; a run's
page by a unique prefix of its id."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Page, expect

from exosphere import RunStatus, StateManager
from server.app import App
from tests.helpers.browser import browsing
from tests.helpers.cli import unique_prefix
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory
from tests.nodes import Echo

pytestmark = pytest.mark.slow

PAGE = 100  # RUNS_PAGE in server/web/static/app.js and server/web/routes.py
MATCHING = PAGE + 12


async def listed(page: Page) -> list[str]:
    return [str(r) for r in await page.locator("[data-testid=runs] tr[data-run]").evaluate_all(
        "rows => rows.map(r => r.dataset.run)"
    )]  # fmt: skip


async def test_runs_past_a_page_are_paged_with_the_filters_kept(
    app: App, state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo], max_concurrency=32)
    for name in ("echo", "other"):
        await state_manager.upsert_graph(name, [gnode(namespace, "Echo", "e", {"text": name})])
    started = await state_manager.trigger_many("echo", [{}] * MATCHING)
    others = await state_manager.trigger_many("other", [{}] * 3)
    runs = await asyncio.gather(*(state_manager.wait(r.run_id, timeout=30) for r in [*started, *others]))
    assert all(r.status is RunStatus.SUCCESS for r in runs)
    held = [(await state_manager.trigger("echo", start_delay=600_000)).run_id for _ in range(3)]  # PENDING
    matching = {r.run_id for r in started}

    assert app.http_url is not None
    async with browsing(app.http_url) as b:
        page = b.page
        await page.goto(f"/#/ns/{namespace}/runs?graph=echo&status=SUCCESS")
        position = page.get_by_test_id("page")
        await expect(position).to_have_text(f"page 1 · {PAGE} runs")
        first = await listed(page)
        assert len(first) == PAGE and set(first) <= matching
        await expect(page.get_by_test_id("newer")).to_be_disabled()
        await b.screenshot("runs-page-1")

        await page.get_by_test_id("older").click()
        await expect(position).to_have_text(f"page 2 · {MATCHING - PAGE} runs")
        second = await listed(page)
        assert set(first) | set(second) == matching and not set(first) & set(second)
        await expect(page.get_by_test_id("filter-graph")).to_have_value("echo")
        await expect(page.get_by_test_id("filter-status")).to_have_value("SUCCESS")
        await expect(page.get_by_test_id("older")).to_be_disabled()
        await expect(page.get_by_test_id("runs")).not_to_contain_text("other v1")
        await b.screenshot("runs-page-2")

        await page.get_by_test_id("newer").click()
        await expect(position).to_have_text(f"page 1 · {PAGE} runs")
        assert await listed(page) == first

        # Another filter starts again from the first page, and the address keeps it (a reload shows the same).
        await page.get_by_test_id("older").click()
        await expect(position).to_contain_text("page 2")
        await page.get_by_test_id("filter-status").select_option("PENDING")
        await expect(position).to_have_text("page 1 · 3 runs")
        assert sorted(await listed(page)) == sorted(held)
        assert page.url.endswith(f"#/ns/{namespace}/runs?graph=echo&status=PENDING")
        await page.reload()
        await expect(position).to_have_text("page 1 · 3 runs")
        await b.screenshot("runs-filtered-pending")

        # A run id may be given by a unique prefix, as the CLI takes it: the page moves to the whole id.
        run_id = first[0]
        await page.goto(f"/#/runs/{unique_prefix(run_id, [r.run_id for r in runs] + held)}")
        await page.wait_for_url(f"**/#/runs/{run_id}")
        await expect(page.get_by_test_id("run-status")).to_have_text("SUCCESS")
