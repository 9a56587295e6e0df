"""exospherehost's default logging: added only when the application configured none."""

from __future__ import annotations

import logging
import os

__all__ = ["setup_default_logging"]


def setup_default_logging() -> None:
    """Log to stderr at ``EXOSPHERE_LOG_LEVEL`` (default INFO) unless the root logger already has handlers or
    ``EXOSPHERE_DISABLE_DEFAULT_LOGGING`` is set."""
    if os.environ.get("EXOSPHERE_DISABLE_DEFAULT_LOGGING"):
        return
    root = logging.getLogger()
    if root.handlers:
        return
    level = os.environ.get("EXOSPHERE_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
