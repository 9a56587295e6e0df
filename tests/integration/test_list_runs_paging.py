"""ListRuns pages through a total order (newest first, run id breaking ties), through the real scheduler.

Runs triggered in one TriggerGraphs call share their creation millisecond; every one is listed exactly once.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from exosphere import GraphNodeModel, RunModel, RunStatus, StateManager
from exosphere.errors import InvalidArgumentError
from tests.engine_nodes import Tag
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually

RUNS = 3000


async def _graph_without_runtime(state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str) -> None:
    """A graph whose runs stay PENDING: its node registers, then its runtime goes away."""
    runtime = await start_runtime([Tag])
    await state_manager.upsert_graph(
        "many", [GraphNodeModel(node_name="Tag", namespace=namespace, identifier="a", inputs={"text": "x"})]
    )
    runtime.stop()


async def _all_pages(state_manager: StateManager, **kwargs: object) -> tuple[list[RunModel], int]:
    runs: list[RunModel] = []
    pages, token = 0, ""
    while True:
        page, token = await state_manager.list_runs(page_token=token, **kwargs)  # type: ignore[arg-type]
        runs.extend(page)
        pages += 1
        if not token:
            return runs, pages


async def test_runs_created_in_the_same_millisecond_are_each_listed_once(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await _graph_without_runtime(state_manager, start_runtime, namespace)
    triggered = [r.run_id for r in await state_manager.trigger_many("many", [{}] * RUNS)]
    triggered += [r.run_id for r in await state_manager.trigger_many("many", [{}] * 7)]

    listed, pages = await _all_pages(state_manager)  # the SDK's default page size
    ids = [r.run_id for r in listed]
    assert Counter(ids) == Counter(triggered)
    assert pages == -(-len(triggered) // 50)  # no empty last page
    per_ms = Counter(r.created_at for r in listed)
    assert max(per_ms.values()) > 50, "the runs should share milliseconds across page boundaries"
    keys = [(r.created_at, r.run_id) for r in listed]
    assert keys == sorted(keys, reverse=True)

    for page_size in (1000, 7):
        again, _ = await _all_pages(state_manager, graph_name="many", page_size=page_size, status=RunStatus.PENDING)
        assert [r.run_id for r in again] == ids


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("abc", "does not start with a creation time in milliseconds"),
        ("-1:x", "creation time is out of range"),
        (f"{2**62}:x", "creation time is out of range"),
        ("12:", "run id must be 1 to 256 characters"),
        ("12:" + "x" * 257, "run id must be 1 to 256 characters"),
    ],
)
async def test_a_bad_page_token_is_an_invalid_argument_naming_the_problem(
    state_manager: StateManager, token: str, problem: str
) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        await state_manager.list_runs(page_token=token)
    assert "invalid ListRuns page_token" in str(caught.value)
    assert problem in str(caught.value)


async def test_a_bare_millisecond_token_of_older_servers_still_pages(
    state_manager: StateManager, start_runtime: RuntimeFactory, namespace: str
) -> None:
    await _graph_without_runtime(state_manager, start_runtime, namespace)
    older = {r.run_id for r in await state_manager.trigger_many("many", [{}] * 3)}
    listed, _ = await state_manager.list_runs()
    last_ms = max(int(r.created_at.timestamp() * 1000) for r in listed if r.created_at is not None)
    await assert_eventually(lambda: time.time() * 1000 >= last_ms + 2)
    await state_manager.trigger_many("many", [{}] * 2)
    # Such a token meant "created before this millisecond", and still does.
    page, token = await state_manager.list_runs(page_token=str(last_ms + 1))
    assert ({r.run_id for r in page}, token) == (older, "")
