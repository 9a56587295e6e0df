"""A state's execution in a task of its own (exosphere/_eager.py): what a node sees of asyncio is its own task."""

from __future__ import annotations

import asyncio

import pytest

from exosphere._eager import EAGER, start_eager


async def test_a_node_that_never_waits_is_done_in_its_own_task() -> None:
    seen: list[asyncio.Task[object] | None] = []

    async def quick() -> None:
        seen.append(asyncio.current_task())

    task = start_eager(quick(), "exosphere-state-q")
    if EAGER:
        assert task.done()  # its first (and only) step ran inside start_eager
    await task
    assert seen == [task] and seen[0] is not asyncio.current_task()
    assert task.get_name() == "exosphere-state-q"


async def test_a_timeout_inside_a_node_cancels_the_node_and_never_its_caller() -> None:
    async def slow() -> None:
        async with asyncio.timeout(0.01):
            await asyncio.Event().wait()

    task = start_eager(slow(), "exosphere-state-slow")
    with pytest.raises(TimeoutError):
        await task
    # The node's timeout fired (above) and was aimed at the node: the caller (a runtime's stream reader) has no
    # cancellation pending.
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]


async def test_cancelling_a_waiting_node_cancels_it_where_it_waits() -> None:
    cleaned: list[str] = []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally")

    task = start_eager(stuck(), "exosphere-state-stuck")
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]
