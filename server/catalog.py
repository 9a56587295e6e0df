"""The graph catalog: graph templates, compiled, by name and by version; their secrets, sealed at rest.

The current version of each graph is what triggers start. Older versions stay in memory only while a live run
still uses them (counted by ``acquire``/``release``); a run loaded later (recovery, a manual retry of a finished
run) reads its version back from the store. Large templates compile in a worker thread so that one big upsert
does not stall every other client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from exosphere.errors import ConflictError, GraphNotFoundError, GraphValidationError

from .graph import CompiledGraph, compile_graph
from .models import GraphSpec, NodeSchema
from .secrets import SecretBox
from .store import Store

__all__ = ["GraphCatalog"]

logger = logging.getLogger(__name__)

# Templates with more nodes than this compile off the event loop.
COMPILE_IN_THREAD = 500

Registry = Callable[[str, str], NodeSchema | None]


class GraphCatalog:
    def __init__(self, store: Store, box: SecretBox, registry: Registry, *, clock: Callable[[], int]) -> None:
        self._store = store
        self._box = box
        self._registry = registry
        self._clock = clock
        self._current: dict[tuple[str, str], CompiledGraph] = {}
        self._versions: dict[tuple[str, str, int], CompiledGraph] = {}
        self._users: dict[tuple[str, str, int], int] = {}
        self.on_saved: Callable[[CompiledGraph | None, str, str], None] | None = None
        # Cluster mode: other replicas save graphs too; a graph not known here is looked up in the store, and the
        # nodes a graph uses may have registered with another replica.
        self.shared = False
        self.refresh_nodes: Callable[[], bool] | None = None

    # ------------------------------------------------------------------ reads

    def get(self, namespace: str, name: str) -> CompiledGraph:
        graph = self._current.get((namespace, name))
        if graph is None and self.shared:
            self.refresh(self._store.load_graphs())
            graph = self._current.get((namespace, name))
        if graph is None:
            raise GraphNotFoundError(namespace, name)
        return graph

    def find(self, namespace: str, name: str) -> CompiledGraph | None:
        return self._current.get((namespace, name))

    def graphs(self, namespace: str | None = None) -> list[CompiledGraph]:
        return [g for (ns, _), g in sorted(self._current.items()) if namespace is None or ns == namespace]

    def namespaces(self) -> set[str]:
        return {ns for ns, _ in self._current}

    def version_count(self) -> int:
        """Compiled versions held in memory (current ones and those live runs use)."""
        return len({id(g) for g in (*self._current.values(), *self._versions.values())})

    # ------------------------------------------------------------------ writes

    async def upsert(self, spec: GraphSpec, secrets: Mapping[str, str] | None) -> GraphSpec:
        """Validate and save a graph template; raise GraphValidationError listing every problem.

        ``secrets`` None keeps the secrets the graph already has.
        """
        if self.shared:  # another replica may have saved a newer version, or registered the nodes
            if self.refresh_nodes is not None:
                self.refresh_nodes()
            self.refresh(self._store.load_graphs())
        existing = self._current.get((spec.namespace, spec.name))
        secret_values = (
            self._decrypt(existing.spec) if secrets is None and existing is not None else dict(secrets or {})
        )
        if len(spec.nodes) > COMPILE_IN_THREAD:
            compiled, errors = await asyncio.to_thread(compile_graph, spec, self._registry, secret_values)
        else:
            compiled, errors = compile_graph(spec, self._registry, secret_values)
        if compiled is None:
            raise GraphValidationError(errors)
        existing = self._current.get((spec.namespace, spec.name))  # another upsert may have landed meanwhile
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
        self._set_current(compiled)
        logger.info("graph saved namespace=%r graph=%r version=%d", spec.namespace, spec.name, version)
        if self.on_saved is not None:
            self.on_saved(compiled, spec.namespace, spec.name)
        return stored

    def delete(self, namespace: str, name: str) -> None:
        graph = self.get(namespace, name)
        del self._current[namespace, name]
        self._drop_if_unused(graph)
        self._store.delete_graph(namespace, name)
        if self.on_saved is not None:
            self.on_saved(None, namespace, name)

    def _set_current(self, graph: CompiledGraph) -> None:
        key = (graph.namespace, graph.name)
        old = self._current.get(key)
        self._current[key] = graph
        self._versions[graph.namespace, graph.name, graph.version] = graph
        if old is not None and old is not graph:
            self._drop_if_unused(old)

    # ------------------------------------------------------------------ versions live runs use

    def acquire(self, graph: CompiledGraph) -> None:
        key = (graph.namespace, graph.name, graph.version)
        self._users[key] = self._users.get(key, 0) + 1
        self._versions.setdefault(key, graph)

    def release(self, graph: CompiledGraph) -> None:
        key = (graph.namespace, graph.name, graph.version)
        users = self._users.get(key, 0) - 1
        if users > 0:
            self._users[key] = users
            return
        self._users.pop(key, None)
        self._drop_if_unused(graph)

    def _drop_if_unused(self, graph: CompiledGraph) -> None:
        key = (graph.namespace, graph.name, graph.version)
        if key not in self._users and self._current.get(key[:2]) is not graph:
            self._versions.pop(key, None)

    def version(self, namespace: str, name: str, version: int) -> CompiledGraph | None:
        """A version in memory, else compiled from the store (a run loaded after its version was replaced)."""
        key = (namespace, name, version)
        graph = self._versions.get(key)
        if graph is None:
            spec = self._store.load_graph_version(namespace, name, version)
            graph = self._compile_stored(spec) if spec is not None else None
            if graph is not None:
                self._versions[key] = graph
        return graph

    # ------------------------------------------------------------------ start-up

    def load(self) -> None:
        """Compile every stored graph (recovery). A graph that no longer compiles is reported and left out."""
        for spec in self._store.load_graphs():
            compiled = self._compile_stored(spec)
            if compiled is not None:
                self._set_current(compiled)

    def refresh(self, specs: list[GraphSpec], *, recompile: bool = False) -> int:
        """Cluster mode: take the graphs other replicas saved or deleted (``specs``: every stored graph); with
        ``recompile``, compile every graph again (node schemas changed). Returns how many changed here."""
        changed = 0
        seen = set()
        for spec in specs:
            key = (spec.namespace, spec.name)
            seen.add(key)
            current = self._current.get(key)
            if current is not None and current.version >= spec.version and not recompile:
                continue
            compiled = self._compile_stored(spec)
            if compiled is not None:
                self._set_current(compiled)
                changed += 1
                if self.on_saved is not None:
                    self.on_saved(compiled, spec.namespace, spec.name)
        for key in [k for k in self._current if k not in seen]:
            graph = self._current.pop(key)
            self._drop_if_unused(graph)
            changed += 1
            if self.on_saved is not None:
                self.on_saved(None, *key)
        return changed

    def _compile_stored(self, spec: GraphSpec) -> CompiledGraph | None:
        problem = None
        try:
            secrets = self._decrypt(spec)
        except ConflictError as exc:  # a wrong key must not stop the scheduler; the graph refuses triggers instead
            logger.error("cannot decrypt secrets of graph %s/%s: %s", spec.namespace, spec.name, exc)
            secrets = {}
            problem = (
                f"the secrets of graph {spec.name!r} cannot be decrypted with this scheduler's secrets key; "
                "upsert the graph again with its secrets"
            )
        compiled, errors = compile_graph(spec, self._registry, secrets, strict=False)
        if compiled is None:
            logger.error(
                "stored graph no longer compiles namespace=%r graph=%r errors=%s",
                spec.namespace, spec.name, "; ".join(errors),
            )  # fmt: skip
        else:
            compiled.problem = problem
        return compiled

    def _decrypt(self, spec: GraphSpec) -> dict[str, str]:
        return {k: self._box.decrypt(v, _secret_context(spec, k)) for k, v in spec.secrets.items()}


def _secret_context(spec: GraphSpec, name: str) -> str:
    return f"{spec.namespace}/{spec.name}/{name}"
