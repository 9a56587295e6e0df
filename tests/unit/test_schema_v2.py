"""Schema version 2: a database written by version 1 gains the columns of who ran a state, keeping its rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from server.sqlite_schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from server.sqlite_store import SqliteStore


def test_a_version_1_database_is_migrated_and_its_states_read_back(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    old = sqlite3.connect(path)
    for statement in MIGRATIONS[1]:
        old.execute(statement)
    old.execute(f"PRAGMA application_id={APPLICATION_ID}")
    old.execute("PRAGMA user_version=1")
    old.execute(
        "INSERT INTO states VALUES ('r', 0, 'first', 'Echo', 'SUCCESS', '{}', 1, NULL, 0, '[0]', '[]', NULL, NULL,"
        " 1000, 2000, 0)"
    )
    old.commit()
    old.close()
    store = SqliteStore(path)
    try:
        [state] = store.get_states("r", -1, 0)
    finally:
        store.close()
    assert (state.identifier, state.status, state.updated_at_ms) == ("first", "SUCCESS", 2000)
    assert (state.runtime_name, state.started_at_ms, state.ran_ms) == ("", 0, 0)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    check.close()
