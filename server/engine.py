"""The scheduling engine: the facade the gRPC layer, cron and the app call. It reads in one sitting; each concept
lives in a module of its own:

    runtable.py   live runs and states; the one writer of a state's status, timestamps and commit marks
    machine.py    the state machine: results, retries, timeouts, cancel, manual retry, fan-in firing, run ends
    fanin.py      ``unites`` bookkeeping: when a merge may fire
    resolve.py    ``${{ ... }}`` references: the inputs of new states
    sessions.py   runtime sessions, leases, registered node schemas
    dispatch.py   ready queues and dispatch within each runtime's credit
    catalog.py    graph templates, compiled, by version; secrets sealed at rest
    triggers.py   trigger requests and their checks
    runs.py       reading runs: memory or store, lists, prefixes, following a run
    watches.py    clients following a run
    commit.py     group commit: one transaction per event-loop tick
    recovery.py   start-up: memory rebuilt from the store

Everything on the hot path lives in memory; the database is written, not read. Every change of one event-loop
tick is committed in ONE transaction at the end of the tick, and clients and watchers hear of a change only after
it is committed. The engine never imports grpc or protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exosphere.errors import ConflictError, ExosphereError, RunNotFoundError

from . import watches
from .catalog import GraphCatalog
from .commit import GroupCommit
from .dispatch import Dispatcher
from .graph import CompiledGraph
from .machine import StateMachine
from .models import GraphSpec, NodeSchema, RunRow, StateRow
from .observe import Tally
from .ownership import NotOwnerError, Shards
from .recovery import recover
from .rejects import Rejected, Rejects
from .retries import ManualRetries
from .runs import RunQueries
from .runstate import Run, Session, State
from .runtable import RunTable
from .secrets import SecretBox
from .sessions import Sessions
from .status import ResultKind, RunStatus, StateStatus
from .store import FencedError, RunCursor, Store
from .triggers import CheckedTrigger, TriggerRequest, check_trigger

if TYPE_CHECKING:  # opentelemetry is an extra: imported only where tracing is switched on
    from .tracing import Tracing

__all__ = ["Engine", "EngineSettings", "ResultIn", "TriggerRequest"]

logger = logging.getLogger(__name__)

# Enum members bound once: attribute access on an Enum class costs ~70 ns on Python 3.11 and the hot path makes
# dozens per state.
ERRORED = StateStatus.ERRORED
KIND_ERRORED = ResultKind.ERRORED
KIND_EXECUTED = ResultKind.EXECUTED
KIND_PRUNED = ResultKind.PRUNED
QUEUED = StateStatus.QUEUED
CREATED = StateStatus.CREATED


@dataclass(frozen=True, slots=True)
class EngineSettings:
    heartbeat_interval_ms: int = 1000
    lease_ms: int = 5000
    default_timeout_ms: int = 30 * 60 * 1000
    sweep_interval_s: float = 0.2
    # Cluster mode: how often a watch of a run another replica owns reads it from the store.
    remote_watch_interval_s: float = 0.25
    inline_commits: int = 0  # commits of at most this many changes run in the loop's thread (server/commit.py)


@dataclass(slots=True)
class ResultIn:
    """A runtime's result, decoded from the wire."""

    state_id: str
    dispatch_id: int
    kind: ResultKind
    outputs: list[dict[str, str]] = field(default_factory=list)
    error: dict[str, str] | None = None
    pruned_data: str = "{}"
    delay_ms: int = 0
    store_writes: dict[str, str] | None = None
    attempt: int = 0


class Engine:
    """The scheduler's core. Create it inside the running loop, then ``await start()``."""

    def __init__(
        self,
        store: Store,
        *,
        secret_box: SecretBox,
        settings: EngineSettings | None = None,
        decode_schema: Callable[[str, bytes], NodeSchema] | None = None,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
        shard_count: int = 1,
        own_all_shards: bool = True,
    ) -> None:
        self.settings = settings = settings or EngineSettings()
        self._own_all = own_all_shards
        self._store = store
        self._decode_schema = decode_schema
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        # Counted on the hot path in batches, read by /metrics (server/observe.py, server/metrics.py).
        self.tally = Tally()
        self._commit = GroupCommit(
            store, lambda: self._loop, self._after_commit, self._commit_failed, lambda b: self.shards.fence(b),
            tally=self.tally, inline_max=settings.inline_commits,
        )  # fmt: skip
        self._table = RunTable(self._commit)
        self._dispatcher = Dispatcher(
            self._table,
            loop=lambda: self._loop,
            clock=clock,
            default_timeout_ms=settings.default_timeout_ms,
            tally=self.tally,
        )
        # Runtime sessions and registered nodes: the runtime stream calls it directly.
        self.runtimes = Sessions(store, self._table, self._dispatcher, clock=clock, lease_ms=settings.lease_ms)
        self.catalog = GraphCatalog(store, secret_box, self.runtimes.node_schema, clock=clock)
        self.catalog.refresh_nodes = self.refresh_nodes
        self._machine = StateMachine(self._table, self._dispatcher, default_timeout_ms=settings.default_timeout_ms)
        self._retries = ManualRetries(
            store, self._table, self.catalog, self._machine, self._commit, clock=clock, forget=self._forget
        )
        # The shards whose runs this scheduler holds; a single scheduler owns them all (server/ownership.py).
        self.shards = Shards(
            store, self._table, self.catalog, self._machine, self._commit,
            count=shard_count, clock=clock, forget=self._forget,
        )  # fmt: skip
        self._queries = RunQueries(store, self._table, self.runtimes, self.shards, settings)
        self._tasks: list[asyncio.Task[None]] = []
        self.ignored_results = 0
        self.rejects = Rejects()  # results that matched no dispatch, for /metrics (server/rejects.py)
        self._tracing: Tracing | None = None
        # Set when a commit failed; the scheduler must then stop (see _commit_failed).
        self.fatal_error: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None

    # ================================================================== lifecycle

    async def start(self) -> None:
        """Load graphs, registrations and pending runs from the store, requeue what was in flight."""
        self._loop = asyncio.get_running_loop()
        recover(self._store, self.catalog, self.runtimes.nodes, self._decode_schema)
        if self._own_all:
            self.shards.acquire(range(self.shards.count))
        self._tasks.append(self._loop.create_task(self._sweep_loop(), name="engine-sweeper"))

    async def stop(self) -> None:
        """Commit what is pending and stop the background tasks."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._dispatcher.close()
        await self._commit.drain()

    @property
    def on_graph_saved(self) -> Callable[[CompiledGraph | None, str, str], None] | None:
        return self.catalog.on_saved

    @on_graph_saved.setter
    def on_graph_saved(self, callback: Callable[[CompiledGraph | None, str, str], None] | None) -> None:
        self.catalog.on_saved = callback

    # ================================================================== runtimes

    def refresh_from_store(self) -> int:
        """Cluster mode: take the nodes and graphs other replicas saved; returns how many graphs changed here."""
        changed_nodes = self.refresh_nodes()
        return self.catalog.refresh(self._store.load_graphs(), recompile=changed_nodes)

    def refresh_nodes(self) -> bool:
        return self.runtimes.refresh_nodes(self._decode_schema)

    def namespaces(self) -> list[str]:
        return sorted({ns for ns, _ in self.runtimes.nodes} | self.catalog.namespaces())

    def enable_tracing(self, tracing: Tracing) -> None:
        """Trace triggers and dispatches from now on (server/tracing.py)."""
        self._tracing = tracing
        self._dispatcher.tracing = tracing

    def live_states(self) -> Iterable[State]:
        """Every state of the runs held in memory (pending, or ended and not yet forgotten)."""
        return self._table.live_states()

    def live_runs(self) -> Iterable[Run]:
        return self._table.runs.values()

    def queue_depths(self) -> dict[tuple[str, str], int]:
        """Ready states waiting for credit, by (namespace, node)."""
        return self._dispatcher.depths()

    def handle_results(self, session: Session, results: Sequence[ResultIn]) -> list[Rejected]:
        """Apply a batch of results; each frees one credit of the session. Returns those that match no dispatch."""
        session.last_seen = time.monotonic()
        now = self._clock()
        machine, in_flight, tracing, table = self._machine, session.in_flight, self._tracing, self._table
        answered: list[State] = []
        rejected: list[Rejected] = []
        for result in results:
            state = in_flight.get(result.dispatch_id)
            if state is None or state.state_id != result.state_id or state.attempt != result.attempt:
                self.ignored_results += 1  # not a dispatch of this session: the credit it holds stays held
                rejected.append(self.rejects.reject(session, result, state, table.state(result.state_id)))
                continue
            del in_flight[result.dispatch_id]
            if state.session is not session or state.status != QUEUED:
                self.ignored_results += 1  # cancelled or timed out meanwhile: only the credit returns
                continue
            state.session = None
            answered.append(state)
            table.answered(state, session.runtime_name, now)
            kind = result.kind
            if tracing is not None:
                tracing.answered(state, kind, result.error, now)
            if kind == KIND_EXECUTED:
                machine.executed(state, result.outputs, result.store_writes, now)
            elif kind == KIND_ERRORED:
                error = result.error or {"message": "unknown error", "type": "Error"}
                machine.failed(state, error, ERRORED, now)
            elif kind == KIND_PRUNED:
                machine.pruned(state, result.pruned_data, now)
            else:
                machine.requeued(state, result.delay_ms, now)
        if answered:
            self.tally.executed(session.namespace, now, answered)
        self._dispatcher.schedule()
        return rejected

    # ================================================================== graphs

    async def upsert_graph(self, spec: GraphSpec, secrets: Mapping[str, str] | None) -> GraphSpec:
        return await self.catalog.upsert(spec, secrets)

    def get_graph(self, namespace: str, name: str) -> GraphSpec:
        return self.catalog.get(namespace, name).spec

    def list_graphs(self, namespace: str) -> list[GraphSpec]:
        return [g.spec for g in self.catalog.graphs(namespace)]

    def graphs(self) -> list[CompiledGraph]:
        return self.catalog.graphs()

    async def delete_graph(self, namespace: str, name: str, *, force: bool) -> None:
        self.catalog.get(namespace, name)
        pending = [r for r in self._table.runs.values() if r.namespace == namespace and r.graph_name == name]
        if pending and not force:
            raise ConflictError(
                f"graph {name!r} has {len(pending)} pending run(s); cancel them or delete with force=True",
                namespace=namespace,
                graph_name=name,
            )
        now = self._clock()
        for run in pending:
            self._machine.cancel(run, now)
        self.catalog.delete(namespace, name)
        await self._commit.wait()

    # ================================================================== runs

    async def trigger(self, request: TriggerRequest) -> str:
        """Start a run; returns once the run is committed."""
        (run_id,) = await self._start_runs([self._check(request)])
        return run_id

    async def trigger_many(self, requests: Sequence[TriggerRequest]) -> list[str]:
        """Start several runs: all are checked first, then all are committed in one transaction."""
        checked = []
        for index, request in enumerate(requests):
            try:
                checked.append(self._check(request))
            except ExosphereError as exc:
                raise exc.with_message(f"trigger #{index}: {exc}") from None
        return await self._start_runs(checked)

    def _check(self, request: TriggerRequest) -> CheckedTrigger:
        graph = self.catalog.get(request.namespace, request.graph_name)
        return check_trigger(request, graph, self.runtimes.node_schema(request.namespace, graph.root.node_name))

    async def _start_runs(self, checked: Sequence[CheckedTrigger]) -> list[str]:
        started_ns = time.time_ns()
        now = self._clock()
        runs = [self._machine.start_run(c, self.shards.new_run_id(c.shard), now) for c in checked]
        for c in checked:
            self.catalog.acquire(c.graph)
        if self._tracing is not None:  # before the commit: the first dispatch may happen in this very tick
            self._tracing.triggered(runs, started_ns)
        await self._commit.wait()
        return [run.run_id for run in runs]

    def is_live(self, run_id: str) -> bool:
        """Whether the run is held in memory (pending, or ended and its end not committed yet)."""
        return run_id in self._table.runs

    # Reads (server/runs.py): a run held here from memory, any other from the store.

    def get_run(self, run_id: str, page_size: int = 0, after_seq: int = -1) -> tuple[RunRow, list[StateRow], int]:
        """The run, a page of its states (by sequence), and the last sequence returned (-1 when none)."""
        return self._queries.get_run(run_id, page_size, after_seq)

    def get_run_row(self, run_id: str) -> RunRow:
        """The run without its states: from memory when held here, else its stored row."""
        return self._queries.get_run_row(run_id)

    def get_states(self, run_id: str, after_seq: int = -1, limit: int = 0) -> list[StateRow]:
        """States of a run not held here (finished, or another replica's), read from the store."""
        return self._queries.get_states(run_id, after_seq, limit)

    def get_state_rows(self, run_id: str, after_seq: int = -1, limit: int = 0) -> list[tuple[object, ...]] | None:
        """As ``get_states``, as stored (server/state_frames.py encodes them); None when the store cannot."""
        return self._queries.get_state_rows(run_id, after_seq, limit)

    def list_runs(
        self, namespace: str, graph_name: str | None, limit: int, after: RunCursor | None, status: str | None = None
    ) -> list[RunRow]:
        return self._queries.list_runs(namespace, graph_name, limit, after, status)

    def find_runs(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        return self._queries.find_runs(prefix, limit)

    def watch_run(
        self, run_id: str, *, whole_end: bool = False, end_only: bool = False
    ) -> AsyncIterator[tuple[RunRow, list[StateRow]]]:
        """The run with all its states, then the changed ones per commit, until its end (all, with whole_end;
        nothing between, with end_only)."""
        return self._queries.watch_run(run_id, whole_end=whole_end, end_only=end_only)

    async def cancel_run(self, run_id: str) -> RunRow:
        run = self._table.runs.get(run_id)
        if run is None:
            row = self._store.get_run(run_id)
            if row is None:
                raise RunNotFoundError(run_id)
            if row.status == RunStatus.PENDING and not self.shards.owns(run_id):
                self._not_here(run_id)
            return row
        self._machine.cancel(run, self._clock())
        await self._commit.wait()
        return run

    async def retry_state(self, state_id: str, request_id: str) -> str:
        """Create a new attempt of a failed state, once per (namespace, request id); reopens a finished run."""
        run_id = state_id.rpartition("-")[0]
        if run_id and not self.shards.owns(run_id):
            self._not_here(run_id)
        return await self._retries.retry(state_id, request_id)

    def _not_here(self, run_id: str) -> None:
        """A run that changes is changed by the owner of its shard only."""
        raise NotOwnerError(run_id, self.shards.owners.get(self.shards.of(run_id)))

    def _forget(self, run: Run) -> None:
        if self._table.runs.get(run.run_id) is not run:
            return  # already forgotten (its shard was let go before its end was committed)
        self._table.forget(run)
        if run.graph is not None:
            self.catalog.release(run.graph)

    # ================================================================== leases and deadlines

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                self.sweep()
            except Exception:
                logger.exception("sweep failed")

    def sweep(self) -> None:
        """Expire silent sessions, states past their deadline, and cancels never acknowledged."""
        self.runtimes.expire()
        now = self._clock()
        for state in list(self.runtimes.overdue(now)):
            self._machine.timed_out(state, now)
        self._dispatcher.release_due()
        self._dispatcher.schedule()

    def _after_commit(self, changed: list[State], finished: list[Run]) -> None:
        """After each commit (server/commit.py): tell watchers what was committed, forget the runs that ended."""
        for run in finished:
            run.end_committed = not run.pending
        watches.notify(changed, finished)
        for run in finished:
            if not run.pending:  # else reopened (manual retry) before its end was committed
                self._forget(run)

    def _commit_failed(self, exc: BaseException) -> None:
        """The database refused a commit (disk full, I/O error). Memory is now ahead of the database, so the engine
        must not go on: ``on_fatal`` stops the scheduler. A restart recovers from the last commit and runs again
        what was lost (at-least-once)."""
        if isinstance(exc, FencedError):  # cluster mode: those shards are another replica's now; the rest go on
            self.shards.drop(exc.shards)
            return
        if self.fatal_error is None:
            self.fatal_error = exc
            if self.on_fatal is not None:
                self.on_fatal(exc)

    # ================================================================== small durable key-value records (cron)

    def put_kv(self, key: str, value: str) -> None:
        """Record ``key`` in the next group commit, atomically with whatever else this tick changes."""
        self._commit.put_kv(key, value)

    def get_kv(self, key: str) -> str | None:
        """A record, including one put this tick and not committed yet."""
        return self._commit.get_kv(key)

    def now_ms(self) -> int:
        return self._clock()

    async def commit(self) -> None:
        """Wait until everything changed so far is committed."""
        await self._commit.wait()
