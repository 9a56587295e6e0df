"""The scheduler's HTTP side: ports, /metrics, the dashboard API, API keys kept server side, scopes and TLS."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from exosphere import RunNotFoundError, RunStatus, Runtime, StateManager
from server.app import App
from server.config import ServerConfig
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.servers import serving
from tests.helpers.waiting import assert_eventually
from tests.helpers.web import http_client, sample
from tests.integration.test_security import Pki, pki  # noqa: F401 - the module-scoped certificate fixture
from tests.nodes import Echo

ADMIN = "k-admin-http-0123456789"
ALPHA = "k-alpha-http-0123456789"


async def test_port_zero_serves_http_on_a_free_port_and_minus_one_turns_it_off(tmp_path: Path, app: App) -> None:
    assert app.http_port > 0 and app.http_port != app.port
    assert app.http_url == f"http://127.0.0.1:{app.http_port}/"
    async with http_client(app) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "<title>Exosphere</title>" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert (await client.get("/static/vendor/cytoscape.min.js")).status_code == 200
    async with serving(ServerConfig(port=0, db=str(tmp_path / "off.db"), http_port=-1)) as off:
        assert off.http_url is None and off.http_port == 0
    assert ServerConfig().http_port_to_bind() == 8080
    assert ServerConfig(port=0).http_port_to_bind() == 0
    assert ServerConfig(port=0, http_port=9999).http_port_to_bind() == 9999


async def test_a_taken_http_port_stops_the_scheduler_with_a_clear_error(tmp_path: Path, app: App) -> None:
    config = ServerConfig(port=0, db=str(tmp_path / "b.db"), http_port=app.http_port)
    with pytest.raises(OSError, match=rf"could not bind the HTTP port 127.0.0.1:{app.http_port}.*--no-http"):
        async with serving(config):
            pass


async def test_metrics_count_states_dispatch_execution_commits_runtimes_and_rpcs(
    app: App, state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await start_runtime([Echo], name="metered", max_concurrency=3)
    await state_manager.upsert_graph("one", [gnode(namespace, "Echo", "e", {"text": "x"})])
    for _ in range(3):
        run = await state_manager.trigger_and_wait("one", timeout=10)
        assert run.status is RunStatus.SUCCESS
    with pytest.raises(RunNotFoundError):
        await state_manager.get_run("no-such-run")
    async with http_client(app) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    node = {"namespace": namespace, "node": "Echo"}
    assert sample(text, "exosphere_states_finished_total", status="SUCCESS", **node) == 3
    assert sample(text, "exosphere_dispatch_wait_seconds_count", **node) == 3
    assert sample(text, "exosphere_execution_seconds_count", **node) == 3
    assert (sample(text, "exosphere_execution_seconds_sum", **node) or 0) >= 0
    assert sample(text, "exosphere_runtimes_connected", namespace=namespace) == 1
    runtime = {"namespace": namespace, "runtime": "metered"}
    assert any(
        line.startswith("exosphere_runtime_credit{") and 'runtime="metered"' in line and line.endswith(" 3.0")
        for line in text.splitlines()
    ), runtime
    assert (sample(text, "exosphere_commits_total") or 0) >= 3
    assert (sample(text, "exosphere_commit_seconds_count") or 0) >= 3
    assert sample(text, "exosphere_rpcs_total", method="/exosphere.v1.SchedulerService/UpsertGraph", code="OK") == 1
    assert sample(text, "exosphere_rpcs_total", method="/exosphere.v1.SchedulerService/GetRun", code="NOT_FOUND") == 1
    assert sample(text, "exosphere_queue_depth", **node) in (None, 0)


@pytest.fixture
async def keyed_app(tmp_path: Path) -> AsyncIterator[App]:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f'keys:\n  - key: "{ALPHA}"\n    namespaces: ["alpha"]\n')
    config = ServerConfig(port=0, db=str(tmp_path / "k.db"), api_key=ADMIN, api_keys_file=str(keys))
    async with serving(config) as app:
        yield app


async def test_keys_are_entered_once_kept_server_side_and_scoped(keyed_app: App) -> None:
    address = f"127.0.0.1:{keyed_app.port}"
    async with RuntimeGroup() as group:
        for ns in ("alpha", "beta"):
            await group.start(Runtime(nodes=[Echo], namespace=ns, name=f"rt-{ns}", address=address, key=ADMIN))
        run_ids = {}
        for ns in ("alpha", "beta"):
            async with StateManager(ns, address=address, key=ADMIN) as sm:
                await sm.upsert_graph(f"g-{ns}", [gnode(ns, "Echo", "e", {"text": "x"})])
                run_ids[ns] = (await sm.trigger_and_wait(f"g-{ns}", timeout=10)).run_id

        async with http_client(keyed_app) as anonymous:
            assert (await anonymous.get("/api/session")).json() == {"login_required": True, "logged_in": False}
            assert (await anonymous.get("/metrics")).status_code == 401
            assert (await anonymous.get("/api/namespaces")).status_code == 401
            refused = await anonymous.post("/api/login", json={"api_key": "wrong"})
            assert refused.status_code == 401 and "invalid API key" in refused.text

        async with http_client(keyed_app, login=ALPHA) as alpha:
            cookie = next(iter(alpha.cookies.jar))
            assert cookie.value != ALPHA and ALPHA not in str(alpha.cookies)  # the browser holds a token only
            assert (await alpha.get("/api/session")).json()["logged_in"] is True
            assert (await alpha.get("/api/namespaces")).json() == ["alpha"]
            assert (await alpha.get(f"/api/runs/{run_ids['alpha']}")).status_code == 200
            for path in (
                f"/api/runs/{run_ids['beta']}",
                f"/api/runs/{run_ids['beta']}/events",
                "/api/namespaces/beta/runs",
                "/api/namespaces/beta/graphs",
                "/api/namespaces/beta/overview",
            ):
                assert (await alpha.get(path)).status_code == 404, path
            other = await alpha.post(f"/api/runs/{run_ids['beta']}/cancel", json={})
            assert other.status_code == 404
            metrics = (await alpha.get("/metrics")).text
            assert 'namespace="alpha"' in metrics and 'namespace="beta"' not in metrics
            not_json = await alpha.post(
                "/api/namespaces/alpha/trigger", content=b"graph_name=g-alpha", headers={"content-type": "text/plain"}
            )
            assert not_json.status_code == 415
            assert (await alpha.post("/api/logout", json={})).status_code == 200
            assert (await alpha.get("/api/namespaces")).status_code == 401

        async with http_client(keyed_app, api_key=ADMIN) as admin:  # a key in a header, as Prometheus sends it
            assert (await admin.get("/api/namespaces")).json() == ["alpha", "beta"]
            assert 'namespace="beta"' in (await admin.get("/metrics")).text
        async with http_client(keyed_app) as bearer:  # Prometheus' `authorization: {credentials: ...}`
            scoped = await bearer.get("/metrics", headers={"authorization": f"Bearer {ALPHA}"})
            assert scoped.status_code == 200 and 'namespace="beta"' not in scoped.text
            wrong = await bearer.get("/metrics", headers={"authorization": "Bearer nope"})
            assert wrong.status_code == 401


async def test_trigger_cancel_and_read_through_the_api(
    app: App, start_runtime: RuntimeFactory, state_manager: StateManager, namespace: str
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph(
        "two",
        [
            gnode(namespace, "Echo", "a", {"text": "${{ store.word }}"}, next_nodes=["b"]),
            gnode(namespace, "Echo", "b", {"text": "${{ a.outputs.text }}"}),
        ],
        store_config={"required_keys": ["word"]},
    )
    async with http_client(app) as client:
        graph = (await client.get(f"/api/namespaces/{namespace}/graphs/two")).json()
        assert [n["identifier"] for n in graph["nodes"]] == ["a", "b"] and graph["store_keys"] == ["word"]
        assert graph["root_inputs"] == [{"name": "text", "required": False, "default": "${{ store.word }}"}]
        missing = await client.post(f"/api/namespaces/{namespace}/trigger", json={"graph_name": "two"})
        assert missing.status_code == 400 and "word" in missing.json()["error"]
        started = await client.post(
            f"/api/namespaces/{namespace}/trigger", json={"graph_name": "two", "store": {"word": "hey"}}
        )
        run_id = started.json()["run_id"]
        run = await state_manager.wait(run_id, timeout=10)
        assert run.status is RunStatus.SUCCESS
        view = (await client.get(f"/api/runs/{run_id}")).json()
        assert view["nodes"]["b"]["counts"] == {"SUCCESS": 1}
        state_id = next(s["state_id"] for s in view["states"] if s["identifier"] == "b")
        state = (await client.get(f"/api/states/{state_id}")).json()
        assert state["state"]["outputs"] == [{"text": "hey"}] and len(state["attempts"]) == 1
        listed = (await client.get(f"/api/namespaces/{namespace}/runs", params={"status": "SUCCESS"})).json()
        assert [r["run_id"] for r in listed["runs"]] == [run_id] and listed["next"] == ""
        assert (await client.get(f"/api/namespaces/{namespace}/runs", params={"status": "NOPE"})).status_code == 400
        async with client.stream("GET", f"/api/runs/{run_id}/events") as events:
            async for line in events.aiter_lines():
                if line.startswith("data: "):
                    assert '"status": "SUCCESS"' in line
                    break


async def test_https_with_the_schedulers_certificate(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    config = ServerConfig(port=0, db=str(tmp_path / "t.db"), tls_cert=str(pki.cert), tls_key=str(pki.key))
    async with serving(config) as app:
        assert app.http_url == f"https://127.0.0.1:{app.http_port}/"
        context = ssl.create_default_context(cafile=str(pki.ca))
        async with httpx.AsyncClient(verify=context) as client:
            assert (await client.get(f"{app.http_url}metrics")).status_code == 200
        async with httpx.AsyncClient() as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get(f"http://127.0.0.1:{app.http_port}/metrics")


async def _next_millisecond() -> None:
    started = time.time_ns() // 1_000_000
    await assert_eventually(lambda: time.time_ns() // 1_000_000 > started, interval=0.0005)


async def test_runs_page_by_cursor_keeping_the_graph_and_status_filters(
    app: App, start_runtime: RuntimeFactory, state_manager: StateManager, namespace: str
) -> None:
    await start_runtime([Echo])
    for name in ("a", "b"):
        await state_manager.upsert_graph(name, [gnode(namespace, "Echo", "e", {"text": name})])
    # Runs created in the same millisecond are listed by run id: each of these starts in a millisecond of its own
    # (a trigger-and-wait can take less than one), so newest first is the order they were made in.
    done = []
    for _ in range(5):
        done.append((await state_manager.trigger_and_wait("a", timeout=10)).run_id)
        await _next_millisecond()
    await state_manager.trigger_and_wait("b", timeout=10)
    await _next_millisecond()
    held = (await state_manager.trigger("a", start_delay=60_000)).run_id  # PENDING, filtered out below
    async with http_client(app) as client:
        seen: list[str] = []
        after = ""
        while True:
            params = {"graph": "a", "status": "SUCCESS", "limit": "2", "after": after}
            page = (await client.get(f"/api/namespaces/{namespace}/runs", params=params)).json()
            assert len(page["runs"]) <= 2 and {(r["graph_name"], r["status"]) for r in page["runs"]} == {
                ("a", "SUCCESS")
            }
            seen += [r["run_id"] for r in page["runs"]]
            after = page["next"]
            if not after:
                break
        assert seen == done[::-1]  # newest first, each once, no empty last page
        everything = (await client.get(f"/api/namespaces/{namespace}/runs")).json()
        assert len(everything["runs"]) == 7 and everything["runs"][0]["run_id"] == held
        for bad in ({"after": "yesterday"}, {"limit": "many"}):
            response = await client.get(f"/api/namespaces/{namespace}/runs", params=bad)
            assert response.status_code == 400, bad
            assert "cursor" in response.json()["error"] or "limit" in response.json()["error"]
