"""The README's quickstart runs as written: its runtime and its client, against a real scheduler."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from exosphere import StateManager
from tests.helpers.servers import stop_process
from tests.helpers.waiting import assert_eventually

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _spawn(cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "hello.py"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


async def test_quickstart_runtime_and_client(tmp_path: Path, server_address: str) -> None:
    runtime_code, client_code = _python_blocks()[:2]
    assert "Runtime(namespace=" in runtime_code and "StateManager(" in client_code
    (tmp_path / "hello.py").write_text(runtime_code)
    (tmp_path / "client.py").write_text(client_code)
    env = {**os.environ, "EXOSPHERE_SCHEDULER_ADDRESS": server_address}
    runtime = _spawn(tmp_path, env)
    try:
        async with StateManager("MyProject", address=server_address) as sm:

            async def registered() -> bool:
                return await sm.list_nodes() == ["Greet"]

            await assert_eventually(registered, timeout=20)
        client = await asyncio.to_thread(
            subprocess.run, [sys.executable, "client.py"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert client.returncode == 0, client.stderr
        assert "SUCCESS [{'greeting': 'Hello, Ada!'}]" in client.stdout
    finally:
        code, output = await stop_process(runtime)
        assert code == 0, output
