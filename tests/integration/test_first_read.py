"""Issue 13: the first read of a finished run from SQLite encodes its states straight from their rows
(server/state_frames.py). Through a real scheduler, runtime and SQLite file it reads what the general path (a
store without that fast path) reads of the same file, field for field, in pages within the size budget."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import pytest

from exosphere import RunModel, RunStatus, Runtime, StateManager
from exosphere.v1 import scheduler_pb2 as pb
from exosphere.v1 import scheduler_pb2_grpc
from server import reads, snapshots, state_frames
from server.config import ServerConfig
from server.models import StateRow
from server.sqlite_store import SqliteStore
from tests.engine_nodes import Act, Split
from tests.helpers.graphs import gnode
from tests.helpers.runtimes import RuntimeGroup
from tests.helpers.servers import serving
from tests.helpers.waiting import assert_eventually

# Every kind of state: outputs with quotes, backslashes and non-ASCII text (JSON with escapes), a pruned one, one
# failed and retried (errors, attempts), big ones (pages cut by bytes), all children of the split (parents).
ITEMS = ["plain", 'say "hi"', "back\\slash", "ünïcödé ✓", "prune-me", "fail-me", "b" * 12_000, "c" * 12_000]
RETRY = {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 10}
PAGE_BUDGET = 64 * 1024


async def _pages(address: str, run_id: str, page_size: int) -> list[pb.GetRunResponse]:
    """The run read whole with GetRun, page by page, as the wire carries it."""
    pages: list[pb.GetRunResponse] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        token = ""
        while True:
            page = await stub.GetRun(pb.GetRunRequest(run_id=run_id, page_size=page_size, page_token=token), timeout=10)
            pages.append(page)
            token = page.next_page_token
            if not token:
                return pages


def _states(pages: Sequence[pb.GetRunResponse]) -> list[pb.State]:
    return [state for page in pages for state in page.states]


async def _read(config: ServerConfig, namespace: str, run_id: str) -> tuple[list[pb.GetRunResponse], RunModel]:
    """A scheduler started on the file: the run's first read, raw and page by page, then through the SDK."""
    async with serving(config) as app:
        address = f"127.0.0.1:{app.port}"
        pages = await _pages(address, run_id, page_size=3)
        async with StateManager(namespace, address=address) as sm:
            return pages, await sm.get_run(run_id)


async def _wait(config: ServerConfig, namespace: str, run_id: str) -> RunModel:
    """A scheduler started on the file: the run's first read by ``wait()``, its final snapshot on the watch."""
    async with serving(config) as app, StateManager(namespace, address=f"127.0.0.1:{app.port}") as sm:
        return await sm.wait(run_id, timeout=10)


@pytest.mark.parametrize("snapshotted", [True, False], ids=["snapshotted", "too-big-to-snapshot"])
async def test_a_first_read_from_sqlite_reads_what_the_general_path_reads(
    server_config: ServerConfig, namespace: str, monkeypatch: pytest.MonkeyPatch, snapshotted: bool
) -> None:
    monkeypatch.setattr(reads, "PAGE_BYTES", PAGE_BUDGET)
    if not snapshotted:  # every page read from the store alone, as a run of more than 20,000 states is
        monkeypatch.setattr(snapshots, "MAX_SNAPSHOT_STATES", 1)
    async with serving(server_config) as app, RuntimeGroup() as group:
        address = f"127.0.0.1:{app.port}"
        await group.start(Runtime(nodes=[Split, Act], namespace=namespace, name="rt", address=address))
        async with StateManager(namespace, address=address) as sm:
            await sm.upsert_graph(
                "mixed",
                [
                    gnode(namespace, "Split", "split", {"csv": "x"}, next_nodes=["act"]),
                    gnode(namespace, "Act", "act", {"item": "${{ split.outputs.item }}"}),
                ],
                retry_policy=RETRY,
            )
            done = await sm.trigger_and_wait(
                "mixed", inputs={"csv": ",".join(ITEMS)}, store={"k": 'v "q" ✓'}, states=False, timeout=20
            )
        run_id = done.run_id
        await assert_eventually(lambda: not app.engine.is_live(run_id))
    assert done.status is RunStatus.FAILED

    encoded: list[bool] = []
    encode_rows = state_frames.encode_rows

    def spied(run: str, rows: Sequence[tuple[object, ...]]) -> tuple[list[int], list[bytes]] | None:
        result = encode_rows(run, rows)
        encoded.append(result is not None)
        return result

    converted: list[int] = []  # states read back through StateRow
    get_states = SqliteStore.get_states

    def counted(store: SqliteStore, run: str, after_seq: int, limit: int) -> list[StateRow]:
        states = get_states(store, run, after_seq, limit)
        converted.append(len(states))
        return states

    monkeypatch.setattr(reads, "encode_rows", spied)
    monkeypatch.setattr(SqliteStore, "get_states", counted)
    fast_pages, fast = await _read(server_config, namespace, run_id)
    assert encoded and all(encoded)  # every page of the first read came straight from the rows
    assert not converted  # and no page read a state through StateRow (a page needs the run's row, no state)
    encoded.clear()
    fast_waited = await _wait(server_config, namespace, run_id)
    if snapshotted:  # else the watch follows the run through the store, as it always did
        assert encoded and all(encoded) and not converted

    monkeypatch.delattr(SqliteStore, "get_state_rows")  # the general path: a store without the fast one
    encoded.clear()
    general_pages, general = await _read(server_config, namespace, run_id)
    assert not encoded and sum(converted) >= len(_states(general_pages))  # each state at least once
    general_waited = await _wait(server_config, namespace, run_id)

    assert _states(fast_pages) == _states(general_pages)
    assert [p.run for p in fast_pages] == [p.run for p in general_pages]
    assert fast == general == fast_waited == general_waited
    states = _states(fast_pages)
    assert len(states) == 1 + len(ITEMS) + 1  # the split, one state per item, the failed one's retry
    assert {s.attempt for s in states} == {1, 2} and any(s.HasField("error") for s in states)
    assert any(s.pruned_data_json for s in states) and fast.store == {"k": 'v "q" ✓'}
    assert len(fast_pages) > 3 and all(p.ByteSize() <= PAGE_BUDGET for p in fast_pages)
