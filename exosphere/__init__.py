"""Exosphere: write nodes, host them in runtimes, wire them into graphs, and run them durably.

The public names follow the exospherehost SDK; code written for it runs unchanged through ``exospherehost``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from exosphere.client import StateManager
from exosphere.errors import (
    AuthenticationError,
    ConflictError,
    ConnectionFailedError,
    ExosphereError,
    ExosphereTimeoutError,
    GraphNotFoundError,
    GraphValidationError,
    InvalidArgumentError,
    NodeValidationError,
    PermissionDeniedError,
    RunNotFoundError,
    StateNotFoundError,
)
from exosphere.models import (
    CronTrigger,
    GraphModel,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    RunModel,
    RunStatus,
    RuntimeModel,
    StateModel,
    StateStatus,
    StoreConfigModel,
    TriggerResponse,
    UnitesModel,
    UnitesStrategyEnum,
)
from exosphere.node import BaseNode
from exosphere.runtime import Runtime
from exosphere.signals import PruneSignal, ReQueueAfterSignal

__all__ = [
    "AuthenticationError",
    "BaseNode",
    "ConflictError",
    "ConnectionFailedError",
    "CronTrigger",
    "ExosphereError",
    "ExosphereTimeoutError",
    "GraphModel",
    "GraphNodeModel",
    "GraphNotFoundError",
    "GraphValidationError",
    "InvalidArgumentError",
    "NodeValidationError",
    "PermissionDeniedError",
    "PruneSignal",
    "ReQueueAfterSignal",
    "RetryPolicyModel",
    "RetryStrategyEnum",
    "RunModel",
    "RunNotFoundError",
    "RunStatus",
    "Runtime",
    "RuntimeModel",
    "StateManager",
    "StateModel",
    "StateNotFoundError",
    "StateStatus",
    "StoreConfigModel",
    "TriggerResponse",
    "UnitesModel",
    "UnitesStrategyEnum",
    "__version__",
]
