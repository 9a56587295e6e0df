"""A Runtime's life as a caller sees it: stop at any moment, and hear at once why it could not register."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exosphere import Runtime
from exosphere.errors import AuthenticationError, ExosphereError
from server.config import ServerConfig
from tests.helpers.servers import serving
from tests.nodes import Echo


async def test_stop_right_after_start_stops_the_runtime(server_address: str, namespace: str) -> None:
    runtime = Runtime(namespace=namespace, name="rt", nodes=[Echo], address=server_address)
    task = runtime.start()
    assert task is not None
    runtime.stop()  # before run() had a chance to begin: it used to be lost, and the runtime ran on
    await asyncio.wait_for(task, 10)


async def test_wait_registered_raises_the_runtimes_own_error_at_once(tmp_path: Path, namespace: str) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, db=str(tmp_path / "k.db"), api_key="the-right-key")
    async with serving(config) as app:
        runtime = Runtime(
            namespace=namespace, name="rt", nodes=[Echo], address=f"127.0.0.1:{app.port}", key="a-wrong-key"
        )
        task = runtime.start()
        assert task is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AuthenticationError):
            await runtime.wait_registered(timeout=30)
        assert loop.time() - started < 10  # not the whole timeout
        with pytest.raises(AuthenticationError):
            await task


async def test_wait_registered_on_a_runtime_stopped_before_it_registered(namespace: str) -> None:
    runtime = Runtime(namespace=namespace, name="rt", nodes=[Echo], address="127.0.0.1:1")  # nothing listens
    task = runtime.start()
    assert task is not None
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(runtime.wait_registered(timeout=30))
    await asyncio.sleep(0.2)
    runtime.stop()
    with pytest.raises(ExosphereError, match="stopped before it registered"):
        await waiting
    await asyncio.wait_for(task, 10)
