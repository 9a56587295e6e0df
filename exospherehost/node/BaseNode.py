"""exospherehost's ``BaseNode``: ours, plus ``_execute(inputs, secrets)`` to run a node in a unit test."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from exosphere import node as _ours

__all__ = ["BaseNode"]


class BaseNode(_ours.BaseNode):
    """Base class of every node (see :class:`exosphere.BaseNode`); nodes built on it run on either runtime."""

    async def _execute(self, inputs: BaseModel, secrets: BaseModel) -> Any:
        """Set ``self.inputs`` and ``self.secrets`` and run ``execute()``, as a runtime does (no scheduler needed)."""
        self.inputs = inputs
        self.secrets = secrets
        return await self.execute()
