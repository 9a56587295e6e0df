"""The public names are a contract (exospherehost users import them): pin them."""

from __future__ import annotations

import exosphere
import exospherehost

EXOSPHEREHOST_NAMES = {
    "BaseNode",
    "Runtime",
    "StateManager",
    "PruneSignal",
    "ReQueueAfterSignal",
    "GraphNodeModel",
    "UnitesModel",
    "UnitesStrategyEnum",
    "RetryPolicyModel",
    "RetryStrategyEnum",
    "StoreConfigModel",
    "CronTrigger",
}


def test_all_is_pinned() -> None:
    assert sorted(exosphere.__all__) == [
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


def test_exospherehost_names_import_from_both_packages() -> None:
    # exospherehost's classes are ours, or ours with its signatures and messages (tests/compat); its StateManager
    # returns its dicts, so it is its own class.
    for name in EXOSPHEREHOST_NAMES - {"StateManager"}:
        assert issubclass(getattr(exospherehost, name), getattr(exosphere, name))
    assert set(exospherehost.__all__) == EXOSPHEREHOST_NAMES | {"VERSION"}
