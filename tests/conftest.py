"""Fixtures: a real scheduler on 127.0.0.1:0 over a real SQLite file, real runtimes, a fresh namespace per test.

The helpers these are built on (and that tests use directly) are in ``tests/helpers``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from exosphere import BaseNode, Runtime, StateManager
from server.app import App
from server.config import ServerConfig
from tests.helpers.pg import pg_dsn  # noqa: F401  (a fixture: a fresh PostgreSQL database per test)
from tests.helpers.runtimes import RuntimeFactory, RuntimeGroup
from tests.helpers.servers import Start, serving


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
    async with serving(server_config) as app:
        yield app


@pytest.fixture
def server_address(app: App) -> str:
    return f"127.0.0.1:{app.port}"


@pytest.fixture
async def state_manager(namespace: str, server_address: str) -> AsyncIterator[StateManager]:
    async with StateManager(namespace, address=server_address) as sm:
        yield sm


@pytest.fixture
async def start_runtime(namespace: str, server_address: str) -> AsyncIterator[RuntimeFactory]:
    """Start runtimes in this loop; each is registered before the factory returns. At teardown they are stopped,
    and one that crashed fails the test (``tests.helpers.runtimes.RuntimeGroup``)."""
    async with RuntimeGroup() as group:

        async def factory(nodes: Sequence[type[BaseNode]], **options: Any) -> Runtime:
            options.setdefault("namespace", namespace)
            options.setdefault("name", "test-runtime")
            options.setdefault("address", server_address)
            return await group.start(Runtime(nodes=nodes, **options))

        yield factory


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start schedulers in this loop (a restart: the same database and port again); each one a test did not stop is
    stopped at the end, a failed test's too."""
    async with contextlib.AsyncExitStack() as stack:

        async def started(config: ServerConfig) -> App:
            return await stack.enter_async_context(serving(config))

        yield started


@pytest.fixture
async def runtimes() -> AsyncIterator[RuntimeGroup]:
    """Runtimes a test starts (``await runtimes.start(Runtime(...))``), stopped at its end."""
    async with RuntimeGroup() as group:
        yield group
