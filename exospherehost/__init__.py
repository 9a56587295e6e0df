"""Compatibility alias: code written for the exospherehost SDK imports from here and runs on Exosphere."""

from __future__ import annotations

from exosphere import *  # noqa: F403
from exosphere import __all__ as __all__
from exosphere import __version__ as __version__
