"""A runtime written in Node.js (examples/node-runtime) runs a graph node against the Python scheduler."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.helpers.node import NODE_RUNTIME_DIR, ensure_node_modules

RUNTIME_DIR = NODE_RUNTIME_DIR


async def _wait_registered(proc: asyncio.subprocess.Process) -> None:
    """Read the runtime's stdout until it prints `registered session=<id>`."""
    assert proc.stdout is not None and proc.stderr is not None
    while True:
        line = await proc.stdout.readline()
        if not line:  # the runtime exited before registering: its stderr says why
            await proc.wait()
            err = (await proc.stderr.read()).decode(errors="replace")
            pytest.fail(f"node runtime exited with {proc.returncode} before registering:\n{err}")
        if line.startswith(b"registered"):
            return


async def _stop(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM the runtime (its own PID only) and return its exit code."""
    if proc.returncode is None:
        proc.terminate()
    try:
        return await asyncio.wait_for(proc.wait(), timeout=10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("node runtime did not exit within 10 s of SIGTERM") from None


@pytest.mark.slow
@pytest.mark.timeout(180)  # a first `npm ci` may take a while
async def test_node_runtime_runs_a_graph(server_address: str, namespace: str) -> None:
    from exosphere import GraphNodeModel, StateManager

    await ensure_node_modules()
    env = {**os.environ, "EXOSPHERE_SCHEDULER_ADDRESS": server_address, "EXOSPHERE_NAMESPACE": namespace}
    # Async subprocess: the scheduler under test runs on this event loop, so nothing here may block it.
    proc = await asyncio.create_subprocess_exec(
        "node",
        "runtime.js",
        cwd=RUNTIME_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(_wait_registered(proc), timeout=30)

        sm = StateManager(namespace, address=server_address)
        try:
            await sm.upsert_graph(
                "greet",
                [
                    GraphNodeModel(
                        node_name="Greet",
                        namespace=namespace,
                        identifier="greet",
                        inputs={"name": "${{ store.who }}"},
                        next_nodes=[],
                    )
                ],
                store_config={"required_keys": ["who"]},
            )
            run = await sm.trigger("greet", store={"who": "Ada"})
            result = await sm.wait(run.run_id, timeout=30)
            assert result.status == "SUCCESS"  # RunStatus is a str enum
            assert result.states[0].outputs == [{"greeting": "Hello, Ada!"}]
        finally:
            await sm.close()
    finally:
        returncode = await _stop(proc)
    assert returncode == 0, f"node runtime exited with {returncode} on SIGTERM"
