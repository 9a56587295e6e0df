"""The dashboard in a real browser (headless Chromium) against a real scheduler and real runtimes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest
from playwright.async_api import Page, expect
from pydantic import BaseModel

from exosphere import BaseNode, GraphNodeModel, RetryPolicyModel, RunStatus, Runtime, StateManager
from server.app import App
from server.config import ServerConfig
from tests.engine_nodes import Count, Flaky
from tests.helpers.browser import browsing
from tests.helpers.graphs import gnode, states_of
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.servers import serving
from tests.nodes import Echo

ADMIN = "k-admin-browser-0123456789"
ALPHA = "k-alpha-browser-0123456789"


class Hold(BaseNode):
    """Waits until the test opens ``Hold.gates[key]``: the run stays visibly PENDING until then."""

    gates: ClassVar[dict[str, asyncio.Event]] = {}

    class Inputs(BaseModel):
        key: str
        item: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        await Hold.gates.setdefault(self.inputs.key, asyncio.Event()).wait()
        return self.Outputs(text=self.inputs.item)


def fan_graph(namespace: str) -> list[GraphNodeModel]:
    """A 3-way fan-out: Count, then 3 Hold, then 3 Echo."""
    hold_inputs = {"key": "${{ store.key }}", "item": "${{ split.outputs.item }}"}
    return [
        gnode(namespace, "Count", "split", {"n": "3"}, next_nodes=["hold"]),
        gnode(namespace, "Hold", "hold", hold_inputs, next_nodes=["done"]),
        gnode(namespace, "Echo", "done", {"text": "${{ hold.outputs.text }}"}),
    ]


async def node_colour(page: Page, identifier: str) -> str:
    colour = await page.locator("[data-testid=dag]").evaluate(
        "(el, id) => el._cy.getElementById(id).style('background-color')", identifier
    )
    return str(colour)


GREEN = "rgb(30,158,85)"


@pytest.fixture
async def ready(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> AsyncIterator[StateManager]:
    await start_runtime([Count, Hold, Echo, Flaky], name="browser-runtime", max_concurrency=8)
    await state_manager.upsert_graph("fan", fan_graph(namespace), store_config={"required_keys": ["key"]})
    await state_manager.upsert_graph(
        "flaky",
        [gnode(namespace, "Flaky", "flaky", {"key": "${{ store.key }}", "fails": "1"})],
        store_config={"required_keys": ["key"]},
        retry_policy=RetryPolicyModel(max_retries=0),
    )
    yield state_manager


async def test_every_page_loads_without_console_errors(app: App, ready: StateManager, namespace: str) -> None:
    Hold.gates["pages"] = asyncio.Event()
    Hold.gates["pages"].set()
    done = await ready.trigger_and_wait("fan", store={"key": "pages"}, timeout=10)
    assert done.status is RunStatus.SUCCESS
    failed = await ready.trigger_and_wait("flaky", store={"key": f"pages-{namespace}"}, timeout=10)
    assert failed.status is RunStatus.FAILED
    state_id = states_of(done, "done")[0].state_id
    assert app.http_url is not None
    async with browsing(app.http_url) as b:
        page = b.page
        pages = {
            "overview": (f"/#/ns/{namespace}", "[data-testid=runtimes]"),
            "graphs": (f"/#/ns/{namespace}/graphs", "[data-testid=graph-card] canvas"),
            "graph": (f"/#/ns/{namespace}/graphs/fan", "[data-testid=trigger-form]"),
            "runs": (f"/#/ns/{namespace}/runs", "[data-testid=runs]"),
            "run": (f"/#/runs/{done.run_id}", "[data-testid=states]"),
            "failed-run": (f"/#/runs/{failed.run_id}", "[data-testid=states]"),
            "state": (f"/#/states/{state_id}", "[data-testid=attempts]"),
        }
        for name, (path, marker) in pages.items():
            await page.goto(path)
            await page.locator(marker).first.wait_for()
            if name == "overview":
                await expect(page.locator("[data-testid=runtimes]")).to_contain_text("browser-runtime")
                await expect(page.locator("[data-testid=nodes]")).to_contain_text("online")
            if name == "run":
                await expect(page.locator("[data-testid=run-status]")).to_have_text("SUCCESS")
                assert await node_colour(page, "hold") == GREEN
                label = await page.locator("[data-testid=dag]").evaluate(
                    "el => el._cy.getElementById('hold').data('label')"
                )
                assert "SUCCESS 3" in str(label)  # a fan-out is one box with counts
            await page.wait_for_timeout(300)  # let the graph settle before the picture
            await b.screenshot(name)


async def test_a_run_triggered_from_the_form_turns_green_live(app: App, ready: StateManager, namespace: str) -> None:
    key = f"live-{namespace}"
    Hold.gates[key] = asyncio.Event()
    assert app.http_url is not None
    async with browsing(app.http_url) as b:
        page = b.page
        await page.goto(f"/#/ns/{namespace}/graphs/fan")
        await page.get_by_test_id("store-key").fill(key)
        await page.get_by_test_id("trigger").click()
        await page.wait_for_url(re.compile(r"#/runs/"))
        status = page.get_by_test_id("run-status")
        await expect(status).to_have_text("PENDING")
        await expect(page.get_by_test_id("states")).to_contain_text("hold")
        assert await node_colour(page, "done") != GREEN
        await b.screenshot("run-live-pending")
        Hold.gates[key].set()  # the three held branches finish: the page hears of it without a reload
        await expect(status).to_have_text("SUCCESS")
        for identifier in ("split", "hold", "done"):
            assert await node_colour(page, identifier) == GREEN
        await b.screenshot("run-live-success")


async def test_a_failed_state_is_retried_from_its_page(app: App, ready: StateManager, namespace: str) -> None:
    failed = await ready.trigger_and_wait("flaky", store={"key": f"retry-{namespace}"}, timeout=10)
    assert failed.status is RunStatus.FAILED
    [state] = states_of(failed, "flaky")
    assert app.http_url is not None
    async with browsing(app.http_url) as b:
        page = b.page
        await page.goto(f"/#/states/{state.state_id}")
        await expect(page.get_by_test_id("state-error")).to_contain_text("ValueError: boom 1")
        await expect(page.get_by_test_id("traceback")).to_contain_text("Traceback")
        await expect(page.get_by_test_id("ran-on")).to_contain_text("browser-runtime")
        await b.screenshot("state-failed")
        await page.get_by_test_id("retry").click()
        await page.wait_for_url(lambda url: state.state_id not in url)
        await expect(page.get_by_test_id("state-status")).to_contain_text("SUCCESS")
        await page.get_by_test_id("run-link").click()
        await expect(page.get_by_test_id("run-status")).to_have_text("SUCCESS")
        await b.screenshot("state-retried-run")
    assert (await ready.wait(failed.run_id, timeout=10)).status is RunStatus.SUCCESS


@pytest.fixture
async def keyed_app(tmp_path: Path) -> AsyncIterator[App]:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f'keys:\n  - key: "{ALPHA}"\n    namespaces: ["alpha"]\n')
    config = ServerConfig(port=0, db=str(tmp_path / "k.db"), api_key=ADMIN, api_keys_file=str(keys))
    async with serving(config) as app:
        yield app


async def test_a_key_scoped_to_another_namespace_sees_nothing_of_this_one(keyed_app: App) -> None:
    address = f"127.0.0.1:{keyed_app.port}"
    runs = {}
    async with RuntimeGroup() as group:
        for ns in ("alpha", "beta"):
            await group.start(Runtime(nodes=[Echo], namespace=ns, name=f"runtime-{ns}", address=address, key=ADMIN))
            async with StateManager(ns, address=address, key=ADMIN) as sm:
                await sm.upsert_graph(f"graph-{ns}", [gnode(ns, "Echo", "e", {"text": ns})])
                runs[ns] = (await sm.trigger_and_wait(f"graph-{ns}", timeout=10)).run_id
        assert keyed_app.http_url is not None
        # The 404s this test asks for on purpose are logged by Chromium; nothing else may be.
        async with browsing(keyed_app.http_url, expected_errors=r"status of 404") as b:
            page = b.page
            await page.goto("/")
            await page.get_by_test_id("api-key").fill(ALPHA)
            await b.screenshot("login")
            await page.get_by_test_id("login").click()
            await expect(page.get_by_test_id("runtimes")).to_contain_text("runtime-alpha")
            options = await page.get_by_test_id("namespace").locator("option").all_inner_texts()
            assert options == ["alpha"]
            await page.goto("/#/ns/alpha/runs")
            await expect(page.get_by_test_id("runs")).to_contain_text(runs["alpha"])
            await expect(page.get_by_test_id("runs")).not_to_contain_text(runs["beta"])
            for path in (f"/#/runs/{runs['beta']}", "/#/ns/beta/runs", "/#/ns/beta/graphs", "/#/ns/beta"):
                await page.goto(path)
                await expect(page.get_by_test_id("error")).to_contain_text("not found")
                content = await page.content()
                assert "runtime-beta" not in content and "graph-beta" not in content
            await b.screenshot("scoped-key-other-namespace")
            assert b.expected, "the refused requests were expected to show as 404s"
            # The cookie holds a token, never the key.
            cookies = await page.context.cookies()
            assert [c["name"] for c in cookies] == ["exosphere_session"] and ALPHA not in cookies[0]["value"]
