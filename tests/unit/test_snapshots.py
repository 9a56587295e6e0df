"""Snapshots of finished runs (server/snapshots.py): cut by bytes as the wire counts them, kept per run row, bounded."""

from __future__ import annotations

from pathlib import Path

from exosphere.v1 import scheduler_pb2 as pb
from server.models import RunRow, StateRow
from server.sizes import SNAPSHOT_EVENT_BYTES
from server.snapshots import CACHE_BYTES, MAX_SNAPSHOT_STATES, SnapshotCache, frame
from server.status import RunStatus, StateStatus
from server.wire import state_to_pb


def _run(run_id: str = "r", *, status: RunStatus = RunStatus.SUCCESS, states: int = 3, updated: int = 1) -> RunRow:
    return RunRow(
        run_id=run_id,
        namespace="ns",
        graph_name="g",
        graph_version=1,
        status=status,
        updated_at_ms=updated,
        state_counts={"SUCCESS": states},
    )


def _states(count: int, size: int = 10) -> list[StateRow]:
    return [
        StateRow(
            state_id=f"r-{seq}",
            run_id="r",
            identifier="n",
            node_name="N",
            status=StateStatus.SUCCESS,
            inputs={"x": "v" * size},
            attempt=1,
            parent_id=None,
            parent_output=0,
            path=(),
            outputs=[{"y": str(seq)}],
            seq=seq,
        )
        for seq in range(count)
    ]


def _framed(states: list[StateRow]) -> tuple[list[int], list[bytes]]:
    return [s.seq for s in states], [frame(state_to_pb(s)) for s in states]


def _parsed(blob: bytes) -> list[pb.State]:
    response = pb.GetRunResponse()
    response.MergeFromString(blob)
    return list(response.states)


def test_a_snapshot_pages_by_sequence_count_and_bytes() -> None:
    snapshot = SnapshotCache().keep(_run(states=10), *_framed(_states(10, size=1000)))
    each = len(snapshot.frames[0])

    blob, last, more = snapshot.page(-1, 4, budget=10**6, reserved=0)
    assert [s.state_id for s in _parsed(blob)] == ["r-0", "r-1", "r-2", "r-3"] and last == 3 and more
    blob, last, more = snapshot.page(3, 0, budget=3 * each + 100, reserved=100)
    assert [s.state_id for s in _parsed(blob)] == ["r-4", "r-5", "r-6"] and last == 6 and more
    blob, last, more = snapshot.page(6, 0, budget=10**6, reserved=0)
    assert len(_parsed(blob)) == 3 and last == 9 and not more
    # Always at least one state, even one bigger than the budget; nothing after the last.
    assert len(_parsed(snapshot.page(-1, 0, budget=1, reserved=0)[0])) == 1
    assert snapshot.page(9, 0, budget=10**6, reserved=0) == (b"", -1, False)


def test_chunks_cover_every_state_once_within_the_budget() -> None:
    snapshot = SnapshotCache().keep(_run(states=25), *_framed(_states(25, size=500)))
    budget = 4 * len(snapshot.frames[-1]) + 50
    chunks = list(snapshot.chunks(budget=budget, reserved=50))
    assert [s.state_id for c in chunks for s in _parsed(c)] == [f"r-{i}" for i in range(25)]
    counts = [len(_parsed(c)) for c in chunks]
    assert all(len(c) <= budget - 50 for c in chunks) and len(chunks) == 7 and counts[-1] == 1
    ends = [sum(counts[: i + 1]) for i in range(len(counts) - 1)]
    # Each chunk is as full as the budget allows: the next state would not have fitted.
    assert all(len(c) + len(snapshot.frames[end]) > budget - 50 for c, end in zip(chunks, ends, strict=False))
    assert list(SnapshotCache().keep(_run(states=0), *_framed([])).chunks(budget=100, reserved=0)) == [b""]


def test_a_snapshot_is_found_only_for_the_row_it_was_made_from() -> None:
    cache = SnapshotCache()
    cache.keep(_run(), *_framed(_states(3)))
    assert cache.get(_run()) is not None
    assert cache.get(_run(updated=2)) is None  # retried and finished again: a new row
    assert cache.get(_run()) is None  # and the old snapshot is gone


def test_only_finished_runs_not_too_big_are_snapshotted() -> None:
    cache = SnapshotCache(max_bytes=4000)
    assert not cache.fits(_run(status=RunStatus.PENDING))
    assert not cache.fits(_run(states=MAX_SNAPSHOT_STATES + 1))
    assert cache.fits(_run())
    cache.keep(_run(), *_framed(_states(3, size=2000)))  # over a quarter of the cache: served once, not kept
    assert cache.get(_run()) is None and not cache.fits(_run())
    assert cache.fits(_run(updated=2))


def test_the_cache_stays_within_its_bytes_dropping_the_least_recently_read() -> None:
    cache = SnapshotCache(max_bytes=3000)
    for name in ("a", "b", "c", "d", "e"):  # 680 bytes each: four fit
        assert cache.keep(_run(name), *_framed(_states(2, size=300))).size == 680
    assert cache.get(_run("a")) is None
    assert all(cache.get(_run(name)) is not None for name in ("b", "c", "d", "e"))
    cache.get(_run("b"))  # read again: now the most recent
    cache.keep(_run("f"), *_framed(_states(2, size=300)))
    assert cache.get(_run("c")) is None
    assert all(cache.get(_run(name)) is not None for name in ("b", "d", "e", "f"))


def test_the_readme_states_the_snapshot_sizes_the_scheduler_uses() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert SNAPSHOT_EVENT_BYTES == 256 * 1024 and "about 256 KiB per event" in readme
    assert MAX_SNAPSHOT_STATES == 20_000 and CACHE_BYTES == 64 * 1024 * 1024
    assert "runs of up to\n20,000 states, 64 MiB in all" in readme


def test_a_first_read_grows_the_snapshot_page_by_page_until_it_is_complete() -> None:
    cache = SnapshotCache()
    rows = _states(5)
    run = _run(states=5)

    partial = cache.add(run, None, *_framed(rows[:2]))
    assert not partial.complete and cache.get(run) is partial
    blob, last, more = partial.page(-1, 2, budget=10**6, reserved=0)
    assert [s.state_id for s in _parsed(blob)] == ["r-0", "r-1"] and last == 1 and more
    # What it holds so far is served again; the end of it is not the end of the run.
    assert partial.page(0, 0, budget=10**6, reserved=0)[1:] == (1, True)

    whole = cache.add(run, partial, *_framed(rows[2:]))
    assert whole is partial and whole.complete
    assert [s.state_id for s in _parsed(whole.page(-1, 0, budget=10**6, reserved=0)[0])] == [f"r-{i}" for i in range(5)]
    assert whole.page(1, 0, budget=10**6, reserved=0)[1:] == (4, False)


def test_a_run_with_fewer_states_than_its_counts_ends_where_the_store_does() -> None:
    cache = SnapshotCache()
    run = _run(states=9)
    partial = cache.add(run, None, *_framed(_states(3)))
    ended = cache.add(run, partial, *_framed([]))
    assert ended.complete and ended.page(2, 0, budget=10**6, reserved=0) == (b"", -1, False)


def test_a_growing_snapshot_too_big_for_the_cache_is_dropped_and_remembered() -> None:
    cache = SnapshotCache(max_bytes=4000)
    run = _run(states=6)
    partial = cache.add(run, None, *_framed(_states(6, size=300)[:2]))
    assert cache.get(run) is partial and cache.fits(run)
    grown = cache.add(run, partial, *_framed(_states(6, size=300)[2:]))
    assert grown.complete and cache.get(run) is None and not cache.fits(run)
