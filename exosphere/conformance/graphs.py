"""The graph templates the kit runs on the conformance nodes (``spec.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exosphere.client import StateManager
from exosphere.models import GraphNodeModel

__all__ = ["ECHO", "FAIL", "FAN_ECHO", "FAN_SLEEP", "GRAPHS", "SLEEP", "STORE", "STORE_KEY", "GraphSpec", "save_graphs"]

STORE_KEY = "written"

ECHO = "conformance-echo"
FAN_ECHO = "conformance-fan-echo"
STORE = "conformance-store"
FAIL = "conformance-fail"
SLEEP = "conformance-sleep"
FAN_SLEEP = "conformance-fan-sleep"


@dataclass(frozen=True)
class GraphSpec:
    name: str
    # (identifier, node name, inputs), the first is the root; each node leads to the next.
    nodes: tuple[tuple[str, str, dict[str, str]], ...]
    options: dict[str, Any] = field(default_factory=dict)


GRAPHS: tuple[GraphSpec, ...] = (
    GraphSpec(ECHO, (("echo", "Echo", {"text": "from the template"}),)),
    GraphSpec(
        FAN_ECHO,
        (("fan", "FanOut", {"count": "3"}), ("echo", "Echo", {"text": "${{ fan.outputs.item }}"})),
    ),
    GraphSpec(
        STORE,
        (
            ("write", "StoreWrite", {"key": STORE_KEY, "value": "from the template"}),
            ("echo", "Echo", {"text": "${{ store." + STORE_KEY + " }}"}),
        ),
        {"store_config": {"default_values": {STORE_KEY: "not written"}}},
    ),
    GraphSpec(FAIL, (("fail", "Fail", {"message": "from the template"}),), {"retry_policy": {"max_retries": 0}}),
    GraphSpec(SLEEP, (("sleep", "Sleep", {"ms": "100"}),)),
    GraphSpec(
        FAN_SLEEP,
        (("fan", "FanOut", {"count": "3"}), ("sleep", "Sleep", {"ms": "${{ store.ms }}"})),
        {"store_config": {"required_keys": ["ms"]}, "retry_policy": {"max_retries": 0}},
    ),
)


async def save_graphs(sm: StateManager, namespace: str) -> None:
    """Create (or replace) every conformance graph in ``namespace``."""
    for graph in GRAPHS:
        nodes = []
        for i, (identifier, node_name, inputs) in enumerate(graph.nodes):
            after = graph.nodes[i + 1][0] if i + 1 < len(graph.nodes) else None
            nodes.append(
                GraphNodeModel(
                    node_name=node_name,
                    namespace=namespace,
                    identifier=identifier,
                    inputs=inputs,
                    next_nodes=[after] if after else [],
                )
            )
        await sm.upsert_graph(graph.name, nodes, **graph.options)
