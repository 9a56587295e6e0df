"""The runtime's concurrency limit across its streams (exosphere/_limiter.py)."""

from __future__ import annotations

import asyncio

import pytest

from exosphere._limiter import Limiter


async def test_free_slots_are_taken_without_waiting_and_given_back() -> None:
    limiter = Limiter(2)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    limiter.release()
    assert limiter.try_acquire()


async def test_a_released_slot_goes_to_the_longest_waiter_before_anyone_else() -> None:
    limiter = Limiter(1)
    assert limiter.try_acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await limiter.acquire()
        order.append(name)

    first = asyncio.create_task(wait("first"))
    second = asyncio.create_task(wait("second"))
    await asyncio.sleep(0)
    limiter.release()
    assert not limiter.try_acquire()  # handed to a waiter, not free for a newcomer
    await asyncio.wait_for(first, 5)
    assert order == ["first"] and not second.done()
    limiter.release()
    await asyncio.wait_for(second, 5)
    assert order == ["first", "second"]
    limiter.release()
    assert limiter.try_acquire()


async def test_a_cancelled_waiter_loses_no_slot() -> None:
    limiter = Limiter(1)
    assert limiter.try_acquire()
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    limiter.release()
    assert limiter.try_acquire()  # the slot was not kept for the cancelled waiter

    handed = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    limiter.release()  # handed over...
    handed.cancel()  # ...and cancelled before it resumed: the slot is passed on
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert limiter.try_acquire() and not limiter.try_acquire()


async def test_a_waiter_cancelled_while_a_release_passes_it_over_raises_only_its_cancellation() -> None:
    limiter = Limiter(1)
    assert limiter.try_acquire()
    waiting = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)  # it waits for the slot
    waiting.cancel()  # cancelled, and before it resumes ...
    limiter.release()  # ... the release drops its (cancelled) waiter and frees the slot
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert limiter.try_acquire()  # the slot is free, once
    assert not limiter.try_acquire()
