"""The dashboard's overview of a namespace: runtimes online, nodes and their queues, states per second, pending
runs and, in cluster mode, every live replica. On a cluster it is the whole cluster's (server/replicas.py): this
replica's own figures are taken now, the others' from the reports their last heartbeats wrote."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..engine import Engine
from ..replicas import ReplicaView, combined_runtimes, report_of

__all__ = ["Overview"]

# States per second are measured between now and a sample about this long before.
RATE_WINDOW_S = 10


class Overview:
    def __init__(self, engine: Engine, replicas: Callable[[], Sequence[ReplicaView]]) -> None:
        self._engine = engine
        self._replicas = replicas
        # (monotonic time, states finished so far, cluster-wide): states per second over the last samples.
        self._finished: deque[tuple[float, int]] = deque(maxlen=30)

    def of(self, namespace: str) -> dict[str, Any]:
        engine = self._engine
        views = self._replicas()
        own = report_of(engine)
        own_address = engine.runtimes.replica_address
        reports = [(own_address, own), *((v.address, v.report) for v in views if not v.is_self)]
        runtimes = combined_runtimes(reports, namespace)
        online = {node for r in runtimes if not r["draining"] for node in r["nodes"]}
        depths: dict[str, int] = {}
        for _, report in reports:
            for node, depth in report.queue_depths.get(namespace, {}).items():
                depths[node] = depths.get(node, 0) + depth
        return {
            "runtimes": runtimes,
            "nodes": [
                {"name": n.name, "online": n.name in online, "queue_depth": depths.get(n.name, 0)}
                for n in engine.runtimes.nodes_of(namespace)
            ],
            "states_per_second": self._rate(sum(r.states_finished for _, r in reports)),
            "pending_runs": sum(r.pending_runs.get(namespace, 0) for _, r in reports),
            "replicas": [
                {
                    "replica_id": v.replica_id,
                    "address": v.address,
                    "shards": len(engine.shards.owned) if v.is_self else v.shards,
                    "heartbeat_age_s": round(v.heartbeat_age_s(), 1),
                    "runtimes": len(combined_runtimes([(v.address, own if v.is_self else v.report)], namespace)),
                    "this": v.is_self,
                }
                for v in views
            ],
        }

    def _rate(self, finished: int) -> float:
        """States finished per second between this call and one about RATE_WINDOW_S before (0 when a replica that
        left takes its count with it)."""
        now = time.monotonic()
        samples = self._finished
        samples.append((now, finished))
        while len(samples) > 2 and now - samples[1][0] > RATE_WINDOW_S:
            samples.popleft()
        then, before = samples[0]
        return max(0.0, round((finished - before) / (now - then), 1)) if now - then > 0.5 else 0.0
