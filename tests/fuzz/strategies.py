"""Hypothesis strategies that build protobuf request messages for every scheduler RPC.

The strategies mix three kinds of values: things the scheduler knows (the playground namespace, its graphs, runs,
states and registered nodes, passed in as a :class:`Pools`), edge cases chosen by hand (empty, blank, reserved,
unicode, control characters, strings just over the 256-character name limit, uint64 extremes, malformed
``${{ ... }}`` references, garbage cron expressions and time zones, out-of-range enum values), and random values.

Big structures (chains of hundreds of nodes, fan-outs of thousands, huge strings) are built from a few drawn numbers
rather than element by element, so hypothesis stays fast and within its buffer. Strategy objects are built once
(``functools.cache``): hypothesis validates every new strategy object, which costs more than drawing from it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from google.protobuf.descriptor_pb2 import DescriptorProto, FieldDescriptorProto
from hypothesis import strategies as st

from exosphere.v1 import common_pb2, runtime_pb2, scheduler_pb2

__all__ = [
    "CRON_EXPRESSIONS",
    "PLAYGROUND_SCHEMAS",
    "TIMEZONES",
    "AnswerPlan",
    "Pools",
    "answer_plans",
    "graphs",
    "long_texts",
    "names",
    "register_messages",
    "retry_policies",
    "runtime_message_streams",
    "scheduler_requests",
    "small_or_huge_ms",
    "texts",
    "u32s",
    "u64s",
]

U32 = 2**32 - 1
U64 = 2**64 - 1
I32_MIN, I32_MAX = -(2**31), 2**31 - 1

# The nodes registered in the playground namespace: name -> (inputs, outputs, secrets); None marks a required field.
PLAYGROUND_SCHEMAS: dict[str, tuple[dict[str, str | None], dict[str, str | None], dict[str, str | None]]] = {
    "A": ({"text": None}, {"text": None}, {}),
    "B": ({"left": None, "right": ""}, {"out": None, "extra": ""}, {}),
    "Free": ({}, {}, {}),
    "Sec": ({"text": None}, {"text": None}, {"token": None}),
}

# ---------------------------------------------------------------------------------------------- scalars


@functools.cache
def _edge_ints(maximum: int) -> st.SearchStrategy[int]:
    edges = [0, 1, 2, 7, 255, 256, 1000, 60_000, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63]
    return st.one_of(st.sampled_from(sorted({e for e in edges if e <= maximum} | {maximum})), st.integers(0, maximum))


def u32s() -> st.SearchStrategy[int]:
    return _edge_ints(U32)


def u64s() -> st.SearchStrategy[int]:
    return _edge_ints(U64)


@functools.cache
def delays() -> st.SearchStrategy[int]:
    """Start delays: none, small, or near and past the int64 limit of the database."""
    edges = [1, 1000, 2**31, 2**53, 2**62, 2**63 - 1, 2**63, U64]
    return st.one_of(st.just(0), st.just(0), st.sampled_from(edges), st.integers(0, U64))


@functools.cache
def small_or_huge_ms() -> st.SearchStrategy[int]:
    """Delays and timeouts: mostly 0 or small, often at the uint64 extremes."""
    return st.one_of(st.just(0), st.integers(0, 50), u64s())


@functools.cache
def open_enum(values: tuple[int, ...]) -> st.SearchStrategy[int]:
    """A proto3 (open) enum field: a declared value, or any int32 (out-of-range values are legal on the wire)."""
    return st.one_of(
        st.sampled_from(values),
        st.sampled_from([-1, len(values), 99, I32_MIN, I32_MAX]),
        st.integers(I32_MIN, I32_MAX),
    )


# ---------------------------------------------------------------------------------------------- text

ODD_TEXTS = [
    "", " ", "  \t", "\n", "\x00", "\x00abc", "a\x00b", "store", ".", "..", "../x", "a.b", "a/b", "-", "a-1", "*",
    "${{", "}}", "{{", "ünïcødé", "名前", "ノード", "🚀", "👩‍👩‍👧", "\u202eRTL", "\ufeffbom", "\u200b", "Ω≈ç√",
    "null", "None", "0", "-1", "1e999", "%s%s%s", "'; DROP TABLE runs; --", "\\", '"', "`", "<script>",
    "A", "B", "Free", "Echo", "text", "left", "right", "out",
    "a" * 255, "a" * 256, "a" * 257, "é" * 256, "🚀" * 257,
]  # fmt: skip


@functools.cache
def texts(max_size: int = 24) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD_TEXTS),
        st.text(st.characters(codec="utf-8"), max_size=max_size),
        st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12),
    )


@functools.cache
def long_texts(max_len: int = 300_000) -> st.SearchStrategy[str]:
    """Long strings (the size, not the content, is the point), built from one character and one length."""
    lengths = [n for n in (257, 1024, 65_537, 300_000, 1_000_000) if n <= max_len]
    return st.builds(
        lambda c, n: c * n, st.sampled_from(["a", "é", "\U0001d54f", "\x00", " ", "${{ "]), st.sampled_from(lengths)
    )


@functools.cache
def names(pool: tuple[str, ...] = (), *, long: bool = True) -> st.SearchStrategy[str]:
    """Namespaces, graph names, node names, identifiers, keys: known ones, odd ones, random ones, long ones."""
    options: list[st.SearchStrategy[str]] = [texts(), texts(), *([long_texts(70_000)] if long else [])]
    if pool:
        options = [st.sampled_from(pool)] * 3 + options
    return st.one_of(*options)


@functools.cache
def short_texts() -> st.SearchStrategy[str]:
    """Texts of at most 16 characters (for values copied thousands of times)."""
    return texts().map(lambda t: t[:16])


@functools.cache
def values(long: bool = True) -> st.SearchStrategy[str]:
    return st.one_of(texts(), long_texts()) if long else texts()


def string_maps(
    keys: st.SearchStrategy[str], values: st.SearchStrategy[str], max_size: int = 4
) -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(keys, values, max_size=max_size)


def _pick(draw: st.DrawFn, pool: list[str] | tuple[str, ...]) -> str:
    """One of ``pool`` (most of the time) or any name."""
    index = draw(st.integers(0, 2 * len(pool)))
    return pool[index] if index < len(pool) else draw(names())


# ---------------------------------------------------------------------------------------------- what the server knows


@dataclass(eq=False)  # hashed by identity, so the strategies built from it are cached per Pools
class Pools:
    """Names the scheduler knows, so that fuzzed requests reach past the "not found" checks. Fill it before use."""

    namespaces: list[str] = field(default_factory=list)  # the first is the playground
    graph_names: list[str] = field(default_factory=list)
    real_graphs: list[str] = field(default_factory=list)  # graphs that exist in the playground
    node_names: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    state_ids: list[str] = field(default_factory=list)
    failed_state_ids: list[str] = field(default_factory=list)  # retryable
    fields: list[str] = field(default_factory=lambda: ["text", "left", "right", "out", "extra", "token"])
    store_keys: list[str] = field(default_factory=lambda: ["k", "name", "greeting"])

    def ids(self) -> st.SearchStrategy[str]:
        return _ids(self)

    def namespace(self) -> st.SearchStrategy[str]:
        return names(tuple(self.namespaces))

    def graph_name(self) -> st.SearchStrategy[str]:
        return names(tuple(self.graph_names))

    def node_name(self, *, long: bool = True) -> st.SearchStrategy[str]:
        return names(tuple(self.node_names), long=long)

    def field_name(self, *, long: bool = False) -> st.SearchStrategy[str]:
        return names(tuple(self.fields), long=long)

    def store_key(self, *, long: bool = False) -> st.SearchStrategy[str]:
        return names(tuple(self.store_keys), long=long)


@functools.cache
def _ids(pools: Pools) -> st.SearchStrategy[str]:
    """Run and state ids: known ones, mangled known ones and random ones."""
    known = [*pools.run_ids, *pools.state_ids]
    options: list[st.SearchStrategy[str]] = [texts(40), st.uuids().map(lambda u: u.hex)]
    if known:
        pick = st.sampled_from(known)
        suffixes = ["-0", "-1", "-999999", "-", "--1", "-x", " ", "-99999999999999999999", "\x00"]
        options += [
            pick,
            pick,
            st.builds(lambda i, s: i + s, pick, st.sampled_from(suffixes)),
            st.builds(lambda i, s: s + i, pick, st.sampled_from([" ", "-", "x"])),
            pick.map(lambda i: i.rpartition("-")[0] if "-" in i else i + "-"),
            pick.map(str.upper),
        ]
    if pools.failed_state_ids:
        options += [st.sampled_from(pools.failed_state_ids)] * 2
    return st.one_of(*options)


# ---------------------------------------------------------------------------------------------- templates

MALFORMED_REFS = [
    "${{", "${{ }}", "${{}}", "{{ x }}", "{{ a.outputs.text }}", "${{ a.outputs }}", "${{ .outputs.x }}",
    "${{ a.outputs.1x }}", "${{ a.outputs.text.more }}", "${{ store. }}", "${{ store.a.b }}", "${{ store.{ }}",
    "${{ ${{ a.outputs.text }} }}", "$${{ store.k }}", "}}${{", "${{ a . outputs . text }}", "${{ store.k }",
    "${{ a.outputs.text}}}}", "${{ \x00 }}", "${{ 名.outputs.x }}", "${{ store.名 }}", "${{ store }}",
    "${{ store.outputs.text }}", "${{ a.inputs.text }}", "${{" * 50, "}}" * 50, "${{ " + "a" * 5000 + " }}",
]  # fmt: skip


@st.composite
def template_value(draw: st.DrawFn, ids: list[str] | tuple[str, ...], pools: Pools) -> str:
    """An input value: literals, references (to ids of the graph, or to anything) and malformed ones, concatenated."""
    if draw(st.integers(0, 15)) == 0:
        return draw(long_texts(70_000))
    pieces = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["text", "output", "output", "store", "malformed"]))
        space = draw(st.sampled_from(["", " ", "  "]))
        if kind == "text":
            pieces.append(draw(texts(12)))
        elif kind == "output":
            ident = _pick(draw, ids or ("a",))
            pieces.append(f"${{{{{space}{ident}.outputs.{draw(pools.field_name())}{space}}}}}")
        elif kind == "store":
            pieces.append(f"${{{{{space}store.{draw(pools.store_key())}{space}}}}}")
        else:
            pieces.append(draw(st.sampled_from(MALFORMED_REFS)))
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------- graph parts


@functools.cache
def retry_policies() -> st.SearchStrategy[scheduler_pb2.RetryPolicy]:
    odd_floats = [0.0, -0.0, 0.5, 1.0, 2.0, 1e308, -1e308, 5e-324, float("inf"), float("-inf"), float("nan")]
    return st.builds(
        scheduler_pb2.RetryPolicy,
        max_retries=st.one_of(st.integers(0, 3), u32s()),
        strategy=open_enum(tuple(scheduler_pb2.RetryStrategy.values())),
        backoff_factor_ms=st.one_of(st.just(0), st.integers(0, 20), u64s()),
        exponent=st.one_of(st.sampled_from(odd_floats), st.floats()),
        max_delay_ms=st.one_of(st.just(0), st.integers(0, 20), u64s()),
    )


@functools.cache
def store_configs(pools: Pools) -> st.SearchStrategy[scheduler_pb2.StoreConfig]:
    return st.builds(
        scheduler_pb2.StoreConfig,
        required_keys=st.lists(pools.store_key(long=True), max_size=4),
        default_values=string_maps(pools.store_key(long=True), texts()),
    )


CRON_EXPRESSIONS = [
    "* * * * *", "*/5 * * * *", "0 0 * * 0", "0 0 1 1 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 29 2 1",
    "0 0 L 2 *", "0 0 L * *", "0 0 * * 5#3", "0 0 ? * *", "R * * * *", "*/99999999999999999999 * * * *",
    "99999999999999999999 * * * *", "1-5/0 * * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *",
    "* * * * 8", "@hourly", "@reboot", "@yearly", "* * * * * *", "* * * *", "0 0 0 0 0 0 0", "", " ", "\x00",
    "a b c d e", "* * * * MON-FRI", "0 12 * JAN-DEC *", "0-59/1 0-23 1-31 1-12 0-7", "H * * * *", "L * * * *",
    "59-0 * * * *", "*/0 * * * *", "-1 * * * *", "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0 * * * *",
    "* * 31 2 *", "0 0 29 2 *", "1-59/59 * * * 1-5", "* * * * 0-0", "* * 1-31/31 * *",
]  # fmt: skip

TIMEZONES = [
    "", "UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Etc/GMT+14", "Etc/GMT-14", "EST5EDT", "GMT0",
    "posix/UTC", "right/UTC", "localtime", "Factory", "Mars/Olympus", "UTC+1", "utc", "../../../etc/passwd",
    "/etc/localtime", "Europe/../UTC", "\x00", ".", "..", "Europe", "Europe/", "Europe//Paris", " UTC", "UTC ",
    "__init__", "__init__.py", "tzdata", "zones", "iso3166.tab", "zone.tab", "leapseconds", "tzdata.zi", "a\\b",
    "a" * 255, "a" * 300, "Europe/" + "a" * 300, "é" * 200, "a/" * 200,
]  # fmt: skip


@functools.cache
def cron_triggers(pools: Pools) -> st.SearchStrategy[scheduler_pb2.CronTrigger]:
    return st.builds(
        scheduler_pb2.CronTrigger,
        expression=st.one_of(st.sampled_from(CRON_EXPRESSIONS), texts(20), long_texts(70_000)),
        timezone=st.one_of(st.sampled_from(TIMEZONES), texts(20)),
        inputs=string_maps(pools.field_name(), texts()),
        store=string_maps(pools.store_key(), texts()),
    )


def _node(
    draw: st.DrawFn,
    pools: Pools,
    ids: list[str] | tuple[str, ...],
    identifier: str,
    next_nodes: list[str],
    *,
    namespace: str = "",
) -> scheduler_pb2.GraphNode:
    """A node whose structure is given; its name, namespace, inputs and options are drawn."""
    node = scheduler_pb2.GraphNode(
        node_name=draw(pools.node_name()),
        namespace=draw(st.sampled_from(["", namespace, "other"])) if draw(st.integers(0, 5)) else draw(names()),
        identifier=identifier,
        next_nodes=next_nodes,
        timeout_ms=draw(small_or_huge_ms()),
    )
    for _ in range(draw(st.integers(0, 3))):
        node.inputs[draw(pools.field_name())] = draw(template_value(ids, pools))
    if draw(st.integers(0, 3)) == 0:
        node.unites.identifier = _pick(draw, ids)
        node.unites.strategy = scheduler_pb2.UnitesStrategy.ValueType(
            draw(open_enum(tuple(scheduler_pb2.UnitesStrategy.values())))
        )
    if draw(st.integers(0, 3)) == 0:
        node.retry_policy.CopyFrom(draw(retry_policies()))
    return node


@st.composite
def random_graph_nodes(draw: st.DrawFn, pools: Pools, namespace: str) -> list[scheduler_pb2.GraphNode]:
    """A small graph with random edges: duplicates, dangling targets, self-loops, several roots, cycles."""
    ids = draw(st.lists(names(), min_size=1, max_size=6))
    nodes = []
    for index in range(draw(st.integers(0, 7))):
        identifier = ids[index] if index < len(ids) and draw(st.integers(0, 5)) else _pick(draw, ids)
        targets = [_pick(draw, ids) for _ in range(draw(st.integers(0, 3)))]
        nodes.append(_node(draw, pools, ids, identifier, targets, namespace=namespace))
    return nodes


@st.composite
def shaped_graph_nodes(draw: st.DrawFn, pools: Pools, namespace: str) -> list[scheduler_pb2.GraphNode]:
    """A deep chain (up to a few hundred nodes), a wide fan-out (up to thousands), a tree or a lattice; valid or
    broken by one mutation (a cycle, a self-loop, a dangling edge, a duplicate edge, two roots)."""
    shape = draw(st.sampled_from(["chain", "fanout", "tree", "lattice"]))
    size = draw(st.one_of(st.integers(1, 12), st.sampled_from([64, 150, 300, 400])))
    if shape == "fanout":
        size = draw(st.one_of(st.integers(1, 50), st.sampled_from([500, 2000, 5000])))
    ids = [f"n{i}" for i in range(size)]
    edges: dict[int, list[int]] = {i: [] for i in range(size)}
    for i in range(1, size):
        if shape == "chain":
            edges[i - 1].append(i)
        elif shape == "fanout":
            edges[0].append(i)
        elif shape == "tree":
            edges[(i - 1) // 2].append(i)
        else:  # every node points to the next two
            edges[i - 1].append(i)
            if i >= 2:
                edges[i - 2].append(i)
    mutation = draw(st.sampled_from(["none", "none", "none", "cycle", "self", "dangling", "duplicate", "two_roots"]))
    if size > 1 and mutation == "cycle":
        edges[size - 1].append(draw(st.integers(0, size - 2)))
    elif mutation == "self":
        victim = draw(st.integers(0, size - 1))
        edges[victim].append(victim)
    elif mutation == "dangling":
        edges[draw(st.integers(0, size - 1))].append(-1)
    elif mutation == "duplicate" and edges[0]:
        edges[0].append(edges[0][0])
    elif mutation == "two_roots" and size > 2:
        edges = {k: [t for t in v if t != 1] for k, v in edges.items()}
    node_name = draw(st.sampled_from(["A", "A", "Free", "Unknown"]))
    decorate = draw(st.sets(st.integers(0, max(0, size - 1)), max_size=3))
    nodes = []
    for i in range(size):
        targets = [ids[t] if t >= 0 else "ghost" for t in edges[i]]
        if i in decorate:
            nodes.append(_node(draw, pools, ids, ids[i], targets, namespace=namespace))
            continue
        inputs = {"text": f"${{{{ {ids[i - 1]}.outputs.text }}}}" if i and shape == "chain" else f"t{i}"}
        nodes.append(
            scheduler_pb2.GraphNode(
                node_name=node_name, identifier=ids[i], next_nodes=targets, inputs=inputs if node_name == "A" else {}
            )
        )
    return nodes


@st.composite
def graphs(draw: st.DrawFn, pools: Pools) -> scheduler_pb2.Graph:
    namespace = draw(pools.namespace())
    shape = random_graph_nodes(pools, namespace) if draw(st.booleans()) else shaped_graph_nodes(pools, namespace)
    graph = scheduler_pb2.Graph(
        namespace=namespace,
        name=draw(pools.graph_name()),
        nodes=draw(shape),
        triggers=draw(st.lists(cron_triggers(pools), max_size=2)),
        # Ignored by the server on upsert; sent anyway.
        secret_names=draw(st.lists(texts(8), max_size=2)),
        version=draw(u64s()),
        updated_at_unix_ms=draw(u64s()),
    )
    if draw(st.booleans()):
        graph.retry_policy.CopyFrom(draw(retry_policies()))
    if draw(st.booleans()):
        graph.store_config.CopyFrom(draw(store_configs(pools)))
    return graph


# ---------------------------------------------------------------------------------------------- SchedulerService


@functools.cache
def trigger_requests(pools: Pools, *, long: bool = True) -> st.SearchStrategy[scheduler_pb2.TriggerGraphRequest]:
    """Triggers of graphs that exist (with plausible or odd inputs and store), or of anything."""
    existing = st.builds(
        scheduler_pb2.TriggerGraphRequest,
        namespace=st.just(pools.namespaces[0]),
        graph_name=st.sampled_from(pools.real_graphs),
        inputs=st.one_of(st.just({}), string_maps(pools.field_name(), values(long), max_size=2)),
        store=st.one_of(st.just({"k": "v"}), string_maps(pools.store_key(), values(long), max_size=2)),
        start_delay_ms=delays(),
    )
    anything = st.builds(
        scheduler_pb2.TriggerGraphRequest,
        namespace=names(tuple(pools.namespaces), long=long),
        graph_name=names(tuple(pools.graph_names), long=long),
        inputs=string_maps(pools.field_name(), values(long)),
        store=string_maps(pools.store_key(), values(long)),
        start_delay_ms=delays(),
    )
    return st.one_of(existing, anything)


@functools.cache
def page_tokens() -> st.SearchStrategy[str]:
    odd = ["0", "-1", "1_000", " 5 ", "٣", "0x10", "1e3", "nan", "inf", "9" * 400, "-" + "9" * 30,
           "99999999999999999999", str(2**63), str(2**63 - 1), str(-(2**63) - 1)]  # fmt: skip
    return st.one_of(st.just(""), st.integers(-(2**70), 2**70).map(str), st.sampled_from(odd), texts())


@functools.cache
def scheduler_requests(pools: Pools) -> dict[str, st.SearchStrategy[object]]:
    """A strategy of request messages for each unary SchedulerService RPC (and WatchRun: it takes one request)."""
    ns = pools.namespace()
    graph_name = pools.graph_name()
    watch_kwargs: dict[str, st.SearchStrategy[object]] = {"run_id": pools.ids()}
    if "run_only" in scheduler_pb2.WatchRunRequest.DESCRIPTOR.fields_by_name:
        watch_kwargs["run_only"] = st.booleans()
    return {
        "UpsertGraph": st.builds(
            scheduler_pb2.UpsertGraphRequest,
            graph=graphs(pools),
            secrets=string_maps(st.one_of(st.sampled_from(["token", "k"]), texts(8)), values()),
        ),
        "GetGraph": st.builds(scheduler_pb2.GetGraphRequest, namespace=ns, name=graph_name),
        "ListGraphs": st.builds(scheduler_pb2.ListGraphsRequest, namespace=ns),
        "DeleteGraph": st.builds(scheduler_pb2.DeleteGraphRequest, namespace=ns, name=graph_name, force=st.booleans()),
        "TriggerGraph": trigger_requests(pools),
        "TriggerGraphs": st.builds(
            scheduler_pb2.TriggerGraphsRequest,
            triggers=st.one_of(
                st.lists(trigger_requests(pools), max_size=5),
                # Many copies of one (small) trigger: a big batch from a single draw.
                st.builds(lambda t, n: [t] * n, trigger_requests(pools, long=False), st.sampled_from([20, 200, 1000])),
            ),
        ),
        "GetRun": st.builds(
            scheduler_pb2.GetRunRequest, run_id=pools.ids(), page_size=u32s(), page_token=page_tokens()
        ),
        "ListRuns": st.builds(
            scheduler_pb2.ListRunsRequest,
            namespace=ns,
            graph_name=st.one_of(st.just(""), graph_name),
            page_size=u32s(),
            page_token=page_tokens(),
            status=open_enum(tuple(common_pb2.RunStatus.values())),
        ),
        "WatchRun": st.builds(scheduler_pb2.WatchRunRequest, **watch_kwargs),
        "CancelRun": st.builds(scheduler_pb2.CancelRunRequest, run_id=pools.ids()),
        "RetryState": st.builds(
            scheduler_pb2.RetryStateRequest,
            state_id=pools.ids(),
            request_id=st.one_of(st.just(""), texts(), st.uuids().map(str)),
        ),
        "ListNodes": st.builds(scheduler_pb2.ListNodesRequest, namespace=ns),
        "ListNamespaces": st.just(scheduler_pb2.ListNamespacesRequest()),
        "ListRuntimes": st.builds(scheduler_pb2.ListRuntimesRequest, namespace=st.one_of(st.just(""), ns)),
    }


# ---------------------------------------------------------------------------------------------- RuntimeService

_FIELD_TYPES = list(FieldDescriptorProto.Type.values())
_FIELD_LABELS = list(FieldDescriptorProto.Label.values())


@st.composite
def descriptors(draw: st.DrawFn, pools: Pools, *, long: bool = True) -> DescriptorProto:
    """A node's Inputs/Outputs/Secrets descriptor: usually well-formed, often not (types, labels, names, dups)."""
    descriptor = DescriptorProto(name=draw(st.sampled_from(["Inputs", "Outputs", "Secrets", "", "Other"])))
    for number in range(1, draw(st.integers(0, 4)) + 1):
        fd = descriptor.field.add(
            name=draw(pools.field_name(long=long)),
            number=number if draw(st.integers(0, 3)) else draw(st.integers(I32_MIN, I32_MAX)),
        )
        if draw(st.integers(0, 3)):
            fd.type = FieldDescriptorProto.TYPE_STRING
        elif draw(st.booleans()):
            fd.type = draw(st.sampled_from(_FIELD_TYPES))
        if draw(st.booleans()):
            fd.label = draw(st.sampled_from(_FIELD_LABELS))
        if draw(st.booleans()):
            fd.default_value = draw(texts())
        if draw(st.integers(0, 9)) == 0:
            fd.type_name = draw(texts())
    return descriptor


@functools.cache
def node_schemas(pools: Pools, *, long: bool = True) -> st.SearchStrategy[common_pb2.NodeSchema]:
    return st.builds(
        common_pb2.NodeSchema,
        name=pools.node_name(long=long),
        inputs=descriptors(pools, long=long),
        outputs=descriptors(pools, long=long),
        secrets=descriptors(pools, long=long),
        timeout_ms=small_or_huge_ms(),
    )


@functools.cache
def register_messages(pools: Pools) -> st.SearchStrategy[runtime_pb2.Register]:
    return st.builds(
        runtime_pb2.Register,
        namespace=pools.namespace(),
        runtime_name=names(),
        runtime_id=names(),
        sdk_version=names(),
        nodes=st.one_of(
            st.lists(node_schemas(pools), max_size=4),
            st.builds(lambda s, n: [s] * n, node_schemas(pools, long=False), st.sampled_from([2, 100, 2000])),
        ),
        max_concurrency=st.one_of(st.sampled_from([0, 1, 2, 64, U32]), u32s()),
    )


@functools.cache
def pruned_json() -> st.SearchStrategy[str]:
    odd = ["", "{}", '{"a": 1}', "[]", "null", "NaN", "1e99999", '"x"', "{", "}", '{"a":', "\x00",
           "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000, "[" * 5000]  # fmt: skip
    return st.one_of(st.sampled_from(odd), texts())


@st.composite
def outputs_lists(draw: st.DrawFn, fields: tuple[str, ...]) -> list[common_pb2.Outputs]:
    """Outputs of one execution: a few with any fields and values, or a huge fan-out of one small set."""
    copies = draw(st.sampled_from([0, 0, 0, 100, 1000, 5000]))
    count = 1 if copies else draw(st.integers(0, 3))
    made = []
    for _ in range(count):
        outputs = common_pb2.Outputs()
        for _ in range(draw(st.integers(0, 3))):
            # Copied thousands of times: keys short too, or one long pool key makes a message of gigabytes (seen:
            # a 280 KB field name copied 5,000 times took the test process past 20 GB).
            key = _pick(draw, fields)
            outputs.fields[key[:16] if copies else key] = draw(short_texts() if copies else values())
        made.append(outputs)
    return made * copies if copies else made


@st.composite
def results(draw: st.DrawFn, pools: Pools) -> runtime_pb2.Result:
    """One Result with random ids and any outcome, or no outcome at all."""
    result = runtime_pb2.Result(state_id=draw(pools.ids()), dispatch_id=draw(u64s()), attempt=draw(u32s()))
    for _ in range(draw(st.integers(0, 2))):
        result.store_writes[draw(pools.store_key(long=True))] = draw(values())
    outcome = draw(st.sampled_from(["executed", "executed", "errored", "pruned", "requeue_after", "none"]))
    if outcome == "executed":
        result.executed.outputs.extend(draw(outputs_lists(("text", "out", "extra", *pools.fields))))
        result.executed.SetInParent()
    elif outcome == "errored":
        result.errored.message = draw(values())
        result.errored.type = draw(texts())
        result.errored.traceback = draw(values())
        result.errored.SetInParent()
    elif outcome == "pruned":
        result.pruned.data_json = draw(pruned_json())
        result.pruned.SetInParent()
    elif outcome == "requeue_after":
        result.requeue_after.delay_ms = draw(small_or_huge_ms())
        result.requeue_after.SetInParent()
    return result


@functools.cache
def runtime_messages(pools: Pools) -> st.SearchStrategy[runtime_pb2.RuntimeMessage]:
    """Any RuntimeMessage, including an empty one (no oneof member set)."""
    return st.one_of(
        st.builds(runtime_pb2.RuntimeMessage, register=register_messages(pools)),
        st.builds(
            runtime_pb2.RuntimeMessage,
            results=st.builds(runtime_pb2.ResultBatch, results=st.lists(results(pools), max_size=4)),
        ),
        st.builds(runtime_pb2.RuntimeMessage, heartbeat=st.builds(runtime_pb2.Heartbeat, in_flight=u32s())),
        st.just(runtime_pb2.RuntimeMessage(draining=runtime_pb2.Draining())),
        st.just(runtime_pb2.RuntimeMessage()),
    )


@st.composite
def runtime_message_streams(
    draw: st.DrawFn, pools: Pools, valid_register: runtime_pb2.Register
) -> list[runtime_pb2.RuntimeMessage]:
    """What one fuzzed runtime sends: a first message (often a valid or random Register), then anything."""
    choice = draw(st.integers(0, 4))
    if choice <= 1:
        first = runtime_pb2.RuntimeMessage(register=valid_register)
    elif choice == 2:
        first = runtime_pb2.RuntimeMessage(register=valid_register)
        first.register.max_concurrency = draw(st.sampled_from([0, 1, U32]))
    else:
        first = draw(runtime_messages(pools))
    rest = draw(st.lists(runtime_messages(pools), max_size=4))
    if draw(st.integers(0, 4)) == 0:
        rest.append(runtime_pb2.RuntimeMessage(register=valid_register))  # a second Register
    return [first, *rest]


# ---------------------------------------------------------------------------------------------- answering real work


@dataclass(frozen=True)
class AnswerPlan:
    """How a fuzzed runtime answers one state it is given. Drawn before the states arrive (what arrives depends on
    the scheduler, and hypothesis needs draws that do not), then applied to each state with :meth:`apply`."""

    kind: str  # "none": no answer; "good": the declared outputs; "other": ``result``
    result: runtime_pb2.Result
    keep: tuple[bool, bool, bool]  # for "other": keep the state's state_id, dispatch_id, attempt
    good_values: tuple[str, ...]
    good_count: int

    def apply(self, item: runtime_pb2.Execute) -> runtime_pb2.Result | None:
        """The answer to ``item``."""
        if self.kind == "none":
            return None
        result = runtime_pb2.Result()
        if self.kind == "other":
            result.CopyFrom(self.result)
            keep_state, keep_dispatch, keep_attempt = self.keep
            if keep_state:
                result.state_id = item.state_id
            if keep_dispatch:
                result.dispatch_id = item.dispatch_id
            if keep_attempt:
                result.attempt = item.attempt
            return result
        result.state_id, result.dispatch_id, result.attempt = item.state_id, item.dispatch_id, item.attempt
        declared = list(PLAYGROUND_SCHEMAS.get(item.node_name, ({}, {"text": None}, {}))[1])
        outputs = common_pb2.Outputs(
            fields={n: self.good_values[i % len(self.good_values)] for i, n in enumerate(declared)}
        )
        result.executed.outputs.extend([outputs] * self.good_count)
        result.executed.SetInParent()
        return result


@functools.cache
def answer_plans(pools: Pools) -> st.SearchStrategy[AnswerPlan]:
    """Correct outputs (often a big fan-out), any other outcome with the state's ids or wrong ones, or silence."""
    good = st.one_of(
        st.builds(  # a fan-out, maybe a huge one, of small values
            AnswerPlan,
            kind=st.just("good"),
            result=st.just(runtime_pb2.Result()),
            keep=st.just((True, True, True)),
            good_values=st.lists(short_texts(), min_size=1, max_size=3).map(tuple),
            good_count=st.sampled_from([1, 1, 1, 2, 3, 20, 300, 2000]),
        ),
        st.builds(  # one to three sets of big values
            AnswerPlan,
            kind=st.just("good"),
            result=st.just(runtime_pb2.Result()),
            keep=st.just((True, True, True)),
            good_values=long_texts(70_000).map(lambda v: (v,)),
            good_count=st.integers(1, 3),
        ),
    )
    other = st.builds(
        AnswerPlan,
        kind=st.just("other"),
        result=results(pools),
        keep=st.tuples(*[st.sampled_from([True, True, True, True, False])] * 3),
        good_values=st.just(("",)),
        good_count=st.just(0),
    )
    none = st.just(AnswerPlan("none", runtime_pb2.Result(), (True, True, True), ("",), 0))
    return st.one_of(good, good, other, other, none)
