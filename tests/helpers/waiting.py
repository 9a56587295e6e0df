"""Waiting in tests: poll a condition with a deadline, never a bare ``sleep``."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

Predicate = Callable[[], Awaitable[bool]] | Callable[[], bool]


async def assert_eventually(
    predicate: Predicate,
    timeout: float = 10.0,
    interval: float = 0.01,
    *,
    message: str | Callable[[], str] | None = None,
) -> None:
    """Wait until ``predicate()`` (sync or async) is true; after ``timeout`` seconds fail with ``AssertionError``.

    ``message`` (or a function giving it, called at the deadline, to show what was observed) says what was awaited.
    An exception raised by ``predicate`` propagates at once, so a predicate can fail early (a process exited).
    """
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            while True:
                result = predicate()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        if not deadline.expired():  # the predicate's own TimeoutError
            raise
        what = message() if callable(message) else message or getattr(predicate, "__qualname__", repr(predicate))
        raise AssertionError(f"not true within {timeout}s: {what}") from None
