"""When the database refuses a commit, the scheduler says so to the caller and stops instead of going on with
memory ahead of the database."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from exosphere import GraphNodeModel, RunStatus, StateManager
from exosphere.errors import ExosphereError
from server.config import ServerConfig
from server.sqlite_store import SqliteStore
from server.store import InMemoryStore
from tests.helpers.runtimes import RuntimeFactory
from tests.helpers.servers import serving
from tests.nodes import Echo


class BrokenDisk(InMemoryStore):
    """Commits fail once ``broken`` is set, as on a full disk."""

    broken = False

    def commit(self, prepared: object) -> None:
        if self.broken:
            raise OSError(28, "No space left on device")
        super().commit(prepared)


class BrokenSqlite(SqliteStore):
    """The same on SQLite, whose small commits run in the event loop's thread (server/commit.py)."""

    broken = False

    def commit(self, prepared: object) -> None:
        if self.broken:
            raise OSError(28, "No space left on device")
        super().commit(prepared)

    def try_commit(self, prepared: object) -> bool:
        if self.broken:
            raise OSError(28, "No space left on device")
        return super().try_commit(prepared)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_failed_commit_fails_the_call_and_stops_the_scheduler(
    start_runtime: RuntimeFactory, tmp_path: Path, backend: str
) -> None:
    store = BrokenDisk() if backend == "memory" else BrokenSqlite(tmp_path / "broken.db")
    config = ServerConfig(host="127.0.0.1", port=0, db=":memory:")
    async with serving(config, store=store) as app:
        assert (app.engine.settings.inline_commits > 0) is (backend == "sqlite")
        address = f"127.0.0.1:{app.port}"
        await start_runtime([Echo], namespace="disk", address=address)
        async with StateManager("disk", address=address) as sm:
            await sm.upsert_graph(
                "g", [GraphNodeModel(node_name="Echo", namespace="disk", identifier="e", inputs={"text": "x"})]
            )
            store.broken = True
            with pytest.raises(ExosphereError, match=r"could not commit to the database \(incident \w+\)"):
                await sm.trigger("g")
        assert app.failed.is_set()
        assert isinstance(app.engine.fatal_error, OSError)
    if isinstance(store, SqliteStore):
        store.close()  # a store given to the App is the caller's to close


async def test_a_writer_holding_the_database_delays_commits_without_stalling_the_scheduler(
    start_runtime: RuntimeFactory, tmp_path: Path
) -> None:
    """Someone writing to the file (the ``sqlite3`` shell) holds SQLite's write lock: small commits, which run in the
    event loop when the file is free, go to the writer thread and wait there, while every other call is answered."""
    path = tmp_path / "held.db"
    async with serving(ServerConfig(host="127.0.0.1", port=0, db=str(path))) as app:
        assert app.engine.settings.inline_commits > 0
        address = f"127.0.0.1:{app.port}"
        await start_runtime([Echo], namespace="held", address=address)
        async with StateManager("held", address=address) as sm:
            await sm.upsert_graph(
                "g", [GraphNodeModel(node_name="Echo", namespace="held", identifier="e", inputs={"text": "x"})]
            )
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # the write lock, held by another connection
            try:
                trigger = asyncio.ensure_future(sm.trigger("g"))
                for _ in range(20):  # the scheduler answers reads meanwhile, each well within a second
                    started = time.monotonic()
                    assert [g.name for g in await sm.list_graphs()] == ["g"]
                    assert time.monotonic() - started < 1.0
                assert not trigger.done()  # its commit waits for the lock, on the writer thread
            finally:
                other.execute("ROLLBACK")
                other.close()
            run = await asyncio.wait_for(trigger, 10)
            assert (await sm.wait(run.run_id, timeout=10)).status is RunStatus.SUCCESS
        assert not app.failed.is_set()
