"""How many states a runtime executes at once, across its streams to every scheduler replica.

``asyncio.Semaphore`` costs two coroutines per ``async with`` even when a slot is free (about 0.5 us a state);
:class:`Limiter` takes a free slot without awaiting, and only a state that must wait for one awaits. A released
slot goes straight to the longest waiter, so a waiter cannot be overtaken by a later ``try_acquire``.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Limiter"]


class Limiter:
    """A counting semaphore with a synchronous fast path. Create it inside the running loop."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_acquire(self) -> bool:
        """Take a free slot now; False when none is free (or others wait for one)."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a slot, waiting for one to be released."""
        if self.try_acquire():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # a slot was handed over as the wait was cancelled: pass it on
            elif waiter in self._waiters:  # release() may have dropped it already, cancelled, on its way to a live one
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter still waiting, else to the free count."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
