"""Runtimes running as tasks of the test's event loop.

Every runtime is stopped at the end of its block (or of its fixture). One whose task ended with an exception
fails the test there with ``RuntimeCrashedError``, caused by the runtime's exception: a crash swallowed at
teardown hides a bug. A runtime that is still busy ``stop_timeout`` seconds after ``stop()`` is cancelled; that
fails the test only with ``strict_stop=True`` (by default a node may sleep longer than the test).
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from exosphere import BaseNode, Runtime

logger = logging.getLogger(__name__)

R = TypeVar("R", bound=Runtime)


class RuntimeCrashedError(AssertionError):
    """A runtime's task ended with an exception (its ``__cause__``) instead of returning after ``stop()``."""

    def __init__(self, runtime: Runtime, error: BaseException) -> None:
        super().__init__(
            f"runtime {runtime.name!r} in namespace {runtime.namespace!r} crashed: {type(error).__name__}: {error}"
        )
        self.runtime = runtime
        self.error = error
        self.__cause__ = error


class RuntimeFactory(Protocol):
    """The ``start_runtime`` fixture: builds a ``Runtime`` for the test's namespace and scheduler, runs it in the
    test's loop and returns it registered. ``options`` are ``Runtime``'s arguments (they override the defaults)."""

    async def __call__(self, nodes: Sequence[type[BaseNode]], **options: Any) -> Runtime: ...


class RuntimeGroup:
    """Runtimes running as tasks of this loop. ``async with RuntimeGroup() as group: await group.start(rt)``.

    Leaving the block (or ``close()``) stops them all and raises ``RuntimeCrashedError`` for one that crashed
    (an ``ExceptionGroup`` for several). With ``strict_stop=True``, one still running ``stop_timeout`` seconds
    after ``stop()`` fails too, for tests where stopping promptly is part of the behaviour. When the block itself
    raised, these failures are added to its exception as notes instead, so neither is hidden.
    """

    def __init__(self, *, stop_timeout: float = 10.0, strict_stop: bool = False) -> None:
        self.stop_timeout = stop_timeout
        self.strict_stop = strict_stop
        self._tasks: dict[Runtime, asyncio.Task[None]] = {}

    async def start(self, runtime: R, *, registered: bool = True, timeout: float = 10.0) -> R:
        """Run ``runtime`` in this loop; unless ``registered=False``, return once the scheduler registered it."""
        if runtime in self._tasks:
            raise ValueError(f"runtime {runtime.name!r} is already running in this group")
        task = asyncio.get_running_loop().create_task(runtime.run(), name=f"test-runtime-{runtime.name}")
        self._tasks[runtime] = task
        # Let run() begin: it makes a fresh stop event, so a Runtime.stop() before that is lost and the runtime
        # would run until cancelled.
        await asyncio.sleep(0)
        if registered:
            await self.wait_registered(runtime, timeout=timeout)
        return runtime

    async def wait_registered(self, runtime: Runtime, *, timeout: float = 10.0) -> None:
        """Wait until ``runtime`` is registered (again, after a reconnect); fail at once if its task ends first."""
        task = self._tasks[runtime]
        waiter = asyncio.ensure_future(runtime.wait_registered(timeout))
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
                await asyncio.wait({waiter})
        if not waiter.cancelled():
            error = waiter.exception()
            if error is None:
                return
            if isinstance(error, TimeoutError):
                raise AssertionError(f"runtime {runtime.name!r} not registered within {timeout}s") from None
            raise error
        del self._tasks[runtime]
        crash = _crash(runtime, task)
        raise crash or AssertionError(f"runtime {runtime.name!r} returned before it registered")

    async def stop(self, runtime: Runtime) -> None:
        """Stop one runtime and wait for it; raise ``RuntimeCrashedError`` if it crashed (and, with ``strict_stop``,
        ``AssertionError`` if it was still running ``stop_timeout`` seconds later)."""
        task = self._tasks.pop(runtime)
        failure = await self._stopped(runtime, task)
        if failure is not None:
            raise failure

    async def close(self) -> None:
        """Stop every runtime (all at once) and wait for them; raise for the ones that failed. Idempotent."""
        tasks, self._tasks = self._tasks, {}
        failures = [f for f in await asyncio.gather(*(self._stopped(r, t) for r, t in tasks.items())) if f]
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup(f"{len(failures)} runtimes failed", failures)

    async def _stopped(self, runtime: Runtime, task: asyncio.Task[None]) -> AssertionError | None:
        runtime.stop()
        if not task.done():
            await asyncio.wait({task}, timeout=self.stop_timeout)
        if task.done():
            return _crash(runtime, task)
        logger.warning("runtime still busy after stop, cancelled runtime=%s in_s=%s", runtime.name, self.stop_timeout)
        task.cancel()
        await asyncio.wait({task})
        crash = _crash(runtime, task)
        if crash is None and self.strict_stop:
            return AssertionError(f"runtime {runtime.name!r} still running {self.stop_timeout}s after stop()")
        return crash

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self.close()
        except (AssertionError, ExceptionGroup) as failure:
            if exc is None:
                raise
            exc.add_note("and at teardown:\n" + "".join(traceback.format_exception(failure)))


def _crash(runtime: Runtime, task: asyncio.Task[None]) -> RuntimeCrashedError | None:
    if task.cancelled():
        return None
    error = task.exception()
    return None if error is None else RuntimeCrashedError(runtime, error)


@asynccontextmanager
async def running(
    runtime: R, *, registered: bool = True, timeout: float = 10.0, stop_timeout: float = 10.0, strict_stop: bool = False
) -> AsyncIterator[R]:
    """``async with running(Runtime(...)) as rt:`` runs one runtime for the block (see ``RuntimeGroup``)."""
    async with RuntimeGroup(stop_timeout=stop_timeout, strict_stop=strict_stop) as group:
        yield await group.start(runtime, registered=registered, timeout=timeout)
