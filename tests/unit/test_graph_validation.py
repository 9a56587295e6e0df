"""One test per graph-validation message: each broken template gets the message that names its problem."""

from __future__ import annotations

from typing import Any

import pytest

from server.graph import compile_graph
from server.models import CronSpec, GraphNodeSpec, GraphSpec, NodeSchema, RetryPolicySpec, StoreConfigSpec
from tests.helpers.engine import NS, node, schema

REGISTRY = {
    "Echo": schema("Echo"),
    "Opt": schema("Opt", inputs=()),
    "Secretive": schema("Secretive", secrets=("token",)),
}


def registry(namespace: str, name: str) -> NodeSchema | None:
    return REGISTRY.get(name) if namespace == NS else None


def chain(*nodes: GraphNodeSpec, **extra: Any) -> GraphSpec:
    return GraphSpec(namespace=NS, name=extra.pop("name", "g"), nodes=list(nodes), **extra)


def ok_pair(**second: Any) -> list[GraphNodeSpec]:
    return [node("a", next_nodes=["b"]), node("b", **second)]


CASES: dict[str, tuple[GraphSpec, str]] = {
    "empty name": (chain(node("a"), name=" "), "graph name cannot be empty"),
    "no nodes": (chain(), "graph has no nodes"),
    "empty identifier": (chain(node(" ")), "node #0 ('Echo') has an empty identifier"),
    "reserved identifier": (chain(node("store")), "identifier 'store' is reserved"),
    "duplicate identifier": (chain(node("a"), node("a")), "duplicate identifier 'a'"),
    "empty node name": (chain(node("a", " ")), "a: node_name cannot be empty"),
    "other namespace": (chain(node("a", namespace="elsewhere")), "a: node namespace 'elsewhere' differs"),
    "duplicate next": (chain(node("a", next_nodes=["b", "b"]), node("b")), "a: duplicate entries in next_nodes"),
    "timeout": (chain(node("a", timeout_ms=-1)), "a: timeout_ms must be between 0 and"),
    "retry strategy": (
        chain(node("a", retry_policy=RetryPolicySpec(strategy="SOMETIMES"))),
        "a: unknown retry strategy 'SOMETIMES'",
    ),
    "max retries": (
        chain(node("a"), retry_policy=RetryPolicySpec(max_retries=1001)),
        "graph retry_policy: max_retries must be between 0 and 1000, got 1001",
    ),
    "exponent": (chain(node("a", retry_policy=RetryPolicySpec(exponent=0.5))), "a: exponent must be between 1"),
    "backoff": (chain(node("a", retry_policy=RetryPolicySpec(backoff_factor_ms=-1))), "a: backoff_factor must be"),
    "max delay": (chain(node("a", retry_policy=RetryPolicySpec(max_delay_ms=-5))), "a: max_delay must be between"),
    "missing target": (chain(node("a", next_nodes=["ghost"])), "a: next_nodes target 'ghost' does not exist"),
    "unites strategy": (chain(*ok_pair(unites=("a", "SOME"))), "b: unknown unites strategy 'SOME'"),
    "unites empty": (chain(*ok_pair(unites=" ")), "b: unites identifier cannot be empty"),
    "unites itself": (chain(*ok_pair(unites="b")), "b: unites cannot name the node itself"),
    "unites missing": (chain(*ok_pair(unites="ghost")), "b: unites target 'ghost' does not exist"),
    "two roots": (chain(node("a"), node("b")), "graph must have exactly one root (a node no other node points to)"),
    "cycle": (
        chain(node("r", next_nodes=["a"]), node("a", next_nodes=["b"]), node("b", next_nodes=["a"])),
        "graph has a cycle: a -> b -> a",
    ),
    "unreachable": (
        chain(node("r"), node("a", next_nodes=["b"]), node("b", next_nodes=["a"])),
        "nodes not connected to the root 'r': ['a', 'b']",
    ),
    "store key": (
        chain(node("a"), store_config=StoreConfigSpec(required_keys=["a.b"])),
        "store key 'a.b' must be non-empty and contain no '.'",
    ),
    "cron": (chain(node("a"), triggers=[CronSpec(expression="every day")]), "trigger #0: invalid cron expression"),
    "timezone": (
        chain(node("a"), triggers=[CronSpec(expression="0 * * * *", timezone="Mars/Olympus")]),
        "trigger #0: unknown timezone 'Mars/Olympus'",
    ),
    "unregistered": (chain(node("a", "Ghost")), "a: node 'Ghost' is not registered in namespace 'unit'"),
    "undeclared input": (chain(node("a", inputs={"x": "1", "q": "2"})), "a: input 'q' is not declared by node 'Echo'"),
    "missing input": (chain(*ok_pair(inputs={})), "b: required input 'x' of node 'Echo' is missing"),
    "missing secret": (chain(node("a", "Secretive")), "a: secrets ['token'] declared by node 'Secretive' are not"),
    "template syntax": (chain(node("a", inputs={"x": "${{ oops"})), "a: input 'x': unclosed '${{'"),
    "undeclared store key": (chain(node("a", inputs={"x": "${{ store.k }}"})), "a: input 'x' reads store key 'k'"),
    "root reads outputs": (
        chain(node("a", inputs={"x": "${{ a.outputs.y }}"})),
        "a: input 'x': the root node may reference only the store",
    ),
    "unknown reference": (chain(*ok_pair(inputs={"x": "${{ z.outputs.y }}"})), "b: input 'x' references unknown node"),
    "not an ancestor": (
        chain(node("a", next_nodes=["b", "c"]), node("b"), node("c", inputs={"x": "${{ b.outputs.y }}"})),
        "c: input 'x' references 'b', which is not an ancestor",
    ),
    "undeclared output": (
        chain(*ok_pair(inputs={"x": "${{ a.outputs.nope }}"})),
        "b: input 'x' references output 'nope', which node 'Echo' (a) does not declare",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_problem_is_named(case: str) -> None:
    spec, message = CASES[case]
    compiled, errors = compile_graph(spec, registry, {})
    assert compiled is None
    assert any(message in e for e in errors), errors


def test_every_problem_is_reported_at_once() -> None:
    spec = chain(node("a", "Ghost", next_nodes=["ghost"]), node("store"), node("b"))
    _, errors = compile_graph(spec, registry, {})
    assert len(errors) >= 4, errors


def test_a_valid_template_compiles_with_its_edges() -> None:
    spec = chain(
        node("a", next_nodes=["b"]),
        node("b", inputs={"x": "${{ a.outputs.y }}"}, next_nodes=["m"]),
        node("m", inputs={"x": "${{ b.outputs.y }}"}, unites="a"),
    )
    compiled, errors = compile_graph(spec, registry, {})
    assert errors == [] and compiled is not None
    assert [n.identifier for n in compiled.root.next] == ["b"]
    assert compiled.nodes["b"].next == []  # a merge is created by its united node, not as a next node
    assert [m.identifier for m in compiled.root.merges] == ["m"]
    assert compiled.root.collect == frozenset({"b"})
    assert compiled.nodes["m"].aggregated == frozenset({"b"})
