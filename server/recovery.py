"""Start-up: rebuild the engine's memory from the store after a restart or a crash.

States committed as CREATED (the engine never commits QUEUED) go back to the ready queues, so anything that was
running when the scheduler died runs again: at-least-once. Fan-in counters are recounted from the states. One
unreadable record is reported and skipped: it must not keep the scheduler from serving everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from server.catalog import GraphCatalog
from server.models import NodeSchema
from server.runstate import Run
from server.runtable import RunTable
from server.store import Store

__all__ = ["recover"]

logger = logging.getLogger(__name__)


def recover(
    store: Store,
    table: RunTable,
    catalog: GraphCatalog,
    nodes: dict[tuple[str, str], NodeSchema],
    decode_schema: Callable[[str, bytes], NodeSchema] | None,
) -> list[Run]:
    """Load registrations into ``nodes``, graphs into ``catalog`` and pending runs into ``table``; return the runs.

    The caller continues the runs (see ``StateMachine.resume``).
    """
    if decode_schema is not None:
        for namespace, name, raw in store.load_nodes():
            try:
                nodes[namespace, name] = decode_schema(namespace, raw)
            except Exception as exc:  # any decoding failure (protobuf's DecodeError is not a ValueError)
                logger.error("stored schema unreadable, skipped namespace=%r node=%r error=%s", namespace, name, exc)
    catalog.load()
    run_rows, state_rows = store.load_pending()
    runs = table.load(
        run_rows, state_rows, lambda row: catalog.version(row.namespace, row.graph_name, row.graph_version)
    )
    logger.info(
        "recovered graphs=%d nodes=%d pending_runs=%d states=%d",
        len(catalog.graphs()), len(nodes), len(runs), len(state_rows),
    )  # fmt: skip
    return runs
