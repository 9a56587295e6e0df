"""Which shards this scheduler owns, and taking or letting go of one (see server/shards.py).

Taking a shard loads its pending runs from the store and continues them exactly as recovery after a restart does
(what was dispatched is dispatched again: at-least-once). Letting one go drops its runs from memory at once: their
states are no longer dispatched, those running on runtimes are withdrawn (the next owner runs them again), and
watchers are told the run moved. What the shard's runs changed before is committed before ``release`` returns, so
the next owner, which loads from the store, starts from there. A single scheduler owns every shard.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Collection, Mapping

from exosphere.errors import ConnectionFailedError

from .catalog import GraphCatalog
from .commit import GroupCommit
from .machine import StateMachine
from .runstate import Run
from .runtable import RunTable
from .sessions import withdraw
from .shards import MAX_SHARDS, new_run_id, shard_of
from .status import StateStatus
from .store import Fence, Store, WriteBatch

__all__ = ["NotOwnerError", "Shards"]

logger = logging.getLogger(__name__)

QUEUED = StateStatus.QUEUED


class NotOwnerError(ConnectionFailedError):
    """A run that changes is changed by its shard's owner only; ``address`` is the owner's, when known."""

    def __init__(self, run_id: str, address: str | None) -> None:
        where = f"the replica at {address}" if address else "another scheduler replica"
        super().__init__(f"run {run_id} belongs to a shard {where} owns; ask that one")
        self.run_id = run_id
        self.address = address


class Shards:
    def __init__(
        self,
        store: Store,
        table: RunTable,
        catalog: GraphCatalog,
        machine: StateMachine,
        commit: GroupCommit,
        *,
        count: int,
        clock: Callable[[], int],
        forget: Callable[[Run], None],
    ) -> None:
        if not 1 <= count <= MAX_SHARDS:
            raise ValueError(f"shard count must be between 1 and {MAX_SHARDS}, got {count}")
        self.count = count
        self._store = store
        self._table = table
        self._catalog = catalog
        self._machine = machine
        self._commit = commit
        self._clock = clock
        self._forget = forget
        self._owned: set[int] = set()
        self._choices: tuple[int, ...] = ()
        # Cluster mode: who we are and the lease epoch of each shard held, kept until the lease is given back (a
        # shard let go still commits what it changed before under its epoch). None: a single scheduler, unfenced.
        self.owner_id: str | None = None
        self._epochs: dict[int, int] = {}
        # Cluster mode: the address of each shard's owner, as the last heartbeat read it.
        self.owners: dict[int, str] = {}

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    def of(self, run_id: str) -> int:
        return shard_of(run_id, self.count)

    def owns(self, run_id: str) -> bool:
        return shard_of(run_id, self.count) in self._owned

    def owns_shard(self, shard: int) -> bool:
        return shard in self._owned

    def shard_for_key(self, key: str) -> int:
        """The shard of something that is not a run (a cron schedule), by a stable hash of its key."""
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest(), "big") % self.count

    def new_run_id(self, shard: int | None = None) -> str:
        """An id for a new run, in a shard this scheduler owns (``shard``, or any): a trigger never crosses
        replicas."""
        if shard is not None:
            if shard not in self._owned:
                raise ConnectionFailedError(f"shard {shard} is not owned by this scheduler replica")
            return new_run_id(shard)
        if not self._choices:
            raise ConnectionFailedError("this scheduler owns no shard yet; try another replica or again shortly")
        return new_run_id(random.choice(self._choices))

    def acquire(self, shards: Collection[int], epochs: Mapping[int, int] | None = None) -> list[Run]:
        """Own ``shards`` (under lease ``epochs`` in cluster mode): load their pending runs and continue them.
        Returns the runs loaded."""
        if epochs:
            self._epochs.update(epochs)
        new = {s for s in shards if s not in self._owned}
        if not new:
            return []
        run_rows, state_rows = self._store.load_pending(shards=sorted(new), shard_count=self.count)
        rows = [r for r in run_rows if self.of(r.run_id) in new and r.run_id not in self._table.runs]
        ids = {r.run_id for r in rows}
        runs = self._table.load(
            rows,
            [s for s in state_rows if s.run_id in ids],
            lambda r: self._catalog.version(r.namespace, r.graph_name, r.graph_version),
        )
        for run in runs:
            if run.graph is not None:
                self._catalog.acquire(run.graph)
        self._owned |= new
        self._choices = tuple(sorted(self._owned))
        queued = self._machine.resume(runs, self._clock())
        logger.info("shards taken shards=%s pending_runs=%d requeued=%d", sorted(new), len(runs), queued)
        return runs

    async def release(self, shards: Collection[int]) -> int:
        """Let ``shards`` go: drop their runs from memory, then wait until what they changed is committed.
        Returns how many runs were dropped."""
        gone = {s for s in shards if s in self._owned}
        if not gone:
            return 0
        self._owned -= gone
        self._choices = tuple(sorted(self._owned))
        dropped = [run for run in self._table.runs.values() if self.of(run.run_id) in gone]
        for run in dropped:
            self._drop(run)
        await self._commit.wait()
        logger.info("shards released shards=%s runs=%d", sorted(gone), len(dropped))
        return len(dropped)

    def drop(self, shards: Collection[int]) -> int:
        """The leases of ``shards`` are lost (expired, taken, or a commit was fenced): drop their runs at once,
        without waiting for a commit, which could not be made under those leases any more."""
        gone = {s for s in shards if s in self._owned}
        for shard in shards:
            self._epochs.pop(shard, None)
        self._owned -= gone
        self._choices = tuple(sorted(self._owned))
        dropped = [run for run in self._table.runs.values() if self.of(run.run_id) in gone]
        for run in dropped:
            self._drop(run)
        if gone:
            logger.warning("shards lost shards=%s runs=%d", sorted(gone), len(dropped))
        return len(dropped)

    def given_back(self, shards: Collection[int]) -> None:
        """The leases of released shards were given back: nothing more is committed under them."""
        for shard in shards:
            if shard not in self._owned:
                self._epochs.pop(shard, None)

    def epoch(self, shard: int) -> int | None:
        return self._epochs.get(shard)

    def fence(self, batch: WriteBatch) -> Fence | None:
        """The leases a batch needs: the epoch of every shard it writes to (-1 for one held no more)."""
        if self.owner_id is None:
            return None
        touched = {self.of(r.run_id) for r in batch.runs}
        touched.update(self.of(s.run_id) for s in batch.new_states)
        touched.update(self.of(s.run_id) for s in batch.updated_states)
        return Fence(self.owner_id, {s: self._epochs.get(s, -1) for s in touched})

    def _drop(self, run: Run) -> None:
        run.dropped = True
        for state in run.states:
            if state.status == QUEUED:
                withdraw(state)
        for queue in (*run.watchers, *run.end_watchers):
            queue.put_nowait(None)
        self._forget(run)
