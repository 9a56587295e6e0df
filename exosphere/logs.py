"""exospherehost's default logging: added only when the application configured none.

``EXOSPHERE_LOG_FORMAT=json`` makes it one JSON object per line: ``time``, ``level``, ``logger``, ``message``, the
message's ``key=value`` ids as fields, and ``exception`` (the traceback) when there is one; the scheduler's
``--log-format json`` uses this same formatter. This module imports only the standard library, which is why the
scheduler may import it (besides ``exosphere.v1`` and ``exosphere.errors``, nothing else of the SDK).
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime

__all__ = ["JsonFormatter", "setup_default_logging"]

_PAIR = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;]+)")
_RESERVED = {"time", "level", "logger", "message", "exception"}


class JsonFormatter(logging.Formatter):
    """One JSON object per log record."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for key, value in _PAIR.findall(message):
            if key not in _RESERVED:
                entry.setdefault(key, value.strip("'\""))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


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
    if os.environ.get("EXOSPHERE_LOG_FORMAT", "").lower() == "json":
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
