"""Final snapshots of finished runs, encoded once: reading a big finished run again costs a copy of bytes, not a
query and an encoding per state (about 5 us each from SQLite, server/state_frames.py; 15 through StateRow; issue 13).

A snapshot holds every state of a run as the bytes of one element of ``repeated State states = 2``, the field of
both GetRunResponse and WatchRunResponse, so a page or an event is a slice of it joined and parsed once. A finished
run changes again only when one of its states is retried (server/retries.py), which changes its row: each snapshot
is kept with the row it was made from (status, update time, counts), and a read whose row differs finds nothing.
The cache is bounded in bytes, least recently read out first; a run too big for it is read page by page as before.
A first read page by page grows the snapshot one page at a time (the SDK asks for the next page before converting
this one, so the scheduler reads and encodes while the client converts); a watch's final snapshot is made whole.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from exosphere.v1 import scheduler_pb2 as pb
from exosphere.wireformat import field

from .models import RunRow
from .status import RunStatus

__all__ = ["CACHE_BYTES", "MAX_SNAPSHOT_STATES", "Snapshot", "SnapshotCache", "frame"]

# Bytes of snapshots kept (a 10,000-state run of small states takes about 1.2 MB).
CACHE_BYTES = 64 * 1024 * 1024
# A run with more states is not snapshotted: reading it whole at its first page would hold the loop too long.
MAX_SNAPSHOT_STATES = 20_000
TOO_BIG_REMEMBERED = 1024
_STATES_TAG = b"\x12"  # field 2, length-delimited


def frame(message: pb.State) -> bytes:
    """``message`` as one element of a ``states = 2`` field: tag, length, bytes."""
    return field(_STATES_TAG, message.SerializeToString())


def _key(run: RunRow) -> tuple[object, ...]:
    return (run.status, run.updated_at_ms, tuple(sorted(run.state_counts.items())))


@dataclass(slots=True)
class Snapshot:
    """The states of a finished run, encoded, in sequence order: all ``total`` of them once ``complete``, else the
    first ones (a first read page by page fills it as it goes, so the client converts a page while the next is
    read and encoded)."""

    key: tuple[object, ...]
    total: int
    seqs: list[int]
    frames: list[bytes]
    size: int

    @property
    def complete(self) -> bool:
        return len(self.frames) >= self.total

    def page(self, after_seq: int, limit: int, *, budget: int, reserved: int) -> tuple[bytes, int, bool]:
        """The states after ``after_seq``: at most ``limit`` (0: no limit) within ``budget`` bytes (at least one).

        Returns their frames joined, the sequence of the last one (-1 when none) and whether more follow."""
        start = bisect.bisect_right(self.seqs, after_seq)
        end = self._cut(start, budget - reserved, limit)
        more = end < len(self.frames) or not self.complete
        return b"".join(self.frames[start:end]), self.seqs[end - 1] if end > start else -1, more

    def chunks(self, *, budget: int, reserved: int) -> Iterator[bytes]:
        """Every state, in consecutive chunks within ``budget`` bytes; one empty chunk when there are none."""
        start = 0
        while True:
            end = self._cut(start, budget - reserved, 0)
            yield b"".join(self.frames[start:end])
            if end >= len(self.frames):
                return
            start = end

    def _cut(self, start: int, room: int, limit: int) -> int:
        frames = self.frames
        stop = min(len(frames), start + limit) if limit else len(frames)
        end, size = start, 0
        while end < stop:
            size += len(frames[end])
            if size > room and end > start:
                break
            end += 1
        return end


class SnapshotCache:
    """Snapshots by run id, bounded in bytes (see the module docstring)."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, Snapshot] = OrderedDict()
        self._bytes = 0
        # Runs whose snapshot was too big to keep (by the row it was made from): read page by page, not encoded whole
        # again at every page.
        self._too_big: OrderedDict[str, tuple[object, ...]] = OrderedDict()

    def fits(self, run: RunRow) -> bool:
        """Whether ``run`` is finished and small enough to snapshot (and not found too big already)."""
        return (
            run.status != RunStatus.PENDING
            and sum(run.state_counts.values()) <= MAX_SNAPSHOT_STATES
            and self._too_big.get(run.run_id) != _key(run)
        )

    def get(self, run: RunRow) -> Snapshot | None:
        """The snapshot of ``run`` as its row is now, if one is kept."""
        entry = self._entries.get(run.run_id)
        if entry is None:
            return None
        if entry.key != _key(run):  # retried since (server/retries.py): that snapshot is history
            self._drop(run.run_id)
            return None
        self._entries.move_to_end(run.run_id)
        return entry

    def keep(self, run: RunRow, seqs: list[int], frames: list[bytes]) -> Snapshot:
        """Keep the frames of every state of the finished ``run`` (in sequence order) as its snapshot."""
        self._drop(run.run_id)
        return self._grow(run, Snapshot(_key(run), len(frames), seqs, frames, 0), frames)

    def add(self, run: RunRow, snapshot: Snapshot | None, seqs: list[int], frames: list[bytes]) -> Snapshot:
        """Add ``frames`` (of the states numbered ``seqs``), the next of the finished ``run`` after those of
        ``snapshot`` (None: its first ones), to it; none means the run has no more (its counts said otherwise: the
        snapshot ends there)."""
        if snapshot is None:
            snapshot = Snapshot(_key(run), sum(run.state_counts.values()), [], [], 0)
        if not frames:
            snapshot.total = len(snapshot.frames)
        return self._grow(run, snapshot, frames, seqs)

    def _grow(self, run: RunRow, snapshot: Snapshot, frames: list[bytes], seqs: list[int] | None = None) -> Snapshot:
        """Account for ``frames`` added to ``snapshot`` (appending them and ``seqs`` unless already in it); keep it
        unless it grew too big for the cache, then drop it, remember that, and still return it for this read."""
        added = sum(map(len, frames))
        if seqs is not None:
            snapshot.seqs.extend(seqs)
            snapshot.frames.extend(frames)
        snapshot.size += added
        kept = self._entries.get(run.run_id) is snapshot
        if snapshot.size > self._max_bytes // 4:  # one run never pushes out all the others
            self._drop(run.run_id)
            self._too_big[run.run_id] = snapshot.key
            if len(self._too_big) > TOO_BIG_REMEMBERED:
                self._too_big.popitem(last=False)
            return snapshot
        if kept:
            self._bytes += added
            self._entries.move_to_end(run.run_id)
        else:
            self._entries[run.run_id] = snapshot
            self._bytes += snapshot.size
        while self._bytes > self._max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= oldest.size
        return snapshot

    def _drop(self, run_id: str) -> None:
        entry = self._entries.pop(run_id, None)
        if entry is not None:
            self._bytes -= entry.size
