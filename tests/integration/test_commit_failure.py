"""When the database refuses a commit, the scheduler says so to the caller and stops instead of going on with
memory ahead of the database."""

from __future__ import annotations

from pathlib import Path

import pytest

from exosphere import GraphNodeModel, StateManager
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
