"""PostgreSQL for tests: a fresh database per test, dropped at teardown, or a skip that says how to enable them.

``EXOSPHERE_TEST_POSTGRES`` names a server and a database to connect to for ``CREATE DATABASE`` (default the local
server). Where it cannot be reached the tests are skipped; ``EXOSPHERE_REQUIRE_POSTGRES=1`` (set by ``.ci/run``)
makes that a failure, so CI always runs them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from server.config import describe_dsn

__all__ = ["admin_dsn", "on_admin", "pg_dsn", "postgres_or_skip", "run_sync"]

DSN_ENV = "EXOSPHERE_TEST_POSTGRES"
REQUIRE_ENV = "EXOSPHERE_REQUIRE_POSTGRES"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")
_unreachable: list[str] = []  # why the server could not be used, found once per session


def admin_dsn() -> str:
    return os.environ.get(DSN_ENV) or DEFAULT_DSN


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a loop of its own (in a thread: the test's loop may be running)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(60)


async def on_admin(*statements: str, dsn: str | None = None) -> None:
    """Run statements on a connection of their own (``CREATE DATABASE`` cannot run in a transaction)."""
    import asyncpg

    conn = await asyncpg.connect(dsn or admin_dsn(), timeout=5)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def postgres_or_skip() -> str:
    """The admin DSN when the server answers; else skip (or fail under ``EXOSPHERE_REQUIRE_POSTGRES=1``)."""
    dsn = admin_dsn()
    if not _unreachable:
        try:
            run_sync(on_admin("SELECT 1"))
            _unreachable.append("")
        except ImportError as exc:
            _unreachable.append(f"asyncpg is not installed ({exc}); make install installs it")
        except Exception as exc:
            _unreachable.append(f"PostgreSQL at {describe_dsn(dsn)} is unreachable ({type(exc).__name__}: {exc})")
    if _unreachable[0]:
        message = (
            f"{_unreachable[0]}; to run the PostgreSQL tests start a server or set {DSN_ENV}="
            "postgresql://user@host:port/db (a role allowed to CREATE DATABASE)"
        )
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1 makes this a failure)")
        pytest.skip(message)
    return dsn


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


@pytest.fixture
def pg_dsn() -> Iterator[str]:
    """A DSN for a database that exists only for this test."""
    admin = postgres_or_skip()
    name = f"exo_test_{uuid.uuid4().hex[:16]}"
    run_sync(on_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(admin, name)
    finally:
        run_sync(on_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
