"""Reading runs for the client API: GetRun pages and WatchRun events, encoded for the wire.

A live run is read from memory. A finished one is read from its snapshot (server/snapshots.py): every state encoded
once, kept for the reads that follow. A first read page by page grows the snapshot from the store one page at a
time (a short first page, so the client starts converting sooner); a watch makes it whole, or keeps the one it
sent from memory when it saw the run end. A pending run of another replica, or a run too big to snapshot, is read a
page, or the watch's events, at a time. States read from the store are encoded straight from their rows when the
store hands them out (server/state_frames.py). Every read checks the caller may see the run's namespace before
anything of the run is sent.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import AsyncGenerator, Iterator
from typing import Any, TypeVar

import grpc

from exosphere.v1 import scheduler_pb2 as pb
from exosphere.wireformat import framed_size

from .auth import Authenticator
from .engine import Engine
from .models import RunRow
from .prefixes import read_run_row
from .sizes import PAGE_BYTES, SNAPSHOT_EVENT_BYTES, chunks_by_size, cut_by_size
from .snapshots import Snapshot, SnapshotCache, frame
from .state_frames import encode_rows
from .status import RunStatus
from .wire import run_to_pb, state_to_pb, states_to_pb

__all__ = ["RunReads"]

Ctx = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")

# The first page of a first read of a finished run holds at most this many states, whatever the client asked for:
# the client converts a page while the scheduler reads and encodes the next, so a short first page starts both
# sooner (the pages after it are as long as asked).
FIRST_PAGE_STATES = 500


class RunReads:
    """GetRun pages and WatchRun events of runs (see the module docstring)."""

    def __init__(self, engine: Engine, auth: Authenticator) -> None:
        self._engine = engine
        self._auth = auth
        self._snapshots = SnapshotCache()

    def page(self, context: Ctx, run_id: str, page_size: int, after: int) -> pb.GetRunResponse:
        """The run and its states after sequence ``after``: at most ``page_size``, within the page's bytes."""
        if self._engine.is_live(run_id):
            run, rows, last = self._engine.get_run(run_id, page_size, after)
            self._check(context, run)
            run_message = run_to_pb(run)
            messages = states_to_pb(rows)
            count = cut_by_size(messages, reserved=framed_size(run_message.ByteSize()))
            if count < len(messages):
                token = str(rows[count - 1].seq)
            else:
                token = str(last) if len(rows) == page_size and last >= 0 else ""
            return pb.GetRunResponse(run=run_message, states=messages[:count], next_page_token=token)
        # Finished, another replica's, or a prefix of a run id: its row is read once, here.
        run = self._found(context, run_id)
        run_message = run_to_pb(run)
        reserved = framed_size(run_message.ByteSize())
        snapshot = self._snapshot_page(run, after, page_size)
        if snapshot is not None:
            blob, last_seq, more = snapshot.page(after, page_size, budget=PAGE_BYTES, reserved=reserved)
        else:  # another replica's pending run, or one too big to snapshot: this page alone, cut as a snapshot's
            seqs, frames = self._encoded(run.run_id, after, page_size)
            page = Snapshot(key=(), total=len(frames), seqs=seqs, frames=frames, size=0)
            blob, last_seq, more = page.page(after, 0, budget=PAGE_BYTES, reserved=reserved)
            more = more or (len(frames) == page_size and last_seq >= 0)
        response = pb.GetRunResponse(run=run_message, next_page_token=str(last_seq) if more else "")
        response.MergeFromString(blob)
        return response

    async def watch(
        self,
        context: Ctx,
        run_id: str,
        *,
        run_only: bool,
        outcome_only: bool,
        final_snapshot: bool,
        max_events: int = 0,
    ) -> AsyncGenerator[pb.WatchRunResponse, None]:
        """The events of a watch (scheduler.proto WatchRunRequest): ``outcome_only`` skips pending events;
        ``final_snapshot`` sends only the end, with every state, over events of about SNAPSHOT_EVENT_BYTES; one that
        needs more than ``max_events`` of them (when not 0) is left out, and the end goes alone."""
        if final_snapshot and not self._engine.is_live(run_id):  # finished, or another replica's
            run = self._engine.get_run_row(run_id)
            self._check(context, run)
            snapshot = self._snapshot(run)
            if snapshot is not None:
                message = run_to_pb(run)
                parts = snapshot.chunks(budget=SNAPSHOT_EVENT_BYTES, reserved=framed_size(message.ByteSize()))
                if max_events:
                    within = _within(parts, max_events)
                    if within is None:
                        yield pb.WatchRunResponse(run=message, last=True, states_left_out=True)
                        return
                    parts = within
                part = next(parts)
                for next_part in parts:  # one part behind, so the last event is known and marked
                    yield _event(message, part)
                    part = next_part
                yield _event(message, part, last=True)
                return
        # A watch that skips pending events is told of the end alone, not woken by every commit before it.
        events = self._engine.watch_run(run_id, whole_end=final_snapshot, end_only=final_snapshot or outcome_only)
        try:
            first = True
            async for run, states in events:
                if first:
                    self._check(context, run)
                    first = False
                pending = run.status == RunStatus.PENDING
                if pending and (final_snapshot or outcome_only):
                    continue
                message = run_to_pb(run)
                if run_only and not final_snapshot:
                    if pending:
                        message.ClearField("store")  # up to 16 MiB; a waiting client needs it once, at the end
                    yield pb.WatchRunResponse(run=message, last=not pending)
                    continue
                budget = SNAPSHOT_EVENT_BYTES if final_snapshot else PAGE_BYTES
                # The final snapshot of a run small enough is kept, encoded, for the reads that follow.
                frames: list[bytes] | None = [] if final_snapshot and self._snapshots.fits(run) else None
                chunks = chunks_by_size(states, state_to_pb, budget=budget, reserved=framed_size(message.ByteSize()))
                if final_snapshot and max_events:
                    bounded = _within(chunks, max_events)
                    if bounded is None:
                        yield pb.WatchRunResponse(run=message, last=not pending, states_left_out=True)
                        continue
                    chunks = bounded
                chunk = next(chunks)
                for following in chunks:  # one chunk behind, so the last event is known and marked
                    yield pb.WatchRunResponse(run=message, states=chunk)
                    if frames is not None:
                        frames.extend(map(frame, chunk))
                    chunk = following
                yield pb.WatchRunResponse(run=message, states=chunk, last=not pending)
                if frames is not None and not pending:
                    frames.extend(map(frame, chunk))
                    self._snapshots.keep(run, [s.seq for s in states], frames)
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    def _check(self, context: Ctx, run: RunRow) -> None:
        self._auth.check(context, run.namespace)

    def _found(self, context: Ctx, run_id: str) -> RunRow:
        """The run (its row: no state, as a page of a big run needs none to find it), by id or by an operator's
        unique prefix of it (exosphere runs show 7ced34)."""
        run = read_run_row(self._engine, run_id, functools.partial(self._auth.allowed, context))
        self._check(context, run)
        return run

    def _snapshot_page(self, run: RunRow, after: int, page_size: int) -> Snapshot | None:
        """The snapshot a page of a finished run is cut from, grown from the store by one page when the client has
        read what it holds so far; None for a pending or live run, one too big to snapshot, or a page beyond what
        its snapshot holds."""
        if self._engine.is_live(run.run_id) or not self._snapshots.fits(run):
            return None
        snapshot = self._snapshots.get(run)
        if snapshot is not None and (snapshot.complete or after < snapshot.seqs[-1]):
            return snapshot
        if after != (snapshot.seqs[-1] if snapshot is not None else -1):
            return None
        if snapshot is None:  # the client converts this page while the next is read: the first is short
            page_size = min(page_size or FIRST_PAGE_STATES, FIRST_PAGE_STATES)
        return self._snapshots.add(run, snapshot, *self._encoded(run.run_id, after, page_size))

    def _snapshot(self, run: RunRow) -> Snapshot | None:
        """Every state of a finished run no longer in memory, encoded once; None for a pending or live run, or one
        too big to snapshot."""
        if self._engine.is_live(run.run_id) or not self._snapshots.fits(run):
            return None
        snapshot = self._snapshots.get(run)
        if snapshot is None or not snapshot.complete:
            snapshot = self._snapshots.keep(run, *self._encoded(run.run_id, -1, 0))
        return snapshot

    def _encoded(self, run_id: str, after: int, limit: int) -> tuple[list[int], list[bytes]]:
        """The sequence numbers and frames of the stored states of ``run_id`` after ``after`` (at most ``limit``;
        0: all): encoded straight from their rows when the store hands them out (server/state_frames.py), else
        through StateRow and ``state_to_pb``, as a page with a row of a shape the store does not write is."""
        rows = self._engine.get_state_rows(run_id, after, limit)
        encoded = encode_rows(run_id, rows) if rows is not None else None
        if encoded is not None:
            return encoded
        states = self._engine.get_states(run_id, after, limit)
        return [s.seq for s in states], [frame(state_to_pb(s)) for s in states]


def _event(run: pb.Run, states: bytes, *, last: bool = False) -> pb.WatchRunResponse:
    """A watch event carrying ``states`` already encoded (server/snapshots.py)."""
    event = pb.WatchRunResponse(run=run, last=last)
    event.MergeFromString(states)
    return event


def _within(chunks: Iterator[T], max_events: int) -> Iterator[T] | None:
    """``chunks`` if there are at most ``max_events`` of them, else None; builds at most one more than that."""
    taken = list(itertools.islice(chunks, max_events + 1))
    return iter(taken) if len(taken) <= max_events else None
