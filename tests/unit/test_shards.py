"""Shard ownership without sockets: a run lives where its shard is owned, and moves with it."""

from __future__ import annotations

import pytest

from exosphere.errors import ConnectionFailedError
from server.shards import MAX_SHARDS, new_run_id, shard_of
from server.status import RunStatus, StateStatus
from server.store import InMemoryStore
from tests.helpers.engine import Kit, node, schema

ECHO = schema("Echo")


def test_the_shard_is_part_of_the_run_id() -> None:
    for shard in (0, 1, 63, MAX_SHARDS - 1):
        run_id = new_run_id(shard)
        assert len(run_id) == 32 and int(run_id, 16) >= 0
        assert shard_of(run_id, MAX_SHARDS) == shard
        assert shard_of(run_id, 64) == shard % 64
    assert shard_of("not-hex", 64) == 0
    assert shard_of("2f0e3c9b8a7d4e6f9a0b1c2d3e4f5a6b", 64) == 0x2F0 % 64  # ids made before shards existed


async def test_a_scheduler_owning_every_shard_runs_triggers_across_them() -> None:
    kit = await Kit(shard_count=8).start()
    try:
        session = kit.connect(ECHO)
        await kit.graph("g", [node("e")])
        run_ids = [await kit.trigger("g", inputs={"x": str(i)}) for i in range(40)]
        await kit.run_all(session)
        assert {shard_of(r, 8) for r in run_ids} <= set(range(8))
        assert len({shard_of(r, 8) for r in run_ids}) > 1
        for run_id in run_ids:
            assert (await kit.run(run_id))[0].status is RunStatus.SUCCESS
    finally:
        await kit.stop()


async def test_a_scheduler_without_shards_refuses_triggers() -> None:
    kit = await Kit(shard_count=4, own_all=False).start()
    try:
        kit.connect(ECHO)
        await kit.graph("g", [node("e")])
        with pytest.raises(ConnectionFailedError, match="owns no shard"):
            await kit.trigger("g", inputs={"x": "1"})
    finally:
        await kit.stop()


async def test_a_shard_handed_over_carries_its_runs_to_the_next_owner() -> None:
    store = InMemoryStore()
    first = await Kit(store, shard_count=2, own_all=False).start()
    second = await Kit(store, shard_count=2, own_all=False).start()
    try:
        first.engine.shards.acquire([0, 1])
        session = first.connect(ECHO, credit=1)
        await first.graph("g", [node("e")])
        run_a = await first.trigger("g", inputs={"x": "a"})
        run_b = await first.trigger("g", inputs={"x": "b"})
        [running] = await first.dispatched(session)  # credit 1: one runs, the other waits
        events = first.engine.watch_run(running.run_id)
        await anext(events)

        moved = await first.engine.shards.release([0, 1])
        assert moved == 2
        assert not first.engine.is_live(run_a) and not first.engine.is_live(run_b)
        assert session.cancels == [running.state_id]  # withdrawn from its runtime: the next owner runs it again
        with pytest.raises(ConnectionFailedError, match="moved to another scheduler replica"):
            await anext(events)
        first.answer(session, running)  # the runtime's late answer: ignored, its credit returns
        assert first.engine.ignored_results == 1 and session.credit == 1
        assert await first.dispatched(session) == []  # the waiting one is not dispatched here any more
        with pytest.raises(ConnectionFailedError, match="another scheduler replica"):
            await first.engine.cancel_run(run_a)

        await second.restart()  # sees the graph the first saved
        second.engine.shards.acquire([0, 1])
        other = second.connect(ECHO)
        await second.run_all(other)
        for run_id, x in ((run_a, "a"), (run_b, "b")):
            row, [state] = await second.run(run_id)
            assert row.status is RunStatus.SUCCESS
            assert (state.status, state.outputs) == (StateStatus.SUCCESS, [{"y": x}])
    finally:
        await first.stop()
        await second.stop()
