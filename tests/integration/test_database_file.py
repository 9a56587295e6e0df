"""The database file at the edges, through the real exosphere-server process.

A file that cannot be used stops the scheduler at start with one line on stderr naming it and the problem (no
traceback, exit 1); a file that is not ours is refused without being written; the files are owner-only; one
unreadable row is reported and skipped, not a reason to stay down.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from exosphere import GraphNodeModel, RunStatus, Runtime, StateManager
from server.app import App
from server.config import ServerConfig
from server.sqlite_schema import APPLICATION_ID, SCHEMA_VERSION
from server.sqlite_store import SqliteStore
from server.store import WriteBatch
from tests.helpers.runtimes import running
from tests.helpers.servers import ServerProcess
from tests.nodes import Echo
from tests.unit.test_store_contract import run, state

# Root may write any file: drop that power so a read-only file is read-only (setpriv is in util-linux).
AS_UNPRIVILEGED = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--") if os.geteuid() == 0 else ()


def refused(db: Path | str, *extra: str, prefix: tuple[str, ...] = ()) -> str:
    """Start the server on ``db``, expect it to exit 1 at once; its one line of stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXOSPHERE_")}
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "exosphere_server", "--port", "0", "--db", str(db), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"the server started on {db}:\n{exc.stdout!r}") from None
    assert done.returncode == 1, done.stderr
    assert "listening" not in done.stdout
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("exosphere-server: database "), lines[0]
    return lines[0]


def ours(path: Path) -> Path:
    """A database of ours with runs in it, closed, and its secrets key file beside it, as a server leaves them."""
    key = os.open(f"{path}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(key, base64.b64encode(os.urandom(32)) + b"\n")
    os.close(key)
    store = SqliteStore(path)
    store.write(WriteBatch(new_states=[state(f"r{i}", 0) for i in range(200)], runs=[run(f"r{i}") for i in range(200)]))
    store.close()
    return path


def marker(path: Path) -> tuple[int, int]:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA application_id").fetchone()[0], db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


# ------------------------------------------------------------------------------------------ unusable files


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("shopping list\n" * 100)
    assert refused(db) == f"exosphere-server: database {db} is not an SQLite database (or is encrypted)"
    assert db.read_text() == "shopping list\n" * 100
    assert not Path(f"{db}.key").exists()  # nothing created beside a file we refused


@pytest.mark.parametrize("damage", ["page", "truncated"])
def test_a_corrupt_database_is_refused(tmp_path: Path, damage: str) -> None:
    db = ours(tmp_path / "x.db")
    size = db.stat().st_size
    if damage == "page":
        with db.open("r+b") as f:
            f.seek(4096)
            f.write(b"\xa5" * 4096)
    else:
        os.truncate(db, size // 2)
    line = refused(db)
    assert line.startswith(f"exosphere-server: database {db} is corrupt (database disk image is malformed)"), line


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert refused(tmp_path) == (
        f"exosphere-server: database {tmp_path} is a directory; give the path of a file (--db)"
    )
    assert not Path(f"{tmp_path}.key").exists()


def test_a_missing_directory_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "missing" / "x.db"
    assert refused(db) == f"exosphere-server: database {db}: directory {db.parent} does not exist"


def test_a_read_only_database_is_refused_at_start_not_at_the_first_trigger(tmp_path: Path) -> None:
    if AS_UNPRIVILEGED and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: every file is writable")
    db = ours(tmp_path / "x.db")
    db.chmod(0o444)
    line = refused(db, prefix=AS_UNPRIVILEGED)
    assert line.startswith(f"exosphere-server: database {db} cannot be written (attempt to write a readonly"), line


# ------------------------------------------------------------------------------------------ not ours


def test_another_programs_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    other = sqlite3.connect(db)
    other.execute("CREATE TABLE states (code TEXT PRIMARY KEY, name TEXT)")
    other.execute("INSERT INTO states VALUES ('CA', 'California')")
    other.commit()
    other.close()
    before = db.read_bytes()
    assert refused(db) == (
        f"exosphere-server: database {db} is not an exosphere database (it has tables states and no exosphere "
        "marker); refusing to use it"
    )
    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists()  # not even switched to WAL


def test_a_database_marked_by_another_application_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    other = sqlite3.connect(db)
    other.execute("PRAGMA application_id=1234")
    other.close()
    assert refused(db) == (
        f"exosphere-server: database {db} belongs to another application (application_id 0x4d2); refusing"
    )


def test_a_database_from_a_newer_server_is_refused(tmp_path: Path) -> None:
    db = ours(tmp_path / "x.db")
    newer = sqlite3.connect(db)
    newer.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    newer.close()
    assert refused(db) == (
        f"exosphere-server: database {db} was written by a newer exosphere-server (schema version "
        f"{SCHEMA_VERSION + 1}; this one knows up to {SCHEMA_VERSION})"
    )


# ------------------------------------------------------------------------------------------ files that are used


def test_an_empty_file_is_initialised_and_every_file_is_owner_only(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch(mode=0o600)
    with ServerProcess(empty, "--durability", "full") as server:
        assert "Traceback" not in server.output
    assert marker(empty) == (APPLICATION_ID, SCHEMA_VERSION)

    db = tmp_path / "new.db"
    old = os.umask(0)  # the server inherits a umask that would let anyone read
    try:
        server = ServerProcess(db).start()
    finally:
        os.umask(old)
    try:
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.key"), Path(f"{db}.lock")]
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    finally:
        assert server.stop() == 0
    assert "readable by others" not in server.output


async def test_a_database_from_before_the_marker_is_adopted_with_its_runs(tmp_path: Path) -> None:
    db = ours(tmp_path / "old.db")
    legacy = sqlite3.connect(db)  # as an exosphere-server before the marker left it
    legacy.execute("PRAGMA application_id=0")
    legacy.execute("PRAGMA user_version=0")
    legacy.execute("DROP INDEX runs_by_time")
    legacy.execute("DROP INDEX runs_by_graph")
    legacy.execute("CREATE INDEX runs_by_namespace ON runs (namespace, created_at_ms DESC)")
    for column in ("runtime_name", "started_at_ms", "ran_ms"):  # schema 2's columns were not there yet
        legacy.execute(f"ALTER TABLE states DROP COLUMN {column}")
    legacy.commit()
    legacy.close()
    with ServerProcess(db) as server:
        async with StateManager("ns", address=server.address) as sm:
            runs, _ = await sm.list_runs(page_size=1000)
        assert len(runs) == 200
    assert "Traceback" not in server.output
    assert marker(db) == (APPLICATION_ID, SCHEMA_VERSION)
    check = sqlite3.connect(db)
    indexes = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL")}
    check.close()
    assert indexes == {"runs_pending", "runs_by_time", "runs_by_graph"}


def test_durability_sets_how_commits_are_synced(tmp_path: Path) -> None:
    assert ServerConfig.from_env({}).durability == "normal"
    assert ServerConfig.from_env({"EXOSPHERE_DURABILITY": "full"}).durability == "full"
    assert ServerConfig.from_env({"EXOSPHERE_DURABILITY": "full"}, durability="normal").durability == "normal"
    for durability, level in (("normal", "NORMAL"), ("full", "FULL")):
        app = App(ServerConfig(port=0, db=str(tmp_path / f"{durability}.db"), durability=durability))
        try:
            assert isinstance(app.store, SqliteStore)
            assert app.store.synchronous == level
        finally:
            app.store.close()
    done = subprocess.run(
        [sys.executable, "-m", "exosphere_server", "--db", str(tmp_path / "x.db"), "--durability", "sometimes"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 2
    assert "argument --durability: invalid choice: 'sometimes' (choose from 'normal', 'full')" in done.stderr


# ------------------------------------------------------------------------------------------ unreadable rows


def registered(address: str) -> AbstractAsyncContextManager[Runtime]:
    return running(Runtime(namespace="rows", name="rt", nodes=[Echo], address=address), strict_stop=True)


async def test_one_unreadable_row_is_reported_and_the_rest_is_served(tmp_path: Path) -> None:
    db = tmp_path / "rows.db"
    echo = GraphNodeModel(node_name="Echo", namespace="rows", identifier="e", inputs={"text": "hi"})
    server = await asyncio.to_thread(ServerProcess(db).start)
    try:
        async with StateManager("rows", address=server.address) as sm:
            async with registered(server.address):
                await sm.upsert_graph("good", [echo])
                await sm.upsert_graph("bad", [echo])
            # No runtime now: both runs stay PENDING across the restart.
            kept, broken = [r.run_id for r in await sm.trigger_many("good", [{}, {}])]
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    edit = sqlite3.connect(db)
    edit.execute("UPDATE graphs SET spec='{\"namespace\": \"rows\"' WHERE name='bad'")
    edit.execute("UPDATE states SET inputs='not json' WHERE run_id=?", (broken,))
    edit.execute("INSERT INTO nodes VALUES ('rows', 'Ghost', x'ffffffff', 0)")
    edit.commit()
    edit.close()

    server = await asyncio.to_thread(ServerProcess(db).start)
    try:
        async with StateManager("rows", address=server.address) as sm:
            assert [g.name for g in await sm.list_graphs()] == ["good"]
            async with registered(server.address):
                assert (await sm.wait(kept, timeout=20)).status is RunStatus.SUCCESS
                assert (await sm.trigger_and_wait("good", timeout=20)).status is RunStatus.SUCCESS
    finally:
        assert await asyncio.to_thread(server.stop) == 0
    output = server.output
    assert "Traceback" not in output
    assert "stored row unreadable, skipped: graphs namespace=rows name=bad version=1" in output
    assert f"stored row unreadable, run not recovered: states run_id={broken} seq=0: not JSON" in output
    schema_lines = [line for line in output.splitlines() if "stored schema unreadable" in line]
    assert len(schema_lines) == 1 and "Ghost" in schema_lines[0] and "not a NodeSchema message" in schema_lines[0]
