"""ExosphereHost Python SDK, as a compatibility package over Exosphere.

Code written for the ``exospherehost`` SDK imports from here and runs unchanged on Exosphere's scheduler: the
same names, constructor signatures, return shapes and error messages, with the scheduler's address given as
exospherehost users have it (``EXOSPHERE_STATE_MANAGER_URI=http://host:port``). ``docs/compatibility.md`` lists
every name and what it does here. New code should use :mod:`exosphere`, the typed API these names are built on.

Example usage:
    from exospherehost import Runtime, BaseNode
    from pydantic import BaseModel

    class SampleNode(BaseNode):
        class Inputs(BaseModel):
            name: str

        class Outputs(BaseModel):
            message: str

        async def execute(self) -> Outputs:
            return self.Outputs(message=f"hello {self.inputs.name}")

    Runtime(namespace="SampleNamespace", name="SampleRuntime", nodes=[SampleNode]).start()
"""

from __future__ import annotations

from exospherehost import _version
from exospherehost.models import (
    CronTrigger,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from exospherehost.node import BaseNode
from exospherehost.runtime import Runtime
from exospherehost.signals import PruneSignal, ReQueueAfterSignal
from exospherehost.statemanager import StateManager
from exospherehost.statemanager import TriggerState as TriggerState

__version__ = _version.version
VERSION = __version__

# Exactly exospherehost's list. TriggerState, an older name its docs still import, is importable but not listed.
__all__ = [
    "VERSION",
    "BaseNode",
    "CronTrigger",
    "GraphNodeModel",
    "PruneSignal",
    "ReQueueAfterSignal",
    "RetryPolicyModel",
    "RetryStrategyEnum",
    "Runtime",
    "StateManager",
    "StoreConfigModel",
    "UnitesModel",
    "UnitesStrategyEnum",
]
