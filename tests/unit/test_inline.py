"""Coroutines stepped inline until they first wait (exosphere/_inline.py), as the runtime runs node executions."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from exosphere._inline import start_inline

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="caller")


async def test_a_coroutine_that_never_waits_finishes_without_a_task() -> None:
    done: list[str] = []

    async def quick() -> None:
        VAR.set("node")
        done.append(VAR.get())

    assert start_inline(quick(), lambda: "quick") is None
    assert done == ["node"]
    assert VAR.get() == "caller"  # its context is its own, as a task's would be


async def test_a_coroutine_that_waits_goes_on_in_a_named_task_with_its_context() -> None:
    gate = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    async def slow() -> None:
        VAR.set("node")
        seen.append(await gate)
        await asyncio.sleep(0)  # a bare yield, as well as a future
        seen.append(VAR.get())

    task = start_inline(slow(), lambda: "slow-state")
    assert task is not None and task.get_name() == "slow-state"
    assert seen == [] and VAR.get() == "caller"
    gate.set_result(42)
    await asyncio.wait_for(task, 5)
    assert seen == [42, "node"]


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    cleaned: list[str] = []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append("finally")

    task = start_inline(stuck(), lambda: "stuck")
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"] and task.cancelled()


async def test_errors_surface_inline_or_from_the_task() -> None:
    async def fails_at_once() -> None:
        raise ValueError("now")

    with pytest.raises(ValueError, match="now"):
        start_inline(fails_at_once(), lambda: "x")

    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    task = start_inline(fails_later(), lambda: "y")
    assert task is not None
    with pytest.raises(ValueError, match="later"):
        await task
