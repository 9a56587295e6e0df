"""The scheduler's own types: graph specs as stored, node schemas, and state/run rows.

The engine never sees protobuf messages; ``server/wire.py`` converts at the gRPC boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .status import RunStatus, StateStatus

__all__ = [
    "CronSpec",
    "FieldSpec",
    "GraphNodeSpec",
    "GraphSpec",
    "NodeSchema",
    "RetryPolicySpec",
    "RunRow",
    "StateRow",
    "StoreConfigSpec",
]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RetryPolicySpec(_Spec):
    max_retries: int = 3
    strategy: str = "EXPONENTIAL"
    backoff_factor_ms: int = 2000
    exponent: float = 2.0
    max_delay_ms: int | None = None


class StoreConfigSpec(_Spec):
    required_keys: list[str] = Field(default_factory=list)
    default_values: dict[str, str] = Field(default_factory=dict)


class CronSpec(_Spec):
    expression: str
    timezone: str = "UTC"
    inputs: dict[str, str] = Field(default_factory=dict)
    store: dict[str, str] = Field(default_factory=dict)


class UnitesSpec(_Spec):
    identifier: str
    strategy: str = "ALL_SUCCESS"


class GraphNodeSpec(_Spec):
    node_name: str
    namespace: str
    identifier: str
    inputs: dict[str, str] = Field(default_factory=dict)
    next_nodes: list[str] = Field(default_factory=list)
    unites: UnitesSpec | None = None
    retry_policy: RetryPolicySpec | None = None
    timeout_ms: int = 0


class GraphSpec(_Spec):
    """A graph template as stored. ``secrets`` holds the encrypted secret values (see server/secrets.py)."""

    namespace: str
    name: str
    nodes: list[GraphNodeSpec]
    retry_policy: RetryPolicySpec | None = None
    store_config: StoreConfigSpec | None = None
    triggers: list[CronSpec] = Field(default_factory=list)
    secrets: dict[str, str] = Field(default_factory=dict)
    version: int = 0
    updated_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    required: bool
    # LABEL_OPTIONAL with a default_value: the scheduler fills it in when the input is absent.
    default: str | None = None


@dataclass(frozen=True, slots=True)
class NodeSchema:
    """A registered node: its fields, from the DescriptorProtos its runtime sent."""

    namespace: str
    name: str
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    secrets: tuple[FieldSpec, ...]
    timeout_ms: int = 0
    raw: bytes = b""  # the serialized NodeSchema message, kept to answer ListNodes
    # (name, default) of the optional inputs that declare a default: the scheduler fills them in at dispatch.
    defaults: tuple[tuple[str, str], ...] = ()

    def input_names(self) -> set[str]:
        return {f.name for f in self.inputs}

    def output_names(self) -> set[str]:
        return {f.name for f in self.outputs}

    def fingerprint(self) -> tuple[Any, ...]:
        return (self.inputs, self.outputs, self.secrets)


@dataclass(slots=True)
class StateRow:
    """One state as stored."""

    state_id: str
    run_id: str
    identifier: str
    node_name: str
    status: StateStatus
    inputs: dict[str, str]
    attempt: int
    parent_id: str | None
    parent_output: int
    path: tuple[int, ...]
    # A list of dicts, or for a finished state with no next nodes, their JSON text (server/packed.py).
    outputs: Sequence[dict[str, str]] | None = None
    error: dict[str, str] | None = None
    pruned_data: str | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0
    run_at_ms: int = 0
    seq: int = 0
    # The runtime that last answered for it, when it was handed to that runtime, and how long the answer took.
    runtime_name: str = ""
    started_at_ms: int = 0
    ran_ms: int = 0


@dataclass(slots=True)
class RunRow:
    """One run as stored."""

    run_id: str
    namespace: str
    graph_name: str
    graph_version: int
    status: RunStatus
    store: dict[str, str] = field(default_factory=dict)
    created_at_ms: int = 0
    updated_at_ms: int = 0
    state_counts: dict[str, int] = field(default_factory=dict)
    # Nodes the run has states ready for that no connected runtime hosts (not stored: computed when read).
    waiting_for_runtime: list[str] = field(default_factory=list)
