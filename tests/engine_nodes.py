"""Nodes for the engine-semantics integration tests (fan-out, unites, retries, signals, store, control).

Nodes that keep state between executions do it in class-level dicts keyed by a ``key`` input, so tests that run
one after another in the same process (each with a fresh token) never see each other's counters.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from datetime import timedelta
from typing import ClassVar

from pydantic import BaseModel

from exosphere import BaseNode, PruneSignal, ReQueueAfterSignal


class Split(BaseNode):
    """Fan-out: one output per comma-separated item of ``csv`` (``""`` gives ``[]``)."""

    class Inputs(BaseModel):
        csv: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=item) for item in self.inputs.csv.split(",") if item]


class Count(BaseNode):
    """Fan-out of ``n`` outputs ``"0"`` .. ``str(n - 1)``."""

    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in range(int(self.inputs.n))]


class Nothing(BaseNode):
    """Returns ``None`` when ``mode`` is ``"none"``, else ``[]``: a success with no outputs."""

    class Inputs(BaseModel):
        mode: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs] | None:
        return None if self.inputs.mode == "none" else []


class Tag(BaseNode):
    """``text`` with ``suffix`` appended."""

    class Inputs(BaseModel):
        text: str
        suffix: str = ""

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text + self.inputs.suffix)


class Act(BaseNode):
    """Per-branch behaviour chosen by the item: ``prune*`` prunes, ``fail*`` raises, anything else echoes."""

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        if self.inputs.item.startswith("prune"):
            raise PruneSignal({"item": self.inputs.item})
        if self.inputs.item.startswith("fail"):
            raise RuntimeError(f"branch {self.inputs.item} failed")
        return self.Outputs(text=self.inputs.item)


class Collect(BaseNode):
    """Merge node: reports the aggregated inputs it was given."""

    class Inputs(BaseModel):
        values: str
        extra: str = ""

    class Outputs(BaseModel):
        count: str

    async def execute(self) -> Outputs:
        return self.Outputs(count=str(len(json.loads(self.inputs.values))))


class Gate(BaseNode):
    """Waits until ``total`` executions with the same ``key`` have started, then all return together."""

    arrived: ClassVar[dict[str, int]] = defaultdict(int)
    opened: ClassVar[dict[str, asyncio.Event]] = {}

    class Inputs(BaseModel):
        key: str
        total: str
        item: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        event = Gate.opened.setdefault(self.inputs.key, asyncio.Event())
        Gate.arrived[self.inputs.key] += 1
        if Gate.arrived[self.inputs.key] >= int(self.inputs.total):
            event.set()
        await event.wait()
        return self.Outputs(text=self.inputs.item)


class Flaky(BaseNode):
    """Raises ``ValueError("boom <n>")`` on its first ``fails`` executions per ``key``, then succeeds.

    ``Flaky.starts[key]`` records the wall-clock time (ms) each execution started.
    """

    starts: ClassVar[dict[str, list[float]]] = defaultdict(list)

    class Inputs(BaseModel):
        key: str
        fails: str

    class Outputs(BaseModel):
        attempts: str

    async def execute(self) -> Outputs:
        calls = Flaky.starts[self.inputs.key]
        calls.append(time.time() * 1000)
        if len(calls) <= int(self.inputs.fails):
            raise ValueError(f"boom {len(calls)}")
        return self.Outputs(attempts=str(len(calls)))


class Pruner(BaseNode):
    """Always prunes with ``{"reason": <reason>}``."""

    class Inputs(BaseModel):
        reason: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        raise PruneSignal({"reason": self.inputs.reason})


class Requeuer(BaseNode):
    """Requeues itself once after ``delay_ms``, then succeeds. Records the start time and inputs of each run."""

    calls: ClassVar[dict[str, list[tuple[float, dict[str, str]]]]] = defaultdict(list)

    class Inputs(BaseModel):
        key: str
        delay_ms: str

    class Outputs(BaseModel):
        runs: str

    async def execute(self) -> Outputs:
        calls = Requeuer.calls[self.inputs.key]
        calls.append((time.monotonic(), self.inputs.model_dump()))
        if len(calls) == 1:
            raise ReQueueAfterSignal(timedelta(milliseconds=int(self.inputs.delay_ms)))
        return self.Outputs(runs=str(len(calls)))


class Trial(BaseNode):
    """Per-branch behaviour chosen by the item, its executions counted per ``key`` and item: ``flaky*`` fails its
    first execution, ``stuck*`` its first two (one automatic retry is not enough; a manual retry is), ``requeue*``
    requeues itself once after 20 ms, ``prune*`` prunes; anything else echoes. Outputs ``<item>#<execution>``."""

    executions: ClassVar[dict[tuple[str, str], int]] = defaultdict(int)

    class Inputs(BaseModel):
        key: str
        item: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        item = self.inputs.item
        Trial.executions[self.inputs.key, item] += 1
        n = Trial.executions[self.inputs.key, item]
        if item.startswith("prune"):
            raise PruneSignal({"item": item})
        if item.startswith("requeue") and n == 1:
            raise ReQueueAfterSignal(timedelta(milliseconds=20))
        if (item.startswith("flaky") and n == 1) or (item.startswith("stuck") and n <= 2):
            raise RuntimeError(f"{item} failed, execution {n}")
        return self.Outputs(text=f"{item}#{n}")


class StoreWriter(BaseNode):
    """Writes ``value`` to the run's store under ``cursor``; outputs the value it saw there before."""

    class Inputs(BaseModel):
        value: str

    class Outputs(BaseModel):
        before: str

    async def execute(self) -> Outputs:
        before = self.store.get("cursor", "")
        self.store["cursor"] = self.inputs.value
        return self.Outputs(before=before)


class Sleeper(BaseNode):
    """Sleeps ``seconds``; records per ``key`` that it started and whether its task was cancelled."""

    started: ClassVar[set[str]] = set()
    cancelled: ClassVar[set[str]] = set()

    class Inputs(BaseModel):
        key: str
        seconds: str = "30"

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        Sleeper.started.add(self.inputs.key)
        try:
            await asyncio.sleep(float(self.inputs.seconds))
        except asyncio.CancelledError:
            Sleeper.cancelled.add(self.inputs.key)
            raise
        return self.Outputs(text="slept")


class Waiter(BaseNode):
    """Waits until the test releases ``key`` (``Waiter.release(key)``)."""

    events: ClassVar[dict[str, asyncio.Event]] = {}
    started: ClassVar[set[str]] = set()

    class Inputs(BaseModel):
        key: str
        item: str = ""

    class Outputs(BaseModel):
        text: str

    @classmethod
    def release(cls, key: str) -> None:
        cls.events.setdefault(key, asyncio.Event()).set()

    async def execute(self) -> Outputs:
        Waiter.started.add(self.inputs.key)
        await Waiter.events.setdefault(self.inputs.key, asyncio.Event()).wait()
        return self.Outputs(text=self.inputs.item)
