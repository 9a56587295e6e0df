"""Fixtures: a real scheduler on 127.0.0.1:0 over a real SQLite file, real runtimes, a fresh namespace per test."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from exosphere import BaseNode, Runtime, StateManager
from server.app import App
from server.config import ServerConfig
from tests.pg import pg_dsn  # noqa: F401  (a fixture: a fresh PostgreSQL database per test)


async def assert_eventually(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Wait until ``predicate`` is true; fail with a clear message after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "exosphere.db"


@pytest.fixture
def server_config(db_path: Path) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, db=str(db_path))


@pytest.fixture
async def app(server_config: ServerConfig) -> AsyncIterator[App]:
    app = App(server_config)
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0.5)


@pytest.fixture
def server_address(app: App) -> str:
    return f"127.0.0.1:{app.port}"


@pytest.fixture
async def state_manager(namespace: str, server_address: str) -> AsyncIterator[StateManager]:
    async with StateManager(namespace, address=server_address) as sm:
        yield sm


RuntimeFactory = Callable[..., Awaitable[Runtime]]


@contextlib.asynccontextmanager
async def runtimes_on(namespace: str, address: str) -> AsyncIterator[RuntimeFactory]:
    """Start runtimes in this loop against ``address``; each is registered before the factory returns, and all are
    stopped on exit."""
    tasks: list[tuple[Runtime, asyncio.Task[Any]]] = []

    async def factory(nodes: Sequence[type[BaseNode]], **kwargs: Any) -> Runtime:
        kwargs.setdefault("namespace", namespace)
        kwargs.setdefault("name", "test-runtime")
        kwargs.setdefault("address", address)
        runtime = Runtime(nodes=nodes, **kwargs)
        task = asyncio.get_running_loop().create_task(runtime.run())
        tasks.append((runtime, task))
        await runtime.wait_registered()
        return runtime

    try:
        yield factory
    finally:
        for runtime, _ in tasks:
            runtime.stop()
        for _, task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(10):
                    await task


@pytest.fixture
async def start_runtime(namespace: str, server_address: str) -> AsyncIterator[RuntimeFactory]:
    """Start runtimes against the test's scheduler; stopped at teardown."""
    async with runtimes_on(namespace, server_address) as factory:
        yield factory
