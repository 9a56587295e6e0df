"""Runtime sessions and their leases, and the node schemas runtimes registered.

A session is one runtime stream. It holds the states dispatched to it (``in_flight``, one credit each) until the
runtime answers. A session that is silent longer than its lease is ended, and its states go back to the ready
queues (at-least-once). A state can also be withdrawn from a session (cancelled, or past its deadline): the
runtime is told to stop it, and its credit returns with the runtime's answer or, if none comes, after a lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence

from exosphere.errors import ConflictError, InvalidArgumentError

from .dispatch import Dispatcher
from .models import NodeSchema
from .runstate import Run, Session, State
from .runtable import RunTable
from .status import StateStatus
from .store import Store

__all__ = ["Sessions", "withdraw"]

logger = logging.getLogger(__name__)

# Enum members bound once: attribute access on an Enum class costs ~70 ns on Python 3.11 and the hot path makes
# dozens per state.
QUEUED = StateStatus.QUEUED
CREATED = StateStatus.CREATED


def withdraw(state: State) -> None:
    """Ask the runtime that holds ``state`` to stop it. Its credit returns with the runtime's acknowledgement, or
    after a lease if none comes (a runtime that ignores cancels must not lose its capacity for good)."""
    session = state.session
    if session is None:
        return
    session.cancels.append(state.state_id)
    session.cancelled[state.dispatch_id] = time.monotonic()
    session.wake.set()
    state.session = None


class Sessions:
    """Connected runtimes by session id, and the node schemas registered in each namespace."""

    def __init__(
        self, store: Store, table: RunTable, dispatcher: Dispatcher, *, clock: Callable[[], int], lease_ms: int
    ) -> None:
        self._store = store
        self._table = table
        self._dispatcher = dispatcher
        self._clock = clock
        self._lease_s = lease_ms / 1000
        self._sessions: dict[str, Session] = {}
        self.nodes: dict[tuple[str, str], NodeSchema] = {}
        # Cluster mode: every live replica's address, and this one's (runtimes hold a stream to each).
        self.replicas: tuple[str, ...] = ()
        self.replica_address = ""
        # Set once the scheduler stops: registrations are refused (UNAVAILABLE), so runtimes go elsewhere or retry.
        self.stopping = False

    # ------------------------------------------------------------------ node schemas

    def node_schema(self, namespace: str, name: str) -> NodeSchema | None:
        return self.nodes.get((namespace, name))

    def nodes_of(self, namespace: str) -> list[NodeSchema]:
        return [schema for (ns, _), schema in sorted(self.nodes.items()) if ns == namespace]

    def refresh_nodes(self, decode: Callable[[str, bytes], NodeSchema] | None) -> bool:
        """Cluster mode: take the node registrations other replicas saved. Returns whether any changed."""
        changed = False
        if decode is None:
            return changed
        for namespace, name, raw in self._store.load_nodes():
            known = self.nodes.get((namespace, name))
            if known is not None and known.raw == raw:
                continue
            try:
                self.nodes[namespace, name] = decode(namespace, raw)
                changed = True
            except ValueError as exc:
                logger.error("stored schema unreadable, skipped namespace=%s node=%s error=%s", namespace, name, exc)
        return changed

    def set_replicas(self, addresses: Collection[str], own: str) -> None:
        """Cluster mode: the live replicas changed; every connected runtime is told (server/runtime_api.py)."""
        replicas = tuple(sorted(addresses))
        self.replica_address = own
        if replicas == self.replicas:
            return
        self.replicas = replicas
        for session in self._sessions.values():
            session.replicas_changed = True
            session.wake.set()

    # ------------------------------------------------------------------ sessions

    def register(
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
        counts = Counter(s.name for s in schemas)
        duplicates = sorted(name for name, count in counts.items() if count > 1)
        if duplicates:
            errors.append(f"duplicate node names: {duplicates}")
        if errors:
            raise InvalidArgumentError("; ".join(errors))
        held = {name for s in self._dispatcher.by_namespace.get(namespace, ()) for name in s.node_names}
        conflicts = []
        for schema in schemas:
            old = self.nodes.get((namespace, schema.name))
            if old is not None and schema.name in held and old.fingerprint() != schema.fingerprint():
                conflicts.append(f"node {schema.name!r}: {_schema_diff(old, schema)}")
        if conflicts:
            raise ConflictError(
                "schema conflicts with runtimes still connected with the old schema: " + "; ".join(conflicts),
                namespace=namespace,
            )
        changed = []
        for schema in schemas:
            old = self.nodes.get((namespace, schema.name))
            if old is None or old.fingerprint() != schema.fingerprint() or old.timeout_ms != schema.timeout_ms:
                changed.append((schema.name, schema.raw))
            self.nodes[namespace, schema.name] = schema
        if changed:
            self._store.save_nodes(namespace, changed)
        session = Session(
            session_id=uuid.uuid4().hex,
            namespace=namespace,
            runtime_name=runtime_name,
            runtime_id=runtime_id,
            sdk_version=sdk_version,
            node_names=frozenset(counts),
            max_concurrency=max_concurrency,
            connected_at_ms=self._clock(),
            last_seen=time.monotonic(),
        )
        self._sessions[session.session_id] = session
        self._dispatcher.add_session(session)
        logger.info(
            "runtime registered namespace=%s runtime=%s session=%s nodes=%d credit=%d",
            namespace, runtime_name, session.session_id, len(counts), max_concurrency,
        )  # fmt: skip
        return session

    def unregister(self, session: Session, reason: str = "disconnected") -> None:
        """Forget a session; the states it held go back to the queue (at-least-once)."""
        if self._sessions.pop(session.session_id, None) is None:
            return
        session.closed = True
        session.close_reason = session.close_reason or reason
        self._dispatcher.remove_session(session)
        requeued = 0
        for state in session.in_flight.values():
            if state.status == QUEUED and state.session is session:
                self._table.undispatched(state)
                self._dispatcher.enqueue(state)
                requeued += 1
        session.in_flight.clear()
        session.wake.set()
        session.closed_event.set()
        logger.info(
            "runtime gone session=%s runtime=%s reason=%s requeued=%d",
            session.session_id, session.runtime_name, session.close_reason, requeued,
        )  # fmt: skip
        self._dispatcher.schedule()

    async def drain(self, grace_s: float) -> None:
        """Scheduler stopping: dispatch nothing more, ask every runtime to drain, accept results until each closes
        its stream or ``grace_s`` passes, then end the streams left (what they hold goes back to the queue)."""
        self.stopping = True
        sessions = list(self._sessions.values())
        for session in sessions:
            session.draining = True  # no credit: the dispatcher sends it nothing more
            session.drain_grace_ms = int(grace_s * 1000)
            session.wake.set()
        waits = [asyncio.ensure_future(s.closed_event.wait()) for s in sessions if not s.closed]
        if waits and grace_s > 0:
            logger.info("draining runtimes sessions=%d grace_s=%.1f", len(waits), grace_s)
            await asyncio.wait(waits, timeout=grace_s)
        for wait in waits:
            wait.cancel()
        held = sum(len(s.in_flight) for s in self._sessions.values())
        if self._sessions:
            logger.info("drain grace over sessions=%d requeued_up_to=%d", len(self._sessions), held)
        self.close_all(f"scheduler shutting down (drain grace of {grace_s:.1f}s over)")

    def close_all(self, reason: str) -> None:
        """End every runtime stream (scheduler shutting down); runtimes reconnect by themselves."""
        for session in list(self._sessions.values()):
            session.close_reason = reason
            self.unregister(session)

    def touch(self, session: Session) -> None:
        """The runtime was heard from: its lease starts again."""
        session.last_seen = time.monotonic()

    def draining(self, session: Session) -> None:
        """The runtime takes no more work; it finishes what it holds, then closes."""
        session.draining = True

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def connected(self, namespace: str | None = None) -> list[Session]:
        return [s for s in self._sessions.values() if namespace is None or s.namespace == namespace]

    def hosted(self, namespace: str) -> set[str]:
        """Names of the nodes that a connected runtime of ``namespace`` hosts and takes work for (not draining)."""
        names: set[str] = set()
        for session in self._dispatcher.by_namespace.get(namespace, ()):
            if not session.draining and not session.closed:
                names.update(session.node_names)
        return names

    def waiting_for_runtime(self, run: Run) -> list[str]:
        """Nodes ``run`` has CREATED states of that no connected runtime hosts: the run waits until one connects.

        Cheap when every node of the graph is hosted (the usual case); otherwise one pass over the run's states.
        """
        if not run.pending or run.graph is None:
            return []
        missing = {node.node_name for node in run.graph.nodes.values()} - self.hosted(run.namespace)
        if not missing:
            return []
        return sorted({s.node_name for s in run.states if s.status is CREATED and s.node_name in missing})

    def last_heard_ms(self, session: Session) -> int:
        """Wall-clock time (ms) the runtime was last heard from."""
        return self._clock() - int((time.monotonic() - session.last_seen) * 1000)

    # ------------------------------------------------------------------ leases and deadlines

    def expire(self) -> None:
        """End sessions silent past their lease; return the credit of cancels never acknowledged."""
        mono = time.monotonic()
        for session in list(self._sessions.values()):
            silent = mono - session.last_seen
            if silent > self._lease_s:
                session.close_reason = f"lease expired: no message for {silent:.1f}s"
                self.unregister(session)
                continue
            for dispatch_id, since in list(session.cancelled.items()):
                if dispatch_id not in session.in_flight:
                    del session.cancelled[dispatch_id]
                elif mono - since > self._lease_s:
                    del session.cancelled[dispatch_id]
                    del session.in_flight[dispatch_id]

    def overdue(self, now: int) -> Iterator[State]:
        """States still running on a runtime past their deadline."""
        for session in list(self._sessions.values()):
            for state in list(session.in_flight.values()):
                if state.status == QUEUED and state.session is session and now > state.deadline_ms:
                    yield state


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
