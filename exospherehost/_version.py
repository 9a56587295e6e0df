"""The package version, where exospherehost keeps it (``exospherehost._version.version``)."""

from __future__ import annotations

from exosphere import __version__

# Our package's version: exospherehost code checks that it is a non-empty string, never compares it.
version = __version__
