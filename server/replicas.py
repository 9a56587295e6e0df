"""Cluster mode, as operators see it: what each replica reports of itself, and the cluster put together.

Every heartbeat a replica writes a small report into its ``members`` row (server/cluster.py): the runtimes connected
to it, its ready queues, its pending runs per namespace, and how many states it has finished. Any replica reads every
live replica's row on its own heartbeat, so the dashboard of each one shows the whole cluster (at most a heartbeat
old) without asking the others. A single scheduler is a cluster of one and reports to nobody.

A runtime holds a stream to every replica (one *session* on each, with the same runtime id), so the combined view
shows it once: the credit it uses across them, the replicas it is connected to, the latest heartbeat any one heard.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from .engine import Engine

__all__ = ["ReplicaReport", "ReplicaView", "combined_runtimes", "report_of"]

logger = logging.getLogger(__name__)


@dataclass
class ReplicaReport:
    """What one replica says of itself in its membership row."""

    # One entry per connected runtime session: runtime_id, runtime_name, namespace, nodes, credit_used, credit,
    # connected_at_ms, last_heartbeat_ms, draining.
    runtimes: list[dict[str, Any]] = field(default_factory=list)
    # namespace -> node -> ready states waiting for credit
    queue_depths: dict[str, dict[str, int]] = field(default_factory=dict)
    # namespace -> pending runs held by this replica
    pending_runs: dict[str, int] = field(default_factory=dict)
    states_finished: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, replica_id: str) -> ReplicaReport:
        """The report in a row; an empty one (logged) for a row a replica of another version wrote unreadably."""
        try:
            data = json.loads(text or "{}")
            return cls(
                runtimes=[dict(r) for r in data.get("runtimes", [])],
                queue_depths={
                    ns: {n: int(d) for n, d in nodes.items()} for ns, nodes in data.get("queue_depths", {}).items()
                },
                pending_runs={ns: int(n) for ns, n in data.get("pending_runs", {}).items()},
                states_finished=int(data.get("states_finished", 0)),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            logger.warning("unreadable report of replica=%s: %s", replica_id, exc)
            return cls()


@dataclass(frozen=True)
class ReplicaView:
    """One live replica as the last heartbeat read it."""

    replica_id: str
    address: str
    shards: int  # shards whose lease it holds
    heard_at: float  # time.monotonic() of its last heartbeat, as seen from here
    report: ReplicaReport
    is_self: bool = False

    def heartbeat_age_s(self) -> float:
        return max(0.0, time.monotonic() - self.heard_at)


def report_of(engine: Engine) -> ReplicaReport:
    """This replica's report, now."""
    sessions = engine.runtimes
    runtimes = [
        {
            "runtime_id": s.runtime_id,
            "runtime_name": s.runtime_name,
            "namespace": s.namespace,
            "nodes": sorted(s.node_names),
            "credit_used": len(s.in_flight),
            "credit": s.max_concurrency,
            "connected_at_ms": s.connected_at_ms,
            "last_heartbeat_ms": sessions.last_heard_ms(s),
            "draining": s.draining,
        }
        for s in sessions.connected()
    ]
    depths: dict[str, dict[str, int]] = {}
    for (namespace, node), depth in engine.queue_depths().items():
        depths.setdefault(namespace, {})[node] = depth
    pending: dict[str, int] = {}
    for run in engine.live_runs():
        if run.pending:
            pending[run.namespace] = pending.get(run.namespace, 0) + 1
    return ReplicaReport(runtimes, depths, pending, sum(engine.tally.states_finished.values()))


def combined_runtimes(reports: Iterable[tuple[str, ReplicaReport]], namespace: str) -> list[dict[str, Any]]:
    """The runtimes of ``namespace`` across replicas (address, report), one entry per runtime id, each with the
    ``replicas`` it is connected to; its credit is shared by its streams, so the use adds up and the total does not."""
    merged: dict[str, dict[str, Any]] = {}
    for address, report in reports:
        for r in report.runtimes:
            if r.get("namespace") != namespace:
                continue
            seen = merged.get(r["runtime_id"])
            if seen is None:
                merged[r["runtime_id"]] = {**r, "replicas": [address] if address else []}
                continue
            seen["credit_used"] += r["credit_used"]
            seen["credit"] = max(seen["credit"], r["credit"])
            seen["last_heartbeat_ms"] = max(seen["last_heartbeat_ms"], r["last_heartbeat_ms"])
            seen["connected_at_ms"] = min(seen["connected_at_ms"], r["connected_at_ms"])
            seen["nodes"] = sorted(set(seen["nodes"]) | set(r["nodes"]))
            seen["draining"] = seen["draining"] or r["draining"]
            if address:
                seen["replicas"] = sorted({*seen["replicas"], address})
    return sorted(merged.values(), key=lambda r: (r["runtime_name"], r["connected_at_ms"], r["runtime_id"]))
