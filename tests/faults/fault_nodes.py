"""Nodes for the fault tests. They leave evidence of every execution so a test can count re-executions.

Runtimes in child processes append one line per event to the file named by ``$EXOSPHERE_FAULT_LOG``:
``<event> <pid> <key>`` (events: ``exec``, ``start``, ``end``, ``cancel``). The file is opened with ``O_APPEND`` and
each line is written with one ``write()``, so several processes can share it. In-process runtimes (same process
as the test) read the class-level counters instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import timedelta
from typing import ClassVar

from pydantic import BaseModel

from exosphere import BaseNode

LOG_ENV = "EXOSPHERE_FAULT_LOG"

_fds: dict[str, int] = {}


def record(event: str, key: str) -> None:
    """Append ``<event> <pid> <key>`` to the fault log (a no-op when ``$EXOSPHERE_FAULT_LOG`` is not set)."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    fd = _fds.get(path)
    if fd is None:
        fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, f"{event} {os.getpid()} {key}\n".encode())


class Spread(BaseNode):
    """Fan-out: ``n`` outputs ``item="0"`` .. ``str(n - 1)``."""

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs]:
        make = self.Outputs
        return [make(item=str(i)) for i in range(int(self.inputs.n))]


class Record(BaseNode):
    """Noop-like: logs ``exec <pid> <item>``, waits ``delay`` seconds, returns its item."""

    class Inputs(BaseModel):
        item: str
        delay: str = "0"

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> Outputs:
        record("exec", self.inputs.item)
        delay = float(self.inputs.delay)
        if delay > 0:
            await asyncio.sleep(delay)
        return self.Outputs(item=self.inputs.item)


class Tally(BaseNode):
    """The aggregating merge: ``items`` is a JSON array; returns how many items and how many distinct ones."""

    class Inputs(BaseModel):
        items: str

    class Outputs(BaseModel):
        count: str
        distinct: str

    async def execute(self) -> Outputs:
        items = json.loads(self.inputs.items)
        return self.Outputs(count=str(len(items)), distinct=str(len(set(items))))


class Sleeper(BaseNode):
    """Logs ``start``, sleeps ``seconds`` without blocking the loop, logs ``end``; logs ``cancel`` if cancelled."""

    class Inputs(BaseModel):
        key: str
        seconds: str

    class Outputs(BaseModel):
        key: str

    async def execute(self) -> Outputs:
        record("start", self.inputs.key)
        try:
            await asyncio.sleep(float(self.inputs.seconds))
        except asyncio.CancelledError:
            record("cancel", self.inputs.key)
            raise
        record("end", self.inputs.key)
        return self.Outputs(key=self.inputs.key)


class Blocker(BaseNode):
    """Logs ``start``, blocks the runtime's event loop with ``time.sleep(seconds)``, logs ``end``."""

    class Inputs(BaseModel):
        key: str
        seconds: str

    class Outputs(BaseModel):
        key: str

    async def execute(self) -> Outputs:
        record("start", self.inputs.key)
        time.sleep(float(self.inputs.seconds))  # noqa: ASYNC251 - blocking the loop is the point
        record("end", self.inputs.key)
        return self.Outputs(key=self.inputs.key)


class BlockOnce(BaseNode):
    """Like Blocker, but only the first execution of a ``key`` blocks (claimed with a marker file); later ones
    return at once."""

    class Inputs(BaseModel):
        key: str
        seconds: str

    class Outputs(BaseModel):
        key: str

    async def execute(self) -> Outputs:
        record("start", self.inputs.key)
        marker = os.path.join(os.path.dirname(os.environ[LOG_ENV]), f"blocked-{self.inputs.key}")
        try:
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            time.sleep(float(self.inputs.seconds))  # noqa: ASYNC251 - blocking the loop is the point
        record("end", self.inputs.key)
        return self.Outputs(key=self.inputs.key)


class _Tracked(BaseNode):
    """Base of in-process nodes: class-level records of starts, ends and cancellations by ``key``."""

    class Inputs(BaseModel):
        key: str
        seconds: str = "0"

    class Outputs(BaseModel):
        key: str

    starts: ClassVar[dict[str, int]] = {}
    ends: ClassVar[dict[str, int]] = {}
    cancels: ClassVar[dict[str, int]] = {}

    async def execute(self) -> Outputs:
        key = self.inputs.key
        cls = type(self)
        cls.starts[key] = cls.starts.get(key, 0) + 1
        try:
            await asyncio.sleep(float(self.inputs.seconds))
        except asyncio.CancelledError:
            cls.cancels[key] = cls.cancels.get(key, 0) + 1
            raise
        cls.ends[key] = cls.ends.get(key, 0) + 1
        return self.Outputs(key=key)


class SlowWithTimeout(_Tracked):
    """Declares a 500 ms timeout and sleeps ``seconds`` (the tests give it longer)."""

    timeout = timedelta(milliseconds=500)
    starts: ClassVar[dict[str, int]] = {}
    ends: ClassVar[dict[str, int]] = {}
    cancels: ClassVar[dict[str, int]] = {}


class LongTimeout(_Tracked):
    """Declares a 20 s timeout: a graph's ``timeout_ms`` must override it."""

    timeout = timedelta(seconds=20)
    starts: ClassVar[dict[str, int]] = {}
    ends: ClassVar[dict[str, int]] = {}
    cancels: ClassVar[dict[str, int]] = {}


class NoTimeout(_Tracked):
    """Declares no timeout: the scheduler's default applies."""

    starts: ClassVar[dict[str, int]] = {}
    ends: ClassVar[dict[str, int]] = {}
    cancels: ClassVar[dict[str, int]] = {}


class Concurrent(BaseNode):
    """Tracks how many executions of it run at once in this process (``running``) and the most seen (``peak``)."""

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        item: str

    running: ClassVar[int] = 0
    peak: ClassVar[int] = 0
    executed: ClassVar[int] = 0

    async def execute(self) -> Outputs:
        cls = Concurrent
        cls.running += 1
        cls.peak = max(cls.peak, cls.running)
        try:
            await asyncio.sleep(0.01)
        finally:
            cls.running -= 1
        cls.executed += 1
        return self.Outputs(item=self.inputs.item)


# The nodes a fault_runtime.py child can host, by name.
NODES: dict[str, type[BaseNode]] = {
    cls.__name__: cls
    for cls in (Spread, Record, Tally, Sleeper, Blocker, BlockOnce, SlowWithTimeout, LongTimeout, NoTimeout)
}
