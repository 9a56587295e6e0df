"""Building graph templates and reading runs in tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exosphere import GraphNodeModel, RunModel, StateModel


def gnode(
    namespace: str, node_name: str, identifier: str, inputs: Mapping[str, str] | None = None, **extra: Any
) -> GraphNodeModel:
    """One graph node; ``extra`` holds the other ``GraphNodeModel`` fields (``next_nodes``, ``unites``, ...)."""
    return GraphNodeModel(
        node_name=node_name, namespace=namespace, identifier=identifier, inputs=dict(inputs or {}), **extra
    )


def states_of(run: RunModel, identifier: str) -> list[StateModel]:
    """The states of graph node ``identifier`` in ``run``, in the order the run lists them."""
    return [s for s in run.states if s.identifier == identifier]


def attempts_of(run: RunModel, identifier: str) -> list[StateModel]:
    """The states of graph node ``identifier`` in ``run``, first attempt first."""
    return sorted(states_of(run, identifier), key=lambda s: s.attempt)
