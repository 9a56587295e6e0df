"""Graph templates: validation (every problem at once) and compilation into the form the engine runs."""

from __future__ import annotations

import math
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from croniter import croniter

from .models import GraphSpec, NodeSchema, RetryPolicySpec
from .templating import StoreRef, Template, TemplateSyntaxError, parse_template

__all__ = ["CompiledGraph", "CompiledNode", "compile_graph"]

RETRY_STRATEGIES = frozenset(
    f"{base}{suffix}" for base in ("EXPONENTIAL", "LINEAR", "FIXED") for suffix in ("", "_FULL_JITTER", "_EQUAL_JITTER")
)
UNITES_STRATEGIES = frozenset({"ALL_SUCCESS", "ALL_DONE"})
DEFAULT_RETRY = RetryPolicySpec()
# Bounds that keep every computed time inside the integers the store and the wire carry.
MAX_DELAY_MS = 366 * 24 * 3600 * 1000
MAX_EXPONENT = 100.0


@dataclass(eq=False, slots=True)
class CompiledNode:
    """One template node, ready to run: inputs parsed, edges resolved, secrets picked."""

    identifier: str
    node_name: str
    namespace: str
    inputs: dict[str, Template]
    literal_inputs: dict[str, str]
    retry: RetryPolicySpec
    timeout_ms: int
    secrets: dict[str, str]
    next: list[CompiledNode] = field(default_factory=list)
    # Merge nodes whose `unites` names this node.
    merges: list[CompiledNode] = field(default_factory=list)
    unites: str | None = None
    unites_strategy: str = "ALL_SUCCESS"
    # For a merge node: identifiers strictly below the united node that its inputs reference (aggregated).
    aggregated: frozenset[str] = frozenset()
    output_fields: frozenset[str] = frozenset()
    required_outputs: frozenset[str] = frozenset()
    # Identifiers whose outputs this node's inputs reference.
    referenced: frozenset[str] = frozenset()
    # On a united node: identifiers below it whose succeeded states its merges aggregate.
    collect: frozenset[str] = frozenset()


@dataclass(eq=False, slots=True)
class CompiledGraph:
    spec: GraphSpec
    nodes: dict[str, CompiledNode]
    root: CompiledNode
    # Set when the graph cannot run as stored (for example its secrets cannot be decrypted): triggers are refused.
    problem: str | None = None

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version


class _Ancestors:
    """Ancestor sets as bitsets (Python ints), built in one pass in topological order: linear in practice."""

    def __init__(self, order: list[str], bits: dict[str, int]) -> None:
        self._index = {ident: i for i, ident in enumerate(order)}
        self._bits = bits

    def __contains__(self, ident: object) -> bool:
        return ident in self._bits

    def __getitem__(self, ident: str) -> _AncestorView:
        return _AncestorView(self._bits[ident], self._index)


class _AncestorView:
    def __init__(self, bits: int, index: Mapping[str, int]) -> None:
        self._bits = bits
        self._index = index

    def __contains__(self, ident: object) -> bool:
        i = self._index.get(ident)  # type: ignore[call-overload]
        return i is not None and bool(self._bits >> i & 1)


def _all_ancestors(children: Mapping[str, list[str]], parents: Mapping[str, set[str]]) -> _Ancestors:
    indegree = dict.fromkeys(children, 0)
    for kids in children.values():  # count edges as listed: a repeated next_nodes entry is one more
        for kid in kids:
            indegree[kid] += 1
    ready = [ident for ident, d in indegree.items() if d == 0]
    order: list[str] = []
    while ready:
        ident = ready.pop()
        order.append(ident)
        for kid in children.get(ident, ()):
            indegree[kid] -= 1
            if indegree[kid] == 0:
                ready.append(kid)
    index = {ident: i for i, ident in enumerate(order)}
    bits: dict[str, int] = {}
    for ident in order:
        value = 0
        for parent in parents.get(ident, ()):
            value |= bits[parent] | (1 << index[parent])
        bits[ident] = value
    return _Ancestors(order, bits)


def _find_cycle(children: Mapping[str, list[str]]) -> list[str] | None:
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(children, white)
    for start in children:
        if color[start] != white:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        path: list[str] = []
        while stack:
            node, index = stack.pop()
            if index == 0:
                color[node] = grey
                path.append(node)
            kids = children.get(node, [])
            if index < len(kids):
                stack.append((node, index + 1))
                kid = kids[index]
                if color.get(kid) == grey:
                    return [*path[path.index(kid) :], kid]
                if color.get(kid) == white:
                    stack.append((kid, 0))
            else:
                color[node] = black
                path.pop()
    return None


def valid_timezone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone. Garbage can make zoneinfo raise OSError, not only its own error."""
    if len(name) > 100:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _check_policy(where: str, policy: RetryPolicySpec, errors: list[str]) -> None:
    if policy.strategy not in RETRY_STRATEGIES:
        errors.append(
            f"{where}: unknown retry strategy {policy.strategy!r}; expected one of {sorted(RETRY_STRATEGIES)}"
        )
    if policy.max_retries < 0 or policy.max_retries > 1000:
        errors.append(f"{where}: max_retries must be between 0 and 1000, got {policy.max_retries}")
    if not (math.isfinite(policy.exponent) and 1 <= policy.exponent <= MAX_EXPONENT):
        errors.append(f"{where}: exponent must be between 1 and {MAX_EXPONENT}, got {policy.exponent}")
    if not 0 <= policy.backoff_factor_ms <= MAX_DELAY_MS:
        errors.append(
            f"{where}: backoff_factor must be between 0 and {MAX_DELAY_MS} ms, got {policy.backoff_factor_ms}"
        )
    if policy.max_delay_ms is not None and not 0 <= policy.max_delay_ms <= MAX_DELAY_MS:
        errors.append(f"{where}: max_delay must be between 0 and {MAX_DELAY_MS} ms, got {policy.max_delay_ms}")


@dataclass(slots=True)
class _Shape:
    """The template's structure, as the phases of ``compile_graph`` find it."""

    by_id: dict[str, int]  # identifier -> index in spec.nodes (first occurrence)
    children: dict[str, list[str]]  # next_nodes, plus united -> merge edges
    parents: dict[str, set[str]]
    roots: list[str]
    cycle: list[str] | None

    @property
    def root(self) -> str | None:
        return self.roots[0] if len(self.roots) == 1 else None


def compile_graph(
    spec: GraphSpec,
    registry: Callable[[str, str], NodeSchema | None],
    secret_values: Mapping[str, str],
    *,
    strict: bool = True,
) -> tuple[CompiledGraph | None, list[str]]:
    """Validate ``spec`` against the registered nodes; return the compiled graph, or every problem found.

    Linear in the size of the template (ancestor sets are bitsets). With ``strict=False`` (recovery of a graph that
    was valid when saved) problems that do not break the structure, such as a node whose registration changed since,
    are returned beside the compiled graph.
    """
    errors: list[str] = []
    if not spec.name.strip():
        errors.append("graph name cannot be empty")
    if not spec.nodes:
        errors.append("graph has no nodes")
        return None, errors
    by_id = _check_nodes(spec, errors)
    shape = _check_shape(spec, by_id, errors)
    store_keys = _check_store_and_triggers(spec, errors)
    compiled, schemas = _compile_nodes(spec, shape, registry, secret_values, errors)
    _check_references(shape, compiled, schemas, store_keys, errors)
    for ident, cnode in compiled.items():
        source = spec.nodes[by_id[ident]]
        cnode.next = [compiled[t] for t in source.next_nodes if t in compiled and compiled[t].unites is None]
    if shape.root is None or shape.cycle or (errors and strict):
        return None, errors
    return CompiledGraph(spec=spec, nodes=compiled, root=compiled[shape.root]), errors


def _check_nodes(spec: GraphSpec, errors: list[str]) -> dict[str, int]:
    """Phase 1, each node on its own: identifiers, names, timeouts, retry policies. Returns identifier -> index."""
    by_id: dict[str, int] = {}
    for index, node in enumerate(spec.nodes):
        label = node.identifier or f"node #{index}"
        if not node.identifier.strip():
            errors.append(f"node #{index} ({node.node_name!r}) has an empty identifier")
        elif node.identifier == "store":
            errors.append("identifier 'store' is reserved (it names the run's store in ${{ store.key }})")
        elif node.identifier in by_id:
            errors.append(f"duplicate identifier {node.identifier!r}")
        else:
            by_id[node.identifier] = index
        if not node.node_name.strip():
            errors.append(f"{label}: node_name cannot be empty")
        if node.namespace and node.namespace != spec.namespace:
            errors.append(
                f"{label}: node namespace {node.namespace!r} differs from the graph's namespace {spec.namespace!r}"
            )
        if len(set(node.next_nodes)) != len(node.next_nodes):
            errors.append(f"{label}: duplicate entries in next_nodes")
        if not 0 <= node.timeout_ms <= MAX_DELAY_MS:
            errors.append(f"{label}: timeout_ms must be between 0 and {MAX_DELAY_MS}, got {node.timeout_ms}")
        if node.retry_policy is not None:
            _check_policy(label, node.retry_policy, errors)
    if spec.retry_policy is not None:
        _check_policy("graph retry_policy", spec.retry_policy, errors)
    return by_id


def _check_shape(spec: GraphSpec, by_id: dict[str, int], errors: list[str]) -> _Shape:
    """Phase 2, the edges: targets exist, unites are sound, one root, no cycle, everything reachable."""
    children: dict[str, list[str]] = {i: [] for i in by_id}
    parents: dict[str, set[str]] = {i: set() for i in by_id}
    for ident, index in by_id.items():
        node = spec.nodes[index]
        for target in node.next_nodes:
            if target not in by_id:
                errors.append(f"{ident}: next_nodes target {target!r} does not exist")
                continue
            children[ident].append(target)
            parents[target].add(ident)
        if node.unites is not None:
            target = node.unites.identifier
            if node.unites.strategy not in UNITES_STRATEGIES:
                errors.append(f"{ident}: unknown unites strategy {node.unites.strategy!r}")
            if not target.strip():
                errors.append(f"{ident}: unites identifier cannot be empty")
            elif target == ident:
                errors.append(f"{ident}: unites cannot name the node itself")
            elif target not in by_id:
                errors.append(f"{ident}: unites target {target!r} does not exist")
            elif target not in parents[ident]:
                # A merge node counts as a child of the node it unites (also for reachability).
                children[target].append(ident)
                parents[ident].add(target)
    roots = [i for i in by_id if not parents[i]]
    if len(roots) != 1:
        errors.append(
            f"graph must have exactly one root (a node no other node points to), found {len(roots)}: {sorted(roots)}"
        )
    cycle = _find_cycle(children)
    if cycle:
        errors.append(f"graph has a cycle: {' -> '.join(cycle)}")
    if len(roots) == 1:
        reachable = {roots[0]} | _descendants(children, roots[0])
        unreachable = sorted(set(by_id) - reachable)
        if unreachable:
            errors.append(f"nodes not connected to the root {roots[0]!r}: {unreachable}")
    return _Shape(by_id, children, parents, roots, cycle)


def _check_store_and_triggers(spec: GraphSpec, errors: list[str]) -> set[str]:
    """Phase 3: store keys and cron triggers. Returns the declared store keys."""
    store_keys: set[str] = set()
    if spec.store_config is not None:
        store_keys = set(spec.store_config.required_keys) | set(spec.store_config.default_values)
        for key in store_keys:
            if not key.strip() or "." in key:
                errors.append(f"store key {key!r} must be non-empty and contain no '.'")
    for index, trigger in enumerate(spec.triggers):
        if not croniter.is_valid(trigger.expression) or len(trigger.expression.split()) != 5:
            errors.append(f"trigger #{index}: invalid cron expression {trigger.expression!r} (expected 5 fields)")
        if not valid_timezone(trigger.timezone or "UTC"):
            errors.append(f"trigger #{index}: unknown timezone {trigger.timezone[:100]!r}")
    return store_keys


def _compile_nodes(
    spec: GraphSpec,
    shape: _Shape,
    registry: Callable[[str, str], NodeSchema | None],
    secret_values: Mapping[str, str],
    errors: list[str],
) -> tuple[dict[str, CompiledNode], dict[str, NodeSchema]]:
    """Phase 4, each node against its registered schema: inputs declared and present, secrets given, templates
    parsed. Returns the compiled nodes (not linked yet) and the schemas found."""
    schemas: dict[str, NodeSchema] = {}
    compiled: dict[str, CompiledNode] = {}
    for ident, index in shape.by_id.items():
        node = spec.nodes[index]
        schema = registry(spec.namespace, node.node_name)
        if schema is None:
            errors.append(f"{ident}: node {node.node_name!r} is not registered in namespace {spec.namespace!r}")
        else:
            schemas[ident] = schema
            declared = schema.input_names()
            for name in sorted(set(node.inputs) - declared):
                errors.append(f"{ident}: input {name!r} is not declared by node {node.node_name!r}")
            if ident != shape.root:
                for fs in schema.inputs:
                    if fs.required and fs.name not in node.inputs:
                        errors.append(f"{ident}: required input {fs.name!r} of node {node.node_name!r} is missing")
            missing_secrets = [f.name for f in schema.secrets if f.required and f.name not in secret_values]
            if missing_secrets:
                errors.append(
                    f"{ident}: secrets {missing_secrets} declared by node {node.node_name!r} are not provided"
                )
        templates: dict[str, Template] = {}
        for name, value in node.inputs.items():
            try:
                templates[name] = parse_template(value)
            except TemplateSyntaxError as exc:
                errors.append(f"{ident}: input {name!r}: {exc}")
        compiled[ident] = CompiledNode(
            identifier=ident,
            node_name=node.node_name,
            namespace=spec.namespace,
            inputs=templates,
            literal_inputs={k: v.literal() for k, v in templates.items() if v.is_literal},
            retry=node.retry_policy or spec.retry_policy or DEFAULT_RETRY,
            timeout_ms=node.timeout_ms or (schema.timeout_ms if schema else 0),
            secrets={f.name: secret_values[f.name] for f in schema.secrets if f.name in secret_values}
            if schema is not None
            else {},
            unites=node.unites.identifier if node.unites else None,
            unites_strategy=node.unites.strategy if node.unites else "ALL_SUCCESS",
            output_fields=frozenset(schema.output_names()) if schema else frozenset(),
            required_outputs=frozenset(f.name for f in schema.outputs if f.required) if schema else frozenset(),
        )
    return compiled, schemas


def _check_references(
    shape: _Shape,
    compiled: dict[str, CompiledNode],
    schemas: dict[str, NodeSchema],
    store_keys: set[str],
    errors: list[str],
) -> None:
    """Phase 5, the references: ancestors only, declared output fields, declared store keys, the root reads only the
    store. Links each merge node to the node it unites, with what the merge aggregates."""
    ancestor_sets = _all_ancestors(shape.children, shape.parents)
    collect: dict[str, set[str]] = {}
    for ident, cnode in compiled.items():
        # A node on a cycle has no ancestor set (the cycle is reported); its other references are still checked.
        ancestors = ancestor_sets[ident] if ident in ancestor_sets else None
        referenced: set[str] = set()
        aggregated: set[str] = set()
        for name, template in cnode.inputs.items():
            for ref in template.refs:
                if isinstance(ref, StoreRef):
                    if ref.key not in store_keys:
                        errors.append(
                            f"{ident}: input {name!r} reads store key {ref.key!r}, which is neither a required key "
                            "nor defaulted in store_config"
                        )
                    continue
                referenced.add(ref.identifier)
                if ident == shape.root:
                    errors.append(f"{ident}: input {name!r}: the root node may reference only the store")
                elif ref.identifier not in compiled:
                    errors.append(f"{ident}: input {name!r} references unknown node {ref.identifier!r}")
                elif ancestors is not None and ref.identifier not in ancestors:
                    errors.append(f"{ident}: input {name!r} references {ref.identifier!r}, which is not an ancestor")
                elif ref.identifier in schemas and ref.field not in compiled[ref.identifier].output_fields:
                    errors.append(
                        f"{ident}: input {name!r} references output {ref.field!r}, which node "
                        f"{compiled[ref.identifier].node_name!r} ({ref.identifier}) does not declare"
                    )
                if cnode.unites is not None and (
                    ref.identifier == cnode.unites or _below(ancestor_sets, ref.identifier, cnode.unites)
                ):
                    aggregated.add(ref.identifier)
        cnode.referenced = frozenset(referenced)
        cnode.aggregated = frozenset(aggregated)
        if cnode.unites is not None and cnode.unites in compiled:
            compiled[cnode.unites].merges.append(cnode)
            collect.setdefault(cnode.unites, set()).update(aggregated - {cnode.unites})
    for ident, identifiers in collect.items():
        compiled[ident].collect = frozenset(identifiers)


def _below(ancestor_sets: _Ancestors, ident: str, above: str) -> bool:
    """Whether ``ident`` is strictly below ``above`` (false on a cycle, which is reported anyway)."""
    return ident in ancestor_sets and above in ancestor_sets[ident]


def _descendants(children: Mapping[str, list[str]], start: str | None) -> set[str]:
    if start is None:
        return set()
    seen: set[str] = set()
    stack = list(children.get(start, ()))
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(children.get(node, ()))
    return seen
