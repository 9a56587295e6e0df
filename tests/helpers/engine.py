"""Drive the engine without sockets: an in-memory store, a clock the test moves, and a fake runtime session.

A test registers node schemas as a runtime would, triggers runs, takes what the engine dispatched from the
session's outbox and answers with results, exactly what the gRPC layer does with real runtimes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from server.engine import Engine, EngineSettings, ResultIn, TriggerRequest
from server.models import FieldSpec, GraphNodeSpec, GraphSpec, NodeSchema, RunRow, StateRow, UnitesSpec
from server.runstate import Session, State
from server.secrets import SecretBox
from server.status import ResultKind
from server.store import InMemoryStore, Store

NS = "unit"
START_MS = 1_700_000_000_000


def schema(name: str, inputs: Iterable[str] = ("x",), outputs: Iterable[str] = ("y",), **extra: Any) -> NodeSchema:
    """A node with required string fields; ``raw`` is the name, so ``decode`` can find it again after a restart."""
    return NodeSchema(
        namespace=extra.pop("namespace", NS),
        name=name,
        inputs=tuple(FieldSpec(f, True) for f in inputs),
        outputs=tuple(FieldSpec(f, True) for f in outputs),
        secrets=tuple(FieldSpec(f, True) for f in extra.pop("secrets", ())),
        timeout_ms=extra.pop("timeout_ms", 0),
        raw=name.encode(),
    )


def node(ident: str, node_name: str = "Echo", inputs: dict[str, str] | None = None, **extra: Any) -> GraphNodeSpec:
    unites = extra.pop("unites", None)
    if isinstance(unites, str):
        unites = UnitesSpec(identifier=unites)
    elif isinstance(unites, tuple):
        unites = UnitesSpec(identifier=unites[0], strategy=unites[1])
    return GraphNodeSpec(
        node_name=node_name,
        namespace=extra.pop("namespace", NS),
        identifier=ident,
        inputs=inputs if inputs is not None else {"x": "v"},
        unites=unites,
        **extra,
    )


class Kit:
    """One engine on one store (in memory unless given); ``restart()`` drops the engine and loads a new one from it."""

    def __init__(
        self, store: Store | None = None, *, lease_ms: int = 5000, shard_count: int = 1, own_all: bool = True
    ) -> None:
        self.shard_count, self.own_all = shard_count, own_all
        self.store = store or InMemoryStore()
        self.now = START_MS
        self.schemas: dict[bytes, NodeSchema] = {}
        self.box = SecretBox(b"k" * 32)
        self.settings = EngineSettings(lease_ms=lease_ms, default_timeout_ms=60_000, sweep_interval_s=3600)
        self.engine = self._new_engine()

    def _new_engine(self) -> Engine:
        return Engine(
            self.store,
            secret_box=self.box,
            settings=self.settings,
            decode_schema=lambda ns, raw: self.schemas[raw],
            clock=lambda: self.now,
            shard_count=self.shard_count,
            own_all_shards=self.own_all,
        )

    async def start(self) -> Kit:
        await self.engine.start()
        return self

    async def restart(self) -> None:
        await self.engine.stop()
        self.engine = self._new_engine()
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    def advance(self, ms: int) -> None:
        self.now += ms

    # ------------------------------------------------------------------ runtimes

    def connect(self, *schemas: NodeSchema, credit: int = 1000, namespace: str = NS) -> Session:
        for s in schemas:
            self.schemas[s.raw] = s
        return self.engine.runtimes.register(
            namespace=namespace,
            runtime_name="unit-runtime",
            runtime_id="rt-1",
            sdk_version="test",
            schemas=schemas,
            max_concurrency=credit,
        )

    async def dispatched(self, session: Session) -> list[State]:
        """What the engine sent this session since the last call (after letting the loop run its dispatch)."""
        for _ in range(3):
            await asyncio.sleep(0)
        sent = [s for s in session.outbox if s.session is session]
        session.outbox.clear()
        return sent

    def answer(self, session: Session, state: State, kind: ResultKind = ResultKind.EXECUTED, **fields: Any) -> None:
        if kind is ResultKind.EXECUTED and "outputs" not in fields:
            fields["outputs"] = [{"y": state.inputs.get("x", "")}]
        fields.setdefault("attempt", state.attempt)
        self.engine.handle_results(session, [ResultIn(state.state_id, state.dispatch_id, kind, **fields)])

    def fail(self, session: Session, state: State, message: str = "boom") -> None:
        self.answer(session, state, ResultKind.ERRORED, error={"message": message, "type": "RuntimeError"})

    async def run_all(self, session: Session, outputs: dict[str, list[dict[str, str]]] | None = None) -> None:
        """Answer everything dispatched (``outputs`` by identifier; default: echo x as y) until nothing is sent."""
        while sent := await self.dispatched(session):
            for state in sent:
                given = (outputs or {}).get(state.identifier)
                if given is None:
                    self.answer(session, state)
                else:
                    self.answer(session, state, outputs=given)
        await self.engine.commit()

    # ------------------------------------------------------------------ graphs and runs

    async def graph(self, name: str, nodes: Sequence[GraphNodeSpec], namespace: str = NS, **extra: Any) -> GraphSpec:
        secrets = extra.pop("secrets", None)
        spec = GraphSpec(namespace=namespace, name=name, nodes=list(nodes), **extra)
        return await self.engine.upsert_graph(spec, secrets)

    async def trigger(self, graph: str, namespace: str = NS, **extra: Any) -> str:
        return await self.engine.trigger(TriggerRequest(namespace, graph, **extra))

    async def run(self, run_id: str) -> tuple[RunRow, list[StateRow]]:
        await self.engine.commit()
        row, states, _ = self.engine.get_run(run_id)
        return row, states

    async def by_identifier(self, run_id: str) -> dict[str, list[StateRow]]:
        _, states = await self.run(run_id)
        out: dict[str, list[StateRow]] = {}
        for s in states:
            out.setdefault(s.identifier, []).append(s)
        return out
