"""The scheduling engine: runs, states, dispatch to runtimes, results, fan-out, unites, retries.

Everything on the hot path lives in memory: compiled graphs, live runs and their states, ready queues per
(namespace, node), runtime sessions and their credit. The database is written, not read: every change of one
event-loop tick is collected and committed in ONE transaction at the end of the tick (group commit), so a state's
result, its status change and the states it creates are durable together. Clients and watchers hear of a change
only after it is committed. The engine never imports grpc or protobuf.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from exosphere.errors import (
    ConflictError,
    GraphNotFoundError,
    GraphValidationError,
    InvalidArgumentError,
    RunNotFoundError,
    StateNotFoundError,
)
from server import models as m
from server.commit import GroupCommit
from server.dispatch import Dispatcher
from server.graph import MAX_DELAY_MS, CompiledGraph, CompiledNode, compile_graph
from server.models import GraphSpec, NodeSchema, RunRow, StateRow
from server.retry import retry_delay_ms
from server.runstate import Run, Session, State
from server.secrets import SecretBox
from server.store import Store
from server.templating import OutputRef, StoreRef

__all__ = ["Engine", "EngineSettings", "ResultIn"]

logger = logging.getLogger(__name__)

_LIVE = frozenset({m.CREATED, m.QUEUED, m.EXECUTED})
_RETRYABLE = frozenset({m.ERRORED, m.TIMEDOUT, m.NEXT_CREATED_ERROR})


@dataclass(frozen=True, slots=True)
class EngineSettings:
    heartbeat_interval_ms: int = 1000
    lease_ms: int = 5000
    default_timeout_ms: int = 30 * 60 * 1000
    sweep_interval_s: float = 0.2


@dataclass(slots=True)
class ResultIn:
    """A runtime's result, decoded from the wire."""

    state_id: str
    dispatch_id: int
    kind: str  # "executed" | "errored" | "pruned" | "requeue"
    outputs: list[dict[str, str]] = field(default_factory=list)
    error: dict[str, str] | None = None
    pruned_data: str = "{}"
    delay_ms: int = 0
    store_writes: dict[str, str] | None = None


class ResolutionError(Exception):
    """An input reference could not be resolved when creating a next state."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Engine:
    """The scheduler's core. Create it inside the running loop, then ``await start()``."""

    def __init__(
        self,
        store: Store,
        *,
        secret_box: SecretBox,
        settings: EngineSettings | None = None,
        decode_schema: Callable[[str, bytes], NodeSchema] | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self._store = store
        self._box = secret_box
        self.settings = settings or EngineSettings()
        self._decode_schema = decode_schema
        self._clock = clock
        self._graphs: dict[tuple[str, str], CompiledGraph] = {}
        self._graph_versions: dict[tuple[str, str, int], CompiledGraph] = {}
        self._nodes: dict[tuple[str, str], NodeSchema] = {}
        self._runs: dict[str, Run] = {}
        self._states: dict[str, State] = {}
        self._sessions: dict[str, Session] = {}
        self._dispatcher = Dispatcher(
            loop=lambda: self._loop, clock=clock, default_timeout_ms=self.settings.default_timeout_ms
        )
        self._commit = GroupCommit(store, lambda: self._loop, self._after_commit, self._commit_failed)
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._retry_requests: dict[str, str] = {}
        self.ignored_results = 0
        self.on_graph_saved: Callable[[CompiledGraph | None, str, str], None] | None = None
        # Set when a commit failed; the scheduler must then stop (see _commit_failed).
        self.fatal_error: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] | None = None

    # ================================================================== lifecycle

    async def start(self) -> None:
        """Load graphs, registrations and pending runs from the store, requeue what was in flight."""
        self._loop = asyncio.get_running_loop()
        from server.recovery import recover  # a separate module: only start-up needs it

        recover(self)
        self._tasks.append(self._loop.create_task(self._sweep_loop(), name="engine-sweeper"))

    async def stop(self) -> None:
        """Commit what is pending and stop the background tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks.clear()
        self._dispatcher.close()
        await self._commit.drain()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "Engine.start() was not called"
        return self._loop

    # ================================================================== nodes and sessions

    def node_schema(self, namespace: str, name: str) -> NodeSchema | None:
        return self._nodes.get((namespace, name))

    def register_session(
        self,
        *,
        namespace: str,
        runtime_name: str,
        runtime_id: str,
        sdk_version: str,
        schemas: Sequence[NodeSchema],
        max_concurrency: int,
    ) -> Session:
        """Accept a runtime's registration, or raise an error that names every problem."""
        errors = []
        if not namespace.strip():
            errors.append("namespace cannot be empty")
        if not runtime_name.strip():
            errors.append("runtime_name cannot be empty")
        if max_concurrency < 1:
            errors.append(f"max_concurrency must be at least 1, got {max_concurrency}")
        if not schemas:
            errors.append("a runtime must register at least one node")
        names = [s.name for s in schemas]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            errors.append(f"duplicate node names: {duplicates}")
        if errors:
            raise InvalidArgumentError("; ".join(errors))
        conflicts = []
        for schema in schemas:
            old = self._nodes.get((namespace, schema.name))
            if old is None or old.fingerprint() == schema.fingerprint():
                continue
            holders = [s for s in self._dispatcher.by_namespace.get(namespace, ()) if schema.name in s.node_names]
            if holders:
                conflicts.append(f"node {schema.name!r}: {_schema_diff(old, schema)}")
        if conflicts:
            raise ConflictError(
                "schema conflicts with runtimes still connected with the old schema: " + "; ".join(conflicts)
            )
        for schema in schemas:
            old = self._nodes.get((namespace, schema.name))
            if old is None or old.fingerprint() != schema.fingerprint() or old.timeout_ms != schema.timeout_ms:
                self._store.save_node(namespace, schema.name, schema.raw)
            self._nodes[namespace, schema.name] = schema
        session = Session(
            session_id=uuid.uuid4().hex,
            namespace=namespace,
            runtime_name=runtime_name,
            runtime_id=runtime_id,
            sdk_version=sdk_version,
            node_names=frozenset(names),
            max_concurrency=max_concurrency,
            connected_at_ms=self._clock(),
            last_seen=time.monotonic(),
        )
        self._sessions[session.session_id] = session
        self._dispatcher.add_session(session)
        logger.info(
            "runtime registered namespace=%s runtime=%s session=%s nodes=%s credit=%d",
            namespace,
            runtime_name,
            session.session_id,
            ",".join(names),
            max_concurrency,
        )
        self._dispatcher.schedule()
        return session

    def unregister_session(self, session: Session, reason: str = "disconnected") -> None:
        """Forget a session; the states it held go back to the queue (at-least-once)."""
        if session.session_id not in self._sessions:
            return
        session.closed = True
        session.close_reason = session.close_reason or reason
        del self._sessions[session.session_id]
        self._dispatcher.remove_session(session)
        requeued = 0
        for state in session.in_flight.values():
            if state.status == m.QUEUED and state.session is session:
                state.status = m.CREATED
                state.session = None
                self._dispatcher.enqueue(state)
                requeued += 1
        session.in_flight.clear()
        session.wake.set()
        session.closed_event.set()
        logger.info(
            "runtime gone session=%s runtime=%s reason=%s requeued=%d",
            session.session_id,
            session.runtime_name,
            session.close_reason,
            requeued,
        )
        self._dispatcher.schedule()

    def close_sessions(self, reason: str) -> None:
        """End every runtime stream (scheduler shutting down); runtimes reconnect by themselves."""
        for session in list(self._sessions.values()):
            session.close_reason = reason
            self.unregister_session(session)

    def session(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def touch(self, session: Session) -> None:
        session.last_seen = time.monotonic()

    def session_draining(self, session: Session) -> None:
        session.draining = True

    def sessions(self, namespace: str | None = None) -> list[Session]:
        return [s for s in self._sessions.values() if namespace is None or s.namespace == namespace]

    def namespaces(self) -> list[str]:
        names = {ns for ns, _ in self._nodes} | {ns for ns, _ in self._graphs}
        return sorted(names)

    def nodes(self, namespace: str) -> list[NodeSchema]:
        return [schema for (ns, _), schema in sorted(self._nodes.items()) if ns == namespace]

    # ================================================================== graphs

    async def upsert_graph(self, spec: GraphSpec, secrets: Mapping[str, str] | None) -> GraphSpec:
        """Validate and save a graph template; raise GraphValidationError listing every problem."""
        key = (spec.namespace, spec.name)
        existing = self._graphs.get(key)
        if secrets is None and existing is not None:
            secret_values = self._decrypt(existing.spec)
        else:
            secret_values = dict(secrets or {})
        compiled, errors = compile_graph(spec, self.node_schema, secret_values)
        if compiled is None:
            raise GraphValidationError(errors)
        version = existing.version + 1 if existing is not None else 1
        stored = spec.model_copy(
            update={
                "version": version,
                "updated_at_ms": self._clock(),
                "secrets": {k: self._box.encrypt(v, _secret_context(spec, k)) for k, v in secret_values.items()},
            }
        )
        self._store.save_graph(stored)
        compiled.spec = stored
        self._graphs[key] = compiled
        self._graph_versions[spec.namespace, spec.name, version] = compiled
        logger.info("graph saved namespace=%s graph=%s version=%d", spec.namespace, spec.name, version)
        if self.on_graph_saved is not None:
            self.on_graph_saved(compiled, spec.namespace, spec.name)
        return stored

    def _decrypt(self, spec: GraphSpec) -> dict[str, str]:
        return {k: self._box.decrypt(v, _secret_context(spec, k)) for k, v in spec.secrets.items()}

    def get_graph(self, namespace: str, name: str) -> GraphSpec:
        graph = self._graphs.get((namespace, name))
        if graph is None:
            raise GraphNotFoundError(f"graph {name!r} not found in namespace {namespace!r}")
        return graph.spec

    def list_graphs(self, namespace: str) -> list[GraphSpec]:
        return [g.spec for (ns, _), g in sorted(self._graphs.items()) if ns == namespace]

    async def delete_graph(self, namespace: str, name: str, *, force: bool) -> None:
        self.get_graph(namespace, name)
        pending = [r for r in self._runs.values() if r.namespace == namespace and r.graph_name == name and r.pending]
        if pending and not force:
            raise ConflictError(
                f"graph {name!r} has {len(pending)} pending run(s); cancel them or delete with force=True"
            )
        for run in pending:
            self._cancel(run)
        del self._graphs[namespace, name]
        self._store.delete_graph(namespace, name)
        if self.on_graph_saved is not None:
            self.on_graph_saved(None, namespace, name)
        await self._commit.wait()

    # ================================================================== runs

    async def trigger(
        self,
        namespace: str,
        graph_name: str,
        inputs: Mapping[str, str],
        store: Mapping[str, str],
        start_delay_ms: int = 0,
    ) -> str:
        """Start a run; returns once the run is committed."""
        checked = self._check_trigger(namespace, graph_name, inputs, store, start_delay_ms)
        run = self._start_run(checked, start_delay_ms)
        await self._commit.wait()
        return run.run_id

    async def trigger_many(
        self, requests: Sequence[tuple[str, str, Mapping[str, str], Mapping[str, str], int]]
    ) -> list[str]:
        """Start several runs: all are validated first, then all are committed in one transaction."""
        checked = []
        for index, (namespace, graph_name, inputs, store, delay) in enumerate(requests):
            try:
                checked.append(self._check_trigger(namespace, graph_name, inputs, store, delay))
            except (InvalidArgumentError, GraphNotFoundError, ConflictError) as exc:
                raise type(exc)(f"trigger #{index}: {exc}") from None
        runs = [self._start_run(c, request[4]) for c, request in zip(checked, requests, strict=True)]
        await self._commit.wait()
        return [run.run_id for run in runs]

    def _check_trigger(
        self,
        namespace: str,
        graph_name: str,
        inputs: Mapping[str, str],
        store: Mapping[str, str],
        start_delay_ms: int = 0,
    ) -> tuple[CompiledGraph, dict[str, str], dict[str, str]]:
        if not 0 <= start_delay_ms <= MAX_DELAY_MS:
            raise InvalidArgumentError(f"start_delay must be between 0 and {MAX_DELAY_MS} ms, got {start_delay_ms}")
        graph = self._graphs.get((namespace, graph_name))
        if graph is None:
            raise GraphNotFoundError(f"graph {graph_name!r} not found in namespace {namespace!r}")
        if graph.problem:
            raise ConflictError(graph.problem)
        errors = []
        root = graph.root
        schema = self._nodes.get((namespace, root.node_name))
        declared = schema.input_names() if schema else set(root.inputs)
        unknown = sorted(set(inputs) - declared)
        if unknown:
            errors.append(f"inputs {unknown} are not declared by the root node {root.node_name!r}")
        config = graph.spec.store_config
        run_store = dict(config.default_values) if config else {}
        run_store.update(store)
        if config:
            missing = [k for k in config.required_keys if k not in run_store]
            if missing:
                errors.append(f"missing required store keys: {missing}")
        root_inputs: dict[str, str] = {}
        if not errors:
            try:  # the root may reference only the store (checked at upsert)
                root_inputs = _render_inputs(root, run_store, _no_outputs, skip=inputs.keys())
            except ResolutionError as exc:
                errors.append(str(exc))
            root_inputs.update(inputs)
            if schema is not None:
                missing_inputs = [f.name for f in schema.inputs if f.required and f.name not in root_inputs]
                if missing_inputs:
                    errors.append(f"root node {root.node_name!r} needs inputs {missing_inputs}")
        if errors:
            raise InvalidArgumentError("; ".join(errors))
        return graph, root_inputs, run_store

    def _start_run(self, checked: tuple[CompiledGraph, dict[str, str], dict[str, str]], start_delay_ms: int) -> Run:
        """Create a run from what ``_check_trigger`` accepted."""
        graph, root_inputs, run_store = checked
        now = self._clock()
        run = Run(
            run_id=uuid.UUID(bytes=os.urandom(16), version=4).hex,
            namespace=graph.namespace,
            graph_name=graph.name,
            graph_version=graph.version,
            status=m.RUN_PENDING,
            store=run_store,
            created_at_ms=now,
            updated_at_ms=now,
            graph=graph,
        )
        self._runs[run.run_id] = run
        self._commit.mark_run(run)
        root = self._new_state(
            run,
            graph.root,
            root_inputs,
            None,
            0,
            (),
            now,
            watchers=(),
            run_at_ms=now + start_delay_ms if start_delay_ms else 0,
        )
        self._add_state(root)
        return run

    def get_run(self, run_id: str, page_size: int = 0, after_seq: int = -1) -> tuple[RunRow, list[StateRow], int]:
        """The run, a page of its states (by sequence), and the last sequence returned (-1 when none)."""
        run = self._runs.get(run_id)
        if run is not None:
            states: Sequence[StateRow] = [s for s in run.states if s.seq > after_seq]
            if page_size:
                states = states[:page_size]
            run.state_counts = run.counts()
            return run, list(states), states[-1].seq if states else -1
        row = self._store.get_run(run_id)
        if row is None:
            raise RunNotFoundError(f"run {run_id!r} not found")
        rows = self._store.get_states(run_id, after_seq, page_size)
        return row, rows, rows[-1].seq if rows else -1

    def list_runs(
        self, namespace: str, graph_name: str | None, limit: int, before_ms: int, status: str | None = None
    ) -> list[RunRow]:
        rows = self._store.list_runs(namespace, graph_name, before_ms, limit, status)
        for i, row in enumerate(rows):
            live = self._runs.get(row.run_id)
            if live is not None:
                live.state_counts = live.counts()
                rows[i] = live
        return rows

    async def watch_run(self, run_id: str) -> AsyncIterator[tuple[RunRow, list[StateRow]]]:
        """Yield the run with all its states, then its changed states after each commit, until it is done."""
        run = self._runs.get(run_id)
        if run is None:
            row, states, _ = self.get_run(run_id)
            yield row, states
            return
        queue: asyncio.Queue[list[State] | None] = asyncio.Queue()
        run.watchers.append(queue)
        try:
            run.state_counts = run.counts()
            counted = time.monotonic()
            reported_end = run.end_committed
            yield _committed_view(run), list(run.states)
            # The run's end is reported once it is committed; that commit always notifies this queue, so no
            # event is lost even when it lands while the consumer is busy with the previous one.
            while not reported_end:
                changed = await queue.get()
                if changed is None:
                    break
                reported_end = run.end_committed
                # Counting is O(states): refresh at most every 50 ms while the run goes on, and at its end.
                if reported_end or time.monotonic() - counted > 0.05:
                    run.state_counts = run.counts()
                    counted = time.monotonic()
                yield _committed_view(run), list(changed)
        finally:
            if queue in run.watchers:
                run.watchers.remove(queue)

    async def cancel_run(self, run_id: str) -> RunRow:
        run = self._runs.get(run_id)
        if run is None:
            row = self._store.get_run(run_id)
            if row is None:
                raise RunNotFoundError(f"run {run_id!r} not found")
            return row
        self._cancel(run)
        await self._commit.wait()
        return run

    def _cancel(self, run: Run) -> None:
        if not run.pending:
            return
        run.cancelled = True
        now = self._clock()
        for state in list(run.states):
            if state.status not in _LIVE:
                continue
            if state.status == m.QUEUED and state.session is not None:
                self._cancel_dispatch(state.session, state)
            state.status = m.CANCELLED
            state.updated_at_ms = now
            self._commit.mark(state)
            self._finish(state, failed=False)
        logger.info("run cancelled run_id=%s", run.run_id)

    async def retry_state(self, state_id: str, request_id: str) -> str:
        """Create a new attempt of a failed state, once per request id; reopens a finished run if needed."""
        if request_id and request_id in self._retry_requests:
            return self._retry_requests[request_id]
        key = f"retry-request:{request_id}"
        if request_id:
            previous = self._store.get_kv(key)
            if previous is not None:
                return previous
        state = self._states.get(state_id) or self._reopen(state_id)
        run = state.run
        later = any(
            s.identifier == state.identifier
            and s.parent_id == state.parent_id
            and s.parent_output == state.parent_output
            and s.attempt > state.attempt
            for s in run.states
        )
        if state.status not in _RETRYABLE or run.cancelled or later:
            why = "a later attempt exists" if later else f"it is {state.status}"
            raise ConflictError(f"state {state_id!r} cannot be retried: {why}; only the last failed attempt can")
        now = self._clock()
        new = self._new_state(
            run, state.node, dict(state.inputs), state.parent, state.parent_output, state.path, now,
            watchers=state.watchers, attempt=state.attempt + 1,
        )  # fmt: skip
        self._add_state(new)
        if not run.pending:
            run.status = m.RUN_PENDING
            run.end_committed = False
            run.updated_at_ms = now
            self._commit.mark_run(run)
        self._recount_failures(run)
        self._commit.put_kv(key, new.state_id)
        self._retry_requests[request_id] = new.state_id
        await self._commit.wait()
        logger.info("state retried by request state_id=%s new_state_id=%s", state_id, new.state_id)
        return new.state_id

    def _reopen(self, state_id: str) -> State:
        """Load a finished run back into memory (for a manual retry of one of its states)."""
        from server.recovery import load_runs

        run_id = state_id.rpartition("-")[0]
        row = self._store.get_run(run_id) if run_id else None
        if row is None or run_id in self._runs:
            raise StateNotFoundError(f"state {state_id!r} not found")
        if row.status == m.RUN_CANCELLED:
            raise ConflictError(f"run {run_id!r} was cancelled; its states cannot be retried")
        load_runs(self, [row], self._store.get_states(run_id, -1, 0), complete=False)
        state = self._states.get(state_id)
        if state is None:
            raise StateNotFoundError(f"state {state_id!r} not found")
        return state

    def _recount_failures(self, run: Run) -> None:
        """Recompute which failures still count once a failed attempt has a newer one."""
        latest: dict[tuple[str | None, str, int], int] = {}
        for s in run.states:
            k = (s.parent_id, s.identifier, s.parent_output)
            latest[k] = max(latest.get(k, 0), s.attempt)
        run.failed = False
        for s in run.states:
            for watcher in s.watchers:
                watcher.descendant_failed = False
        for s in run.states:
            if s.status in m.FAILED_STATE_STATUSES and s.status != m.CANCELLED:
                if latest[s.parent_id, s.identifier, s.parent_output] > s.attempt:
                    continue
                run.failed = True
                for watcher in s.watchers:
                    watcher.descendant_failed = True

    # ================================================================== results from runtimes

    def handle_results(self, session: Session, results: Sequence[ResultIn]) -> None:
        """Apply a batch of results; each frees one credit of the session."""
        session.last_seen = time.monotonic()
        now = self._clock()
        for result in results:
            state = session.in_flight.pop(result.dispatch_id, None)
            if state is None or state.session is not session or state.status != m.QUEUED:
                self.ignored_results += 1
                continue
            state.session = None
            kind = result.kind
            if kind == "executed":
                self._on_executed(state, result.outputs, result.store_writes, now)
            elif kind == "errored":
                self._on_failed(state, result.error or {"message": "unknown error", "type": "Error"}, m.ERRORED, now)
            elif kind == "pruned":
                state.status = m.PRUNED
                state.pruned_data = result.pruned_data
                state.updated_at_ms = now
                self._commit.mark(state)
                self._finish(state, failed=False)
            elif kind == "requeue":
                state.status = m.CREATED
                state.run_at_ms = now + min(max(1, result.delay_ms), MAX_DELAY_MS)
                state.updated_at_ms = now
                self._commit.mark(state)
                self._dispatcher.enqueue(state)
            else:
                self._on_failed(
                    state, {"message": f"unknown result kind {kind!r}", "type": "ProtocolError"}, m.ERRORED, now
                )
        self._dispatcher.schedule()

    def _on_executed(
        self, state: State, outputs: list[dict[str, str]], store_writes: dict[str, str] | None, now: int
    ) -> None:
        node = state.node
        problems = _output_problems(node, outputs)
        if problems:
            self._on_failed(state, {"message": problems, "type": "InvalidOutputsError"}, m.ERRORED, now)
            return
        state.outputs = outputs
        state.updated_at_ms = now
        run = state.run
        if store_writes:
            run.store.update(store_writes)
            self._commit.mark_run(run)
        try:
            children = self._children(state, now)
        except ResolutionError as exc:
            state.status = m.NEXT_CREATED_ERROR
            state.error = {"message": str(exc), "type": "ResolutionError"}
            self._commit.mark(state)
            self._finish(state, failed=True)
            return
        for child in children:
            self._add_state(child)
        state.status = m.SUCCESS
        self._commit.mark(state)
        self._finish(state, failed=False)

    def _on_failed(self, state: State, error: dict[str, str], status: str, now: int) -> None:
        run = state.run
        policy = state.node.retry
        retry = state.attempt  # the retry about to be created, counting from 1
        state.error = error
        state.updated_at_ms = now
        if retry <= policy.max_retries and not run.cancelled:
            state.status = m.RETRY_CREATED if status == m.ERRORED else status
            self._commit.mark(state)
            delay = retry_delay_ms(policy, retry)
            new = self._new_state(
                run, state.node, state.inputs, state.parent, state.parent_output, state.path, now,
                watchers=state.watchers, attempt=state.attempt + 1, run_at_ms=now + delay,
            )  # fmt: skip
            self._add_state(new)
            # The new attempt takes over the old one's place among open states.
            run.open_states -= 1
            for watcher in state.watchers:
                watcher.open_descendants -= 1
            logger.info(
                "state retry state_id=%s identifier=%s attempt=%d delay_ms=%d error=%r",
                state.state_id, state.identifier, new.attempt, delay, error.get("message", ""),
            )  # fmt: skip
            return
        state.status = status
        self._commit.mark(state)
        logger.warning(
            "state failed state_id=%s run_id=%s identifier=%s status=%s error=%r",
            state.state_id, run.run_id, state.identifier, status, error.get("message", ""),
        )  # fmt: skip
        self._finish(state, failed=True)

    # ================================================================== creating states

    def _new_state(
        self,
        run: Run,
        node: CompiledNode,
        inputs: dict[str, str],
        parent: State | None,
        parent_output: int,
        path: tuple[int, ...],
        now: int,
        *,
        watchers: tuple[State, ...],
        attempt: int = 1,
        run_at_ms: int = 0,
    ) -> State:
        seq = run.next_seq
        run.next_seq = seq + 1
        state = State(
            state_id=f"{run.run_id}-{seq}",
            run_id=run.run_id,
            identifier=node.identifier,
            node_name=node.node_name,
            status=m.CREATED,
            inputs=inputs,
            attempt=attempt,
            parent_id=parent.state_id if parent is not None else None,
            parent_output=parent_output,
            path=path,
            created_at_ms=now,
            updated_at_ms=now,
            run_at_ms=run_at_ms,
            seq=seq,
            run=run,
            node=node,
            parent=parent,
            watchers=watchers,
        )
        for watcher in watchers:
            watcher.open_descendants += 1
        return state

    def _add_state(self, state: State) -> None:
        run = state.run
        run.states.append(state)
        run.open_states += 1
        self._states[state.state_id] = state
        self._commit.add_state(state)
        self._dispatcher.enqueue(state)

    def _children(self, parent: State, now: int) -> list[State]:
        """The next states of a succeeded state: one per output (one when none) per next node."""
        nexts = parent.node.next
        if not nexts:
            return []
        outputs = parent.outputs or ()
        count = max(1, len(outputs))
        multi = count > 1
        watchers = (*parent.watchers, parent) if parent.node.merges else parent.watchers
        run = parent.run
        children = []
        for k in range(count):
            path = (*parent.path, k) if multi else parent.path
            for node in nexts:
                inputs = self._resolve(node, parent, k, run)
                children.append(self._new_state(run, node, inputs, parent, k, path, now, watchers=watchers))
        return children

    def _resolve(self, node: CompiledNode, parent: State, k: int, run: Run) -> dict[str, str]:
        """Inputs of a next state of ``parent`` (its output ``k``)."""
        return _render_inputs(node, run.store, lambda ref, name: _lookup(ref, parent, k, node, name))

    def _merge_inputs(self, merge: CompiledNode, united: State) -> dict[str, str]:
        """Inputs of a merge state: references below the united state read every branch, as a JSON array."""

        def output(ref: OutputRef, name: str) -> str:
            if ref.identifier == united.identifier:
                return _json_array(ref.field, [united])
            if ref.identifier in merge.aggregated:
                states = (united.collected or {}).get(ref.identifier, [])
                states.sort(key=_path_key)
                return _json_array(ref.field, states)
            return _lookup(ref, united, -1, merge, name)

        return _render_inputs(merge, united.run.store, output)

    # ================================================================== finishing states and runs

    def _finish(self, state: State, *, failed: bool) -> None:
        """A state reached its final status: update its run and the merges that wait for it."""
        run = state.run
        run.open_states -= 1
        if failed:
            run.failed = True
        if state.node.merges and state.status == m.SUCCESS:
            self._maybe_fire(state)
        ident = state.identifier
        for watcher in state.watchers:
            watcher.open_descendants -= 1
            if failed or state.status == m.CANCELLED:
                watcher.descendant_failed = True
            elif state.status == m.SUCCESS and ident in watcher.node.collect:
                if watcher.collected is None:
                    watcher.collected = {}
                watcher.collected.setdefault(ident, []).append(state)
            if watcher.open_descendants == 0:
                self._maybe_fire(watcher)
        if run.open_states == 0 and run.pending:
            self._complete_run(run)

    def _maybe_fire(self, united: State) -> None:
        """Create the merge states of a united state once nothing below it can change."""
        if united.status != m.SUCCESS or united.open_descendants > 0:
            return
        run = united.run
        for merge in united.node.merges:
            if united.fired is None:
                united.fired = set()
            if merge.identifier in united.fired:
                continue
            if run.cancelled or (merge.unites_strategy == "ALL_SUCCESS" and united.descendant_failed):
                continue  # not fired: a manual retry of the failed branch may still succeed
            united.fired.add(merge.identifier)
            now = self._clock()
            try:
                inputs = self._merge_inputs(merge, united)
            except ResolutionError as exc:
                united.error = {"message": str(exc), "type": "ResolutionError"}
                united.status = m.NEXT_CREATED_ERROR
                self._commit.mark(united)
                run.failed = True
                continue
            state = self._new_state(run, merge, inputs, united, -1, united.path, now, watchers=united.watchers)
            self._add_state(state)
        if len(united.fired or ()) == len(united.node.merges):
            united.collected = None  # every merge is created; free the branch references

    def _complete_run(self, run: Run) -> None:
        run.status = m.RUN_CANCELLED if run.cancelled else m.RUN_FAILED if run.failed else m.RUN_SUCCESS
        run.updated_at_ms = self._clock()
        run.state_counts = run.counts()
        self._commit.finish_run(run)
        logger.info(
            "run finished run_id=%s graph=%s status=%s states=%d",
            run.run_id,
            run.graph_name,
            run.status,
            len(run.states),
        )

    # ================================================================== leases and deadlines

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                self.sweep()
            except Exception:
                logger.exception("sweep failed")

    def _cancel_dispatch(self, session: Session, state: State) -> None:
        """Ask the runtime to stop a state. Its credit returns with the runtime's acknowledgement, or after a lease
        if none comes (a runtime that ignores cancels must not lose its capacity for good)."""
        session.cancels.append(state.state_id)
        session.cancelled[state.dispatch_id] = time.monotonic()
        session.wake.set()
        state.session = None

    def sweep(self) -> None:
        """Expire silent sessions, states past their deadline, and cancels never acknowledged."""
        lease_s = self.settings.lease_ms / 1000
        mono = time.monotonic()
        now = self._clock()
        for session in list(self._sessions.values()):
            if mono - session.last_seen > lease_s:
                session.close_reason = f"lease expired: no message for {mono - session.last_seen:.1f}s"
                self.unregister_session(session)
                continue
            for dispatch_id, since in list(session.cancelled.items()):
                if dispatch_id not in session.in_flight:
                    del session.cancelled[dispatch_id]
                elif mono - since > lease_s:
                    del session.cancelled[dispatch_id]
                    del session.in_flight[dispatch_id]
            for state in list(session.in_flight.values()):
                if state.status == m.QUEUED and state.session is session and now > state.deadline_ms:
                    self._cancel_dispatch(session, state)
                    timeout_ms = state.node.timeout_ms or self.settings.default_timeout_ms
                    error = {"message": f"state ran longer than its timeout of {timeout_ms} ms", "type": "TimeoutError"}
                    self._on_failed(state, error, m.TIMEDOUT, now)
        self._dispatcher.schedule()

    # ================================================================== after each commit (see server/commit.py)

    def _after_commit(self, changed: list[State], finished: list[Run]) -> None:
        """Tell watchers what was committed, then forget the runs that ended."""
        for run in finished:
            run.end_committed = not run.pending
        self._notify(changed, finished)
        for run in finished:
            if run.pending:  # reopened (manual retry) before its completion was committed
                continue
            for state in run.states:
                self._states.pop(state.state_id, None)
            self._runs.pop(run.run_id, None)

    def _commit_failed(self, exc: BaseException) -> None:
        """The database refused a commit (disk full, I/O error). Memory is now ahead of the database, so the engine
        must not go on: ``on_fatal`` stops the scheduler. A restart recovers from the last commit and runs again
        what was lost (at-least-once)."""
        if self.fatal_error is None:
            self.fatal_error = exc
            if self.on_fatal is not None:
                self.on_fatal(exc)

    def _notify(self, changed: list[State], finished: list[Run]) -> None:
        by_run: dict[str, list[State]] = {}
        for state in changed:
            if state.run.watchers:
                by_run.setdefault(state.run_id, []).append(state)
        for run in finished:
            if run.watchers:
                by_run.setdefault(run.run_id, [])
        for run_id, states in by_run.items():
            run = states[0].run if states else self._runs[run_id]
            for queue in run.watchers:
                queue.put_nowait(states)

    # ================================================================== small durable key-value records

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

    # ================================================================== introspection for tests and stats

    def graphs(self) -> list[CompiledGraph]:
        return list(self._graphs.values())


def _committed_view(run: Run) -> RunRow:
    """The run as committed: an end not yet committed is still PENDING to the outside."""
    if run.end_committed or run.pending:
        return run
    return RunRow(
        run_id=run.run_id,
        namespace=run.namespace,
        graph_name=run.graph_name,
        graph_version=run.graph_version,
        status=m.RUN_PENDING,
        store=run.store,
        created_at_ms=run.created_at_ms,
        updated_at_ms=run.updated_at_ms,
        state_counts=run.state_counts,
    )


def _render_inputs(
    node: CompiledNode,
    store: Mapping[str, str],
    output: Callable[[OutputRef, str], str],
    skip: Collection[str] = (),
) -> dict[str, str]:
    """Splice store values and outputs (read through ``output``) into ``node``'s input templates."""
    resolved = {k: v for k, v in node.literal_inputs.items() if k not in skip}
    for name, template in node.inputs.items():
        if name in resolved or name in skip:
            continue
        parts = []
        for seg in template.segments:
            if isinstance(seg, str):
                parts.append(seg)
            elif isinstance(seg, StoreRef):
                value = store.get(seg.key)
                if value is None:
                    raise ResolutionError(f"{node.identifier}: input {name!r}: store key {seg.key!r} is not set")
                parts.append(value)
            else:
                parts.append(output(seg, name))
        resolved[name] = "".join(parts)
    return resolved


def _no_outputs(ref: OutputRef, name: str) -> str:
    raise ResolutionError(f"input {name!r}: the root node may reference only the store")


def _secret_context(spec: GraphSpec, name: str) -> str:
    return f"{spec.namespace}/{spec.name}/{name}"


def _lookup(ref: OutputRef, state: State | None, k: int, node: CompiledNode, name: str) -> str:
    """The value of ``${{ ref }}`` in the lineage of ``state`` (its output ``k``)."""
    cur, index = state, k
    while cur is not None:
        if cur.identifier == ref.identifier:
            outputs = cur.outputs
            if not outputs:
                raise ResolutionError(
                    f"{node.identifier}: input {name!r}: {ref.identifier} returned no outputs, so "
                    f"${{{{ {ref.identifier}.outputs.{ref.field} }}}} has no value"
                )
            if index < 0:
                if len(outputs) > 1:
                    return _json_array(ref.field, [cur])
                index = 0
            value = outputs[index].get(ref.field)
            if value is None:
                raise ResolutionError(
                    f"{node.identifier}: input {name!r}: {ref.identifier} has no output {ref.field!r}"
                )
            return value
        index = cur.parent_output
        cur = cur.parent
    raise ResolutionError(f"{node.identifier}: input {name!r}: no ancestor {ref.identifier!r} in this branch")


def _json_array(field_name: str, states: Sequence[State]) -> str:
    return json.dumps([o[field_name] for s in states for o in (s.outputs or ()) if field_name in o], ensure_ascii=False)


def _path_key(state: State) -> tuple[int, ...]:
    return state.path


def _output_problems(node: CompiledNode, outputs: list[dict[str, str]]) -> str:
    if not node.output_fields and not node.required_outputs:
        return ""
    for index, fields in enumerate(outputs):
        unknown = set(fields) - node.output_fields
        missing = node.required_outputs - set(fields)
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing fields {sorted(missing)}")
            if unknown:
                parts.append(f"undeclared fields {sorted(unknown)}")
            return f"{node.node_name} output #{index}: " + ", ".join(parts)
    return ""


def _schema_diff(old: NodeSchema, new: NodeSchema) -> str:
    parts = []
    for label in ("inputs", "outputs", "secrets"):
        a = {f.name: f for f in getattr(old, label)}
        b = {f.name: f for f in getattr(new, label)}
        added = sorted(set(b) - set(a))
        removed = sorted(set(a) - set(b))
        changed = sorted(n for n in set(a) & set(b) if a[n] != b[n])
        for what, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                parts.append(f"{label} {what} {names}")
    return ", ".join(parts) or "field order differs"
