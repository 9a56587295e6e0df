"""Group commit: every change of one event-loop tick goes to the database in one transaction.

The engine marks what changed; at the end of the tick the batch is serialized here, in the loop's thread, and
committed by a single writer thread, so the loop goes on while SQLite writes and commits stay in order. One commit
is in flight at a time: what changes meanwhile goes into the next, bigger one (adaptive, no timer, so a lone
change is still committed at once). Waiters and watchers hear of a change only once it is committed.

A small commit on a store that commits without waiting for a disk or a network (SQLite at ``synchronous=NORMAL``:
a write into the WAL, tens of microseconds) runs in the loop's thread instead, when no other commit is in flight:
handing it to the writer thread and back cost a lone run more than the commit itself (two hops per commit, on the
path of every trigger and every result). It never waits there: when another thread or process is writing
(``Store.try_commit`` says so at once), the commit goes to the writer thread after all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from collections.abc import Callable

from exosphere.errors import ConnectionFailedError, InternalError

from .observe import Tally
from .runstate import Run, State
from .store import Fence, FencedError, Store, WriteBatch

__all__ = ["INLINE_MAX", "GroupCommit"]

# The largest batch (state and run rows) worth committing in the loop's thread: a lone run's commits, not a burst's.
INLINE_MAX = 8

# A commit the database could not be reached for is tried again after these delays (doubling up to the maximum).
RETRY_FIRST_S = 0.1
RETRY_MAX_S = 2.0

logger = logging.getLogger(__name__)


def _noop() -> None:
    return None


def _resolve(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


class GroupCommit:
    """Collects a tick's changes and commits them as one transaction.

    ``on_committed(changed_states, finished_runs)`` runs in the loop after each commit; ``on_failed(exc)`` when the
    database refused one (memory is then ahead of the database: the caller must stop, except after a FencedError, when
    only the shards of that batch are behind and the caller drops them).
    """

    def __init__(
        self,
        store: Store,
        loop: Callable[[], asyncio.AbstractEventLoop | None],
        on_committed: Callable[[list[State], list[Run]], None],
        on_failed: Callable[[BaseException], None],
        fence: Callable[[WriteBatch], Fence | None] | None = None,
        *,
        tally: Tally | None = None,
        inline_max: int = 0,
    ) -> None:
        self._store = store
        # Batches of at most this many changes commit in the loop's thread (see the module docstring); 0: never.
        self._inline_max = inline_max
        # A store that can commit without waiting (SqliteStore.try_commit); without it, every commit takes the thread.
        self._try_commit: Callable[[object], bool] | None = getattr(store, "try_commit", None) if inline_max else None
        self._fence = fence
        self._tally = tally or Tally()
        self._loop = loop
        self._on_committed = on_committed
        self._on_failed = on_failed
        self._new_states: list[State] = []
        self._dirty_states: dict[str, State] = {}
        self._dirty_runs: dict[str, Run] = {}
        self._kv: dict[str, str] = {}
        self._finished: list[Run] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._pending = 0
        self._deferred = False
        self._closing = False
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="exosphere-writer")

    # ------------------------------------------------------------------ what changed

    # Called two or three times per state on the hot path: the flush is scheduled by the first call of a tick.

    def add_state(self, state: State) -> None:
        self._new_states.append(state)
        if not self._scheduled:
            self.schedule()

    def mark(self, state: State) -> None:
        self._dirty_states[state.state_id] = state
        if not self._scheduled:
            self.schedule()

    def mark_run(self, run: Run) -> None:
        self._dirty_runs[run.run_id] = run
        if not self._scheduled:
            self.schedule()

    def finish_run(self, run: Run) -> None:
        """The run reached its end: commit it, then tell its watchers and let the engine forget it."""
        self._dirty_runs[run.run_id] = run
        self._finished.append(run)
        self.schedule()

    def put_kv(self, key: str, value: str) -> None:
        self._kv[key] = value
        self.schedule()

    def get_kv(self, key: str) -> str | None:
        value = self._kv.get(key)
        return value if value is not None else self._store.get_kv(key)

    # ------------------------------------------------------------------ committing

    def schedule(self) -> None:
        loop = self._loop()
        if not self._scheduled and loop is not None:
            self._scheduled = True
            loop.call_soon(self.flush)

    async def wait(self) -> None:
        """Wait until everything changed so far is committed."""
        loop = self._loop()
        assert loop is not None
        future = loop.create_future()
        self._waiters.append(future)
        self.schedule()
        await future

    def flush(self) -> None:
        self._scheduled = False
        if self._pending:
            self._deferred = True
            return
        dirty = self._dirty_states
        if dirty:  # a state new in this batch is inserted as it is now, not updated too
            for s in self._new_states:  # (no set of the new ones: a burst of 100,000 held 40-70 bytes each in it)
                dirty.pop(s.state_id, None)
        updated = list(dirty.values())
        batch = WriteBatch(
            new_states=self._new_states,
            updated_states=updated,
            runs=list(self._dirty_runs.values()),
            kv=self._kv,
            stable=True,  # inputs never change once made, nor results once final (server/runtable.py)
        )
        changed: list[State] = [*self._new_states, *updated]
        waiters, finished = self._waiters, self._finished
        self._new_states, self._dirty_states, self._dirty_runs = [], {}, {}
        self._kv, self._waiters, self._finished = {}, [], []
        if not batch and not waiters and not finished:
            return
        if batch and self._fence is not None:
            batch.fence = self._fence(batch)
        try:
            prepared = self._store.prepare(batch) if batch else None
        except Exception as exc:
            self._failed(exc, waiters, len(changed))
            return
        self._pending += 1
        if prepared is not None and self._try_commit is not None and len(changed) + len(batch.runs) <= self._inline_max:
            self._commit_here(prepared, waiters, changed, finished)
        else:
            self._submit(prepared, waiters, changed, finished, 0)

    def _commit_here(
        self, prepared: object, waiters: list[asyncio.Future[None]], changed: list[State], finished: list[Run]
    ) -> None:
        assert self._try_commit is not None
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        started = time.perf_counter()
        try:
            if not self._try_commit(prepared):  # someone else is writing: wait for them on the writer thread, not here
                self._submit(prepared, waiters, changed, finished, 0)
                return
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)
        self._done(future, prepared, waiters, changed, finished, 0, started)

    def _submit(
        self,
        prepared: object | None,
        waiters: list[asyncio.Future[None]],
        changed: list[State],
        finished: list[Run],
        attempt: int,
    ) -> None:
        loop = self._loop()
        assert loop is not None
        if prepared is not None:
            future = self._writer.submit(self._store.commit, prepared)
        else:
            future = self._writer.submit(_noop)
        started = time.perf_counter()  # this attempt's: a held commit's latency counts from its last try

        def done(f: concurrent.futures.Future[None]) -> None:
            loop.call_soon_threadsafe(self._done, f, prepared, waiters, changed, finished, attempt, started)

        future.add_done_callback(done)

    def _done(
        self,
        future: concurrent.futures.Future[None],
        prepared: object | None,
        waiters: list[asyncio.Future[None]],
        changed: list[State],
        finished: list[Run],
        attempt: int,
        started: float,
    ) -> None:
        exc = future.exception()
        if isinstance(exc, ConnectionFailedError) and not self._closing:
            # The database is unreachable (PostgreSQL restarting, a network cut): nothing is lost by waiting.
            # The same batch is committed again once it answers; what changes meanwhile waits behind it, in order,
            # and so do the callers waiting for their commit.
            delay_s = min(RETRY_MAX_S, RETRY_FIRST_S * 2**attempt)
            if attempt == 0:
                logger.error("database unavailable; commits held and retried until it answers: %s", exc)
            loop = self._loop()
            assert loop is not None
            loop.call_later(delay_s, self._submit, prepared, waiters, changed, finished, attempt + 1)
            return
        if attempt:
            logger.warning("database available again; held commits resume after %d retries", attempt)
        self._pending -= 1
        if self._deferred:
            self._deferred = False
            self.schedule()
        if exc is not None:
            self._failed(exc, waiters, len(changed))
            return
        if changed:
            self._tally.committed((time.perf_counter() - started) * 1000, changed)
        try:
            # Dispatch first: the engine queues what this commit made ready (a trigger's first state, a result's
            # children) before the waiters' answers queue behind it, so the runtime's hop starts before the
            # client's reply goes out. That hop is the longer of the two; the trigger is already durable here.
            self._on_committed(changed, finished)
        finally:
            loop = self._loop()
            if loop is None:
                _resolve(waiters)
            elif waiters:
                loop.call_soon(_resolve, waiters)

    def _failed(self, exc: BaseException, waiters: list[asyncio.Future[None]], count: int) -> None:
        if isinstance(exc, FencedError):  # cluster mode: another replica owns a shard now; not a database failure
            logger.warning("commit fenced; %d state changes left to the shards' new owner: %s", count, exc)
            self._on_failed(exc)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(ConnectionFailedError(f"{exc}; retry on another replica"))
            return
        incident_id = uuid.uuid4().hex[:16]
        logger.critical(
            "commit failed; %d state changes not saved incident_id=%s: %s", count, incident_id, exc, exc_info=exc
        )
        self._on_failed(exc)
        # The database's own words stay in the log: clients get the incident id that finds them there.
        message = f"could not commit to the database (incident {incident_id}); the scheduler's log says why"
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(InternalError(message, incident_id=incident_id))

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Commit what is pending, wait for every batch, stop the writer thread. A database still unreachable
        after ``timeout_s`` fails what is held (a restart runs it again from the last commit)."""
        self.flush()
        deadline = time.monotonic() + timeout_s
        while self._pending or self._deferred or self._scheduled:
            if time.monotonic() > deadline:
                self._closing = True
            await asyncio.sleep(0.001)
        await asyncio.get_running_loop().run_in_executor(None, self._writer.shutdown, True)
