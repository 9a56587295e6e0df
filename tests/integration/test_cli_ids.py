"""The CLI takes a run id by a unique prefix everywhere it takes one (runs show/watch/cancel/retry, states show, a
state id's run part), against a real scheduler and runtime; an unknown or ambiguous prefix is one clear error line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exosphere import RetryPolicyModel, RunStatus, Runtime, StateManager
from server.app import App
from server.config import ServerConfig
from server.prefixes import CANDIDATES
from tests.engine_nodes import Flaky
from tests.helpers.cli import cli, one_error_line, unique_prefix
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory, running
from tests.helpers.servers import serving

ADMIN = "k-admin-cli-ids-0123456789"
ALPHA = "k-alpha-cli-ids-0123456789"


async def test_run_and_state_ids_by_unique_prefix(
    server_address: str, namespace: str, start_runtime: RuntimeFactory, state_manager: StateManager
) -> None:
    await start_runtime([Flaky])
    flaky = [gnode(namespace, "Flaky", "flaky", {"key": "${{ store.n }}", "fails": "1"})]
    await state_manager.upsert_graph(
        "flaky", flaky, store_config={"required_keys": ["n"]}, retry_policy=RetryPolicyModel(max_retries=0)
    )
    failed = await state_manager.trigger_and_wait("flaky", store={"n": f"{namespace}-1"}, timeout=10)
    assert failed.status is RunStatus.FAILED
    delayed = (await state_manager.trigger("flaky", store={"n": f"{namespace}-2"}, start_delay=60_000)).run_id
    ids = [failed.run_id, delayed]
    address = ("--address", server_address)
    short = unique_prefix(failed.run_id, ids)

    shown = await cli("runs", "show", short, "--json", *address)
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["run_id"] == failed.run_id
    watched = await cli("runs", "watch", short, *address)
    assert watched.code == 1 and f"run {failed.run_id} FAILED" in watched.out

    # A state id's run part may be a prefix too; the new attempt succeeds, so the run does.
    (state,) = failed.states
    number = state.state_id.rpartition("-")[2]
    shown_state = await cli("states", "show", f"{short}-{number}", *address)
    assert shown_state.code == 0, shown_state.err
    assert state.state_id in shown_state.out and "ValueError: boom 1" in shown_state.out
    assert "Traceback (most recent call last)" in shown_state.out and "input key" in shown_state.out
    as_json = await cli("states", "show", f"{short}-{number}", "--json", *address)
    assert json.loads(as_json.out)["error"]["type"] == "ValueError"
    missing_state = await cli("states", "show", f"{short}-99", *address)
    assert missing_state.code == 1
    assert one_error_line(missing_state) == f"error: state '{failed.run_id}-99' not found"
    retried = await cli("runs", "retry", f"{short}-{number}", *address)
    assert retried.code == 0, retried.err
    assert retried.out.strip().startswith(f"{failed.run_id}-")
    assert (await state_manager.wait(failed.run_id, timeout=10)).status is RunStatus.SUCCESS

    cancelled = await cli("runs", "cancel", unique_prefix(delayed, ids), *address)
    assert cancelled.code == 0, cancelled.err
    assert f"run {delayed} CANCELLED" in cancelled.out

    common = failed.run_id[: len(short) - 1]  # both ids start with it
    ambiguous = await cli("runs", "show", common, *address)
    assert ambiguous.code == 2
    line = one_error_line(ambiguous)
    assert f"run id prefix '{common}' is ambiguous" in line and failed.run_id in line and delayed in line

    for unknown in ("fffffff", "not-hex"):
        missing = await cli("runs", "show", unknown, *address)
        assert missing.code == 1
        assert one_error_line(missing) == f"error: run '{unknown}' not found"
    bad_state = await cli("runs", "retry", short, *address)
    assert bad_state.code == 2
    assert f"state id '{short}' is not <run id>-<number>" in one_error_line(bad_state)


@pytest.fixture
async def secure_app(tmp_path: Path) -> AsyncIterator[App]:
    keys = tmp_path / "keys.yaml"
    keys.write_text(f'keys:\n  - key: "{ALPHA}"\n    namespaces: ["alpha"]\n')
    config = ServerConfig(host="127.0.0.1", port=0, db=str(tmp_path / "ids.db"), api_key=ADMIN, api_keys_file=str(keys))
    async with serving(config) as app:
        yield app


async def test_a_prefix_resolves_only_among_the_runs_the_key_may_read(secure_app: App) -> None:
    address = ("--address", secure_app.address)
    runs: dict[str, list[str]] = {}
    for namespace in ("alpha", "beta"):
        runtime = Runtime(namespace, f"rt-{namespace}", [Flaky], address=secure_app.address, key=ADMIN)
        async with running(runtime), StateManager(namespace, address=secure_app.address, key=ADMIN) as sm:
            await sm.upsert_graph("g", [gnode(namespace, "Flaky", "f", {"key": "k", "fails": "0"})])
            runs[namespace] = [(await sm.trigger("g", start_delay=60_000)).run_id for _ in range(CANDIDATES + 2)]
    beta = runs["beta"][0]
    # The admin key sees every run: "0" (the shard of every run here) matches more than are listed.
    everything = await cli("runs", "show", "0", "--api-key", ADMIN, *address)
    assert everything.code == 2 and one_error_line(everything).endswith(", ...; give more of the id")
    # The alpha key never resolves (nor lists) a run of beta.
    hidden = await cli("runs", "show", beta[:12], "--api-key", ALPHA, *address)
    assert hidden.code == 1 and one_error_line(hidden) == f"error: run '{beta[:12]}' not found"
    listed = one_error_line(await cli("runs", "show", "0", "--api-key", ALPHA, *address))
    assert not any(run_id in listed for run_id in runs["beta"])
    assert sum(run_id in listed for run_id in runs["alpha"]) == CANDIDATES
    mine = await cli("runs", "show", runs["alpha"][0][:12], "--json", "--api-key", ALPHA, *address)
    assert mine.code == 0 and json.loads(mine.out)["run_id"] == runs["alpha"][0]
