"""Run a coroutine inline until it first waits; only then give it a task of its own.

Most nodes finish without waiting on anything (they compute and return), and an asyncio task per state costs about
2-3 us of the runtime's CPU: creating it, scheduling its first step, its done callbacks. :func:`start_inline`
steps the coroutine at once, in a context of its own as a task would have; a coroutine that finishes needs no task,
and one that waits goes on in a task that resumes it exactly where it stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any

__all__ = ["start_inline"]


def start_inline(coro: Coroutine[Any, Any, None], name: Callable[[], str]) -> asyncio.Task[None] | None:
    """Step ``coro`` now. None when it finished (its exception, if any, raised here); else the task running the rest,
    named ``name()``."""
    context = contextvars.copy_context()
    try:
        yielded = context.run(coro.send, None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_resume(coro, yielded), name=name(), context=context)


async def _resume(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    await _drive(coro, yielded)


@types.coroutine
def _drive(coro: Coroutine[Any, Any, None], yielded: Any) -> Generator[Any, Any, None]:
    """Hand the task what ``coro`` yielded last; resume ``coro`` with what the task sends or throws (a cancellation
    reaches the coroutine as if the task had been its own from the start)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task (a cancellation): passed on
            try:
                yielded = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration:
                return
