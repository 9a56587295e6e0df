"""What the kit saw on the wire between the runtime and the scheduler, in order, with times.

The recording proxy (``proxy.py``) appends an event for every message either side sends on a runtime stream,
for the life of each stream (opened, the runtime half-closed, ended with a status) and for every ``KeepAlive``
call. The checks read it; nothing else is needed to judge a runtime, so the scheduler stays the real one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from google.protobuf import text_format

from exosphere.v1 import runtime_pb2 as pb

__all__ = ["Direction", "Recorder", "StreamRecord", "WireEvent"]


class Direction(StrEnum):
    UP = "runtime->scheduler"
    DOWN = "scheduler->runtime"
    # Not a message: a stream opened, half-closed or ended, or a KeepAlive call.
    LIFE = "stream"


@dataclass(frozen=True)
class WireEvent:
    """One thing seen: ``kind`` is the message's oneof field (``register``, ``execute``...) or a life event
    (``open``, ``half_close``, ``closed``, ``keepalive``)."""

    at: float  # seconds since the recording began
    stream: int  # 1, 2, ... in the order the runtime opened its streams; 0 for a KeepAlive of an unknown session
    direction: Direction
    kind: str
    up: pb.RuntimeMessage | None = None
    down: pb.SchedulerMessage | None = None
    detail: str = ""


@dataclass
class StreamRecord:
    """One runtime stream (one ``Connect`` call) as seen by the proxy."""

    number: int
    opened_at: float
    register: pb.Register | None = None
    registered: pb.Registered | None = None
    half_closed_at: float | None = None
    closed_at: float | None = None
    status: str = ""  # the gRPC status it ended with, "OK" or "UNAVAILABLE: ..."


@dataclass
class Recorder:
    """Events in arrival order; ``wait_for`` wakes on each new one."""

    events: list[WireEvent] = field(default_factory=list)
    streams: dict[int, StreamRecord] = field(default_factory=dict)
    _start: float = field(default_factory=time.monotonic)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self._start

    def open_stream(self) -> StreamRecord:
        record = StreamRecord(number=len(self.streams) + 1, opened_at=self.now())
        self.streams[record.number] = record
        self._add(WireEvent(record.opened_at, record.number, Direction.LIFE, "open"))
        return record

    def up(self, stream: StreamRecord, message: pb.RuntimeMessage) -> None:
        kind = message.WhichOneof("kind") or "empty"
        if kind == "register" and stream.register is None:
            stream.register = message.register
        self._add(WireEvent(self.now(), stream.number, Direction.UP, kind, up=message))

    def down(self, stream: StreamRecord, message: pb.SchedulerMessage) -> None:
        kind = message.WhichOneof("kind") or "unknown"
        if kind == "registered" and stream.registered is None:
            stream.registered = message.registered
        self._add(WireEvent(self.now(), stream.number, Direction.DOWN, kind, down=message))

    def half_closed(self, stream: StreamRecord) -> None:
        stream.half_closed_at = self.now()
        self._add(WireEvent(stream.half_closed_at, stream.number, Direction.LIFE, "half_close"))

    def closed(self, stream: StreamRecord, status: str) -> None:
        if stream.closed_at is not None:
            return
        stream.closed_at, stream.status = self.now(), status
        self._add(WireEvent(stream.closed_at, stream.number, Direction.LIFE, "closed", detail=status))

    def keepalive(self, session_id: str, outcome: str) -> None:
        number = next(
            (s.number for s in self.streams.values() if s.registered and s.registered.session_id == session_id), 0
        )
        self._add(WireEvent(self.now(), number, Direction.LIFE, "keepalive", detail=outcome))

    def _add(self, event: WireEvent) -> None:
        self.events.append(event)
        self._changed.set()

    # ------------------------------------------------------------------ reading

    def of(self, stream: int | None = None, *, since: float = 0.0) -> Iterator[WireEvent]:
        """Events of one stream (or all), from ``since`` on."""
        return (e for e in self.events if (stream is None or e.stream == stream) and e.at >= since)

    def latest_stream(self) -> StreamRecord | None:
        return self.streams[max(self.streams)] if self.streams else None

    def executes(self, stream: int | None = None, *, since: float = 0.0) -> list[tuple[WireEvent, pb.Execute]]:
        return [
            (e, item)
            for e in self.of(stream, since=since)
            if e.kind == "execute" and e.down is not None
            for item in e.down.execute.items
        ]

    def results(self, stream: int | None = None, *, since: float = 0.0) -> list[tuple[WireEvent, pb.Result]]:
        return [
            (e, result)
            for e in self.of(stream, since=since)
            if e.kind == "results" and e.up is not None
            for result in e.up.results.results
        ]

    def write(self, path: Path, *, width: int = 400) -> None:
        """Every event, one line each (``+1.234s stream 1 runtime->scheduler results {...}``), for the author."""
        with path.open("w", encoding="utf-8") as out:
            for e in self.events:
                message = e.up if e.up is not None else e.down
                body = text_format.MessageToString(message, as_one_line=True, as_utf8=True) if message else e.detail
                line = f"+{e.at:.3f}s stream {e.stream} {e.direction.value} {e.kind} {body}"
                out.write((line[: width - 3] + "...") if len(line) > width else line)
                out.write("\n")

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checked on every new event and every 50 ms; False after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    try:
                        async with asyncio.timeout(0.05):
                            await self._changed.wait()
                    except TimeoutError:
                        pass
        except TimeoutError:
            return predicate()
        return True
