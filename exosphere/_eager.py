"""Start a state's execution as a task of its own, stepped at once where Python allows it.

Most nodes finish without waiting on anything (they compute and return), and scheduling an asyncio task's first
step costs the runtime a loop pass per state. On Python 3.12+ :func:`start_eager` creates the task with
``eager_start``: its first step runs now, inside the new task, so a node that never waits finishes before this
returns. On 3.11 it is an ordinary task.

Either way the node runs in a task of its own: ``asyncio.current_task()``, ``asyncio.timeout()`` and ``TaskGroup``
inside a node see the node's task, never the runtime's stream reader (an earlier version stepped the coroutine in
the reader's task, and a node's ``asyncio.timeout`` then cancelled the reader).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = ["EAGER", "start_eager"]

EAGER = sys.version_info >= (3, 12)


def start_eager(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Start ``coro`` in a task named ``name``; on 3.12+ the task may be done already when this returns."""
    loop = asyncio.get_running_loop()
    if EAGER:
        return asyncio.Task(coro, loop=loop, name=name, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return loop.create_task(coro, name=name)
