"""The three examples of the "Register Node" page run verbatim and behave as the page says."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exosphere import BaseNode, GraphNodeModel, NodeValidationError, RunStatus, Runtime, StateManager
from tests.helpers.servers import stop_process
from tests.helpers.waiting import assert_eventually

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "register_node"


def _load(name: str, node: str) -> type[BaseNode]:
    """The class ``node`` of the page's example ``name``.py, run as written."""
    namespace: dict[str, object] = {"__name__": f"docs_{name}"}
    exec(compile((EXAMPLES / f"{name}.py").read_text(), str(EXAMPLES / f"{name}.py"), "exec"), namespace)
    cls = namespace[node]
    assert isinstance(cls, type) and issubclass(cls, BaseNode), cls
    return cls


def test_invalid_node_is_refused_with_the_field_named() -> None:
    invalid = _load("invalid_node", "InvalidNode")
    with pytest.raises(NodeValidationError) as info:
        Runtime(namespace="MyProject", name="MyRuntime", nodes=[invalid])
    message = str(info.value)
    assert message.startswith("Following errors while validating nodes:")
    assert "InvalidNode.Inputs field 'count' must be of type str, got int" in message


def test_full_and_valid_nodes_pass_validation() -> None:
    full = _load("full_node", "MyNode")
    valid = _load("valid_node", "ValidNode")
    runtime = Runtime(namespace="MyProject", name="MyRuntime", nodes=[full, valid])
    assert runtime.namespace == "MyProject"


def _spawn(namespace: str, address: str) -> subprocess.Popen[str]:
    env = {**os.environ, "EXOSPHERE_SCHEDULER_ADDRESS": address, "EXOSPHERE_LOG_LEVEL": "INFO"}
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / "register.py"), namespace],
        env=env,
        cwd=EXAMPLES,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_registration_example_runs_in_dev_and_prod(server_address: str) -> None:
    """The page's Runtime(...).start() example, one process per namespace, against the real scheduler."""
    procs = [_spawn("dev", server_address), _spawn("prod", server_address)]
    try:
        dev = StateManager("dev", address=server_address)
        prod = StateManager("prod", address=server_address)

        async def registered() -> bool:
            return sorted(await dev.list_nodes()) == ["MyNode", "ValidNode"] and sorted(await prod.list_nodes()) == [
                "MyNode",
                "ValidNode",
            ]

        await assert_eventually(registered, timeout=20)
        for sm in (dev, prod):
            await sm.upsert_graph(
                "valid",
                [GraphNodeModel(node_name="ValidNode", namespace=sm.namespace, identifier="v", inputs={"data": "x"})],
                secrets={"api_key": "sk-123"},
            )
            run = await sm.trigger("valid")
            result = await sm.wait(run.run_id, timeout=20)
            assert result.status is RunStatus.SUCCESS
            assert result.states[0].outputs == [{"result": "success"}]
        # The full node's execute returns None: no outputs, the state still succeeds.
        await dev.upsert_graph(
            "full",
            [
                GraphNodeModel(
                    node_name="MyNode",
                    namespace="dev",
                    identifier="my",
                    inputs={"user_id": "u1", "data": "d", "config": "{}"},
                )
            ],
        )
        result = await dev.wait((await dev.trigger("full")).run_id, timeout=20)
        assert result.status is RunStatus.SUCCESS
        assert result.states[0].outputs == []
        assert "batch_size" not in result.states[0].inputs  # the default applies inside the node
        await dev.close()
        await prod.close()
    finally:
        for code, output in await asyncio.gather(*(stop_process(proc) for proc in procs)):
            assert code == 0, output
            assert "Traceback" not in output, output
