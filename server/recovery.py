"""Start-up: rebuild the engine's memory from the store after a restart or a crash.

Here: registered node schemas and graphs. Pending runs are loaded when the scheduler takes their shards
(server/ownership.py): states committed as CREATED (the engine never commits QUEUED) go back to the ready queues,
so anything that was running when the scheduler died runs again (at-least-once), and fan-in counters are recounted
from the states. One unreadable record is reported and skipped: it must not keep the scheduler from serving
everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .catalog import GraphCatalog
from .models import NodeSchema
from .store import Store

__all__ = ["recover"]

logger = logging.getLogger(__name__)


def recover(
    store: Store,
    catalog: GraphCatalog,
    nodes: dict[tuple[str, str], NodeSchema],
    decode_schema: Callable[[str, bytes], NodeSchema] | None,
) -> None:
    """Load registrations into ``nodes`` and graphs into ``catalog``. Pending runs are loaded shard by shard when
    the scheduler takes its shards (server/ownership.py), with ``RunTable.load``."""
    if decode_schema is not None:
        for namespace, name, raw in store.load_nodes():
            try:
                nodes[namespace, name] = decode_schema(namespace, raw)
            except Exception as exc:  # any decoding failure (protobuf's DecodeError is not a ValueError)
                logger.error("stored schema unreadable, skipped namespace=%r node=%r error=%s", namespace, name, exc)
    catalog.load()
    logger.info("recovered graphs=%d nodes=%d", len(catalog.graphs()), len(nodes))
