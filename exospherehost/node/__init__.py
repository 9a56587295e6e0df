"""``exospherehost.node``: the node base class."""

from __future__ import annotations

from exospherehost.node.BaseNode import BaseNode

__all__ = ["BaseNode"]
