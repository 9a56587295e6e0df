"""Graph templates, runs and states as the SDK shows them (names kept from exospherehost)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CronTrigger",
    "GraphModel",
    "GraphNodeModel",
    "RetryPolicyModel",
    "RetryStrategyEnum",
    "RunModel",
    "RunStatus",
    "RuntimeModel",
    "StateModel",
    "StateStatus",
    "StoreConfigModel",
    "TriggerResponse",
    "UnitesModel",
    "UnitesStrategyEnum",
]


class UnitesStrategyEnum(StrEnum):
    """When a merge node runs."""

    ALL_SUCCESS = "ALL_SUCCESS"
    ALL_DONE = "ALL_DONE"


class RetryStrategyEnum(StrEnum):
    """How retry delays grow."""

    EXPONENTIAL = "EXPONENTIAL"
    EXPONENTIAL_FULL_JITTER = "EXPONENTIAL_FULL_JITTER"
    EXPONENTIAL_EQUAL_JITTER = "EXPONENTIAL_EQUAL_JITTER"
    LINEAR = "LINEAR"
    LINEAR_FULL_JITTER = "LINEAR_FULL_JITTER"
    LINEAR_EQUAL_JITTER = "LINEAR_EQUAL_JITTER"
    FIXED = "FIXED"
    FIXED_FULL_JITTER = "FIXED_FULL_JITTER"
    FIXED_EQUAL_JITTER = "FIXED_EQUAL_JITTER"


class StateStatus(StrEnum):
    """Lifecycle of one state."""

    CREATED = "CREATED"
    QUEUED = "QUEUED"
    EXECUTED = "EXECUTED"
    SUCCESS = "SUCCESS"
    ERRORED = "ERRORED"
    RETRY_CREATED = "RETRY_CREATED"
    PRUNED = "PRUNED"
    NEXT_CREATED_ERROR = "NEXT_CREATED_ERROR"
    TIMEDOUT = "TIMEDOUT"
    CANCELLED = "CANCELLED"


class RunStatus(StrEnum):
    """Status of a run as a whole."""

    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


def _strip(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} cannot be empty")
    return value


class UnitesModel(BaseModel):
    """Fan-in: the merge node runs once per state of ``identifier``, after that state's descendants."""

    model_config = ConfigDict(extra="forbid")
    identifier: str
    strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str) -> str:
        return _strip(v, "unites identifier")


class RetryPolicyModel(BaseModel):
    """Retries of failed states; delays in milliseconds."""

    model_config = ConfigDict(extra="forbid")
    max_retries: int = Field(default=3, ge=0)
    strategy: RetryStrategyEnum = RetryStrategyEnum.EXPONENTIAL
    backoff_factor: int = Field(default=2000, ge=0)
    exponent: float = Field(default=2, ge=1)
    max_delay: int | None = Field(default=None, ge=0)


class StoreConfigModel(BaseModel):
    """Keys of a run's store: those a trigger must give, and defaults for the others."""

    model_config = ConfigDict(extra="forbid")
    required_keys: list[str] = Field(default_factory=list)
    default_values: dict[str, str] = Field(default_factory=dict)

    @field_validator("required_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        cleaned = [_strip(k, "store key") for k in keys]
        errors = [f"store key '{k}' cannot contain '.'" for k in cleaned if "." in k]
        duplicates = sorted({k for k in cleaned if cleaned.count(k) > 1})
        if duplicates:
            errors.append(f"duplicate store keys: {duplicates}")
        if errors:
            raise ValueError("; ".join(errors))
        return cleaned

    @field_validator("default_values")
    @classmethod
    def _defaults(cls, values: dict[str, str]) -> dict[str, str]:
        cleaned = {_strip(k, "store key"): v for k, v in values.items()}
        bad = [k for k in cleaned if "." in k]
        if bad:
            raise ValueError(f"store keys cannot contain '.': {bad}")
        return cleaned


class CronTrigger(BaseModel):
    """Start a run on a cron schedule (5 fields), in ``timezone``, with these inputs and store values."""

    model_config = ConfigDict(extra="forbid")
    expression: str
    timezone: str = "UTC"
    inputs: dict[str, str] = Field(default_factory=dict)
    store: dict[str, str] = Field(default_factory=dict)

    @field_validator("expression")
    @classmethod
    def _expression(cls, v: str) -> str:
        return _strip(v, "cron expression")


class GraphNodeModel(BaseModel):
    """One node of a graph template."""

    model_config = ConfigDict(extra="forbid")
    node_name: str
    namespace: str
    identifier: str
    inputs: dict[str, str] = Field(default_factory=dict)
    next_nodes: list[str] | None = None
    unites: UnitesModel | None = None
    retry_policy: RetryPolicyModel | None = None
    timeout_ms: int | None = Field(default=None, gt=0)

    @field_validator("node_name", "namespace")
    @classmethod
    def _names(cls, v: str) -> str:
        return _strip(v, "node_name and namespace")

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str) -> str:
        v = _strip(v, "identifier")
        if v == "store":
            raise ValueError("identifier 'store' is reserved")
        return v

    @field_validator("next_nodes")
    @classmethod
    def _next(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        cleaned = [_strip(n, "next_nodes entry") for n in v]
        duplicates = sorted({n for n in cleaned if cleaned.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate next_nodes entries: {duplicates}")
        return cleaned


class GraphModel(BaseModel):
    """A graph template as the scheduler stores it. Secret values are never returned, only their names."""

    namespace: str
    name: str
    nodes: list[GraphNodeModel]
    retry_policy: RetryPolicyModel | None = None
    store_config: StoreConfigModel | None = None
    triggers: list[CronTrigger] = Field(default_factory=list)
    secret_names: list[str] = Field(default_factory=list)
    version: int = 0
    updated_at: datetime | None = None


class TriggerResponse(BaseModel):
    """What ``StateManager.trigger`` returns."""

    run_id: str
    status: RunStatus = RunStatus.PENDING


class StateModel(BaseModel):
    """One state of a run."""

    state_id: str
    run_id: str
    identifier: str
    node_name: str
    status: StateStatus
    inputs: dict[str, str] = Field(default_factory=dict)
    outputs: list[dict[str, str]] = Field(default_factory=list)
    error: dict[str, str] | None = None
    attempt: int = 1
    parent_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    run_at: datetime | None = None
    pruned_data: dict[str, Any] | None = None
    # The runtime that ran it, when it was handed to that runtime, and how long until its answer (ms).
    runtime_name: str = ""
    started_at: datetime | None = None
    ran_ms: int = 0


class RunModel(BaseModel):
    """A run and (when read with ``get_run`` or ``wait``) its states."""

    run_id: str
    namespace: str
    graph_name: str
    status: RunStatus
    created_at: datetime | None = None
    updated_at: datetime | None = None
    state_counts: dict[str, int] = Field(default_factory=dict)
    store: dict[str, str] = Field(default_factory=dict)
    graph_version: int = 0
    states: list[StateModel] = Field(default_factory=list)
    # Nodes this run has states ready for that no connected runtime hosts: it cannot move until one connects.
    waiting_for_runtime: list[str] = Field(default_factory=list)

    def state(self, identifier: str) -> StateModel:
        """The latest state of ``identifier`` (raises ``KeyError`` when there is none)."""
        matches = [s for s in self.states if s.identifier == identifier]
        if not matches:
            raise KeyError(f"run {self.run_id} has no state with identifier {identifier!r}")
        return matches[-1]


class RuntimeModel(BaseModel):
    """A runtime connected to the scheduler now (``StateManager.list_runtimes``)."""

    runtime_id: str
    runtime_name: str
    namespace: str
    node_names: list[str] = Field(default_factory=list)
    max_concurrency: int = 0
    # States the runtime holds now: each uses one unit of its credit (max_concurrency).
    in_flight: int = 0
    connected_at: datetime | None = None
    last_heartbeat: datetime | None = None
    sdk_version: str = ""
    draining: bool = False
