"""`key` / EXOSPHERE_API_KEY is our API key: exospherehost programs run against a scheduler that requires one."""

from __future__ import annotations

from pathlib import Path

import pytest

import exosphere
from exospherehost import GraphNodeModel, StateManager
from server.config import ServerConfig
from tests.compat.conftest import ProgramFactory

KEY = "k-compat-test"


@pytest.fixture
def server_config(db_path: Path) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, db=str(db_path), api_key=KEY)


async def test_runtime_and_state_manager_use_the_key(
    spawn: ProgramFactory, server_address: str, state_manager_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = await spawn("readme_quickstart.py", env={"EXOSPHERE_API_KEY": KEY})
    nodes = [
        GraphNodeModel(node_name="SampleNode", namespace="MyProject", identifier="s", inputs={"name": "x", "data": "y"})
    ]
    await StateManager("MyProject", state_manager_uri, KEY).upsert_graph("g", nodes, {})  # waits for the runtime
    # exospherehost's StateManager: the key as an argument, or from EXOSPHERE_API_KEY.
    run = await StateManager("MyProject", state_manager_uri, KEY).trigger("g", inputs={"name": "n", "data": "d"})
    monkeypatch.setenv("EXOSPHERE_API_KEY", KEY)
    assert (await StateManager("MyProject", state_manager_uri).get_graph("g"))["validation_status"] == "VALID"
    async with exosphere.StateManager("MyProject", address=server_address, key=KEY) as ours:
        done = await ours.wait(run["run_id"], timeout=20)
    assert done.status is exosphere.RunStatus.SUCCESS
    assert await program.terminate() == 0


async def test_a_wrong_key_is_refused_in_exosphereshosts_words(state_manager_uri: str) -> None:
    with pytest.raises(exosphere.AuthenticationError, match=r"^Failed to get graph: 401 "):
        await StateManager("MyProject", state_manager_uri, "wrong").get_graph("g")
