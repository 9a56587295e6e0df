"""``--log-format json``: one JSON object per line, for log shippers (Loki, Elasticsearch, CloudWatch).

Each line has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, the ``key=value`` ids the message
carries as fields of their own (``state_id``, ``run_id``, ...; the style guide's logging convention), and
``exception`` with the traceback when there is one. The SDK has the same format for runtimes
(``EXOSPHERE_LOG_FORMAT=json``, ``exosphere/logs.py``); the server does not import the SDK's logging.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime

__all__ = ["JsonFormatter"]

_PAIR = re.compile(r"(?<![\w.])([a-z_][a-z0-9_]*)=('[^']*'|\"[^\"]*\"|[^\s,;]+)")
_RESERVED = {"time", "level", "logger", "message", "exception"}


class JsonFormatter(logging.Formatter):
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
