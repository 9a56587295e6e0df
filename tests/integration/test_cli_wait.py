"""``exosphere trigger --wait`` prints the run id as soon as the run starts, and shows its progress on a terminal."""

from __future__ import annotations

import asyncio
import io
import os
import sys

from rich.console import Console

from exosphere import RunStatus, StateManager
from exosphere.cli import main
from tests.engine_nodes import Waiter
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.waiting import assert_eventually
from tests.nodes import Echo


async def test_the_run_id_comes_at_once_while_the_run_is_still_pending(
    server_address: str, namespace: str, start_runtime: RuntimeFactory, state_manager: StateManager
) -> None:
    await start_runtime([Waiter])
    await state_manager.upsert_graph(
        "held", [gnode(namespace, "Waiter", "w", {"key": "${{ store.key }}"})], store_config={"required_keys": ["key"]}
    )
    key = f"{namespace}-held"
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exosphere.cli", "trigger", namespace, "held", "--store", f"key={key}", "--wait",
        "--address", server_address,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stdout is not None
        async with asyncio.timeout(20):
            first = (await proc.stderr.readline()).decode().strip()
        assert first.startswith("run ") and first.endswith(" started"), first
        run_id = first.split()[1]
        await assert_eventually(lambda: key in Waiter.started, timeout=10)
        assert (await state_manager.get_run(run_id)).status is RunStatus.PENDING  # printed before the end
        Waiter.release(key)
        async with asyncio.timeout(20):
            out = (await proc.stdout.read()).decode()
            assert await proc.wait() == 0
        assert run_id in out and "SUCCESS" in out
    finally:
        Waiter.release(key)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_terminal_sees_the_progress_of_the_run(
    server_address: str, namespace: str, start_runtime: RuntimeFactory, state_manager: StateManager
) -> None:
    await start_runtime([Echo])
    await state_manager.upsert_graph(
        "two",
        [
            gnode(namespace, "Echo", "a", {"text": "x"}, next_nodes=["b"]),
            gnode(namespace, "Echo", "b", {"text": "${{ a.outputs.text }}"}),
        ],
    )
    out, err = io.StringIO(), io.StringIO()
    terminal = Console(file=err, width=100, force_terminal=True, color_system=None)
    argv = ["trigger", namespace, "two", "--wait", "--address", server_address]
    code = await asyncio.to_thread(main, argv, stdout=Console(file=out, width=200, color_system=None), stderr=terminal)
    assert code == 0, err.getvalue()
    progress = err.getvalue()
    run_id = progress.splitlines()[0].split()[1]
    assert progress.splitlines()[0] == f"run {run_id} started"
    assert f"{run_id} SUCCESS" in progress and "2/2" in progress and "SUCCESS 2" in progress
    assert run_id in out.getvalue()
