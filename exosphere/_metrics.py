"""A runtime's own Prometheus metrics (``Runtime(..., metrics_port=...)``; needs ``prometheus-client``).

Served by prometheus-client's small HTTP server in a thread of its own, on ``metrics_host`` (loopback unless told
otherwise), from ``run()`` until it returns. Executions are counted by node and outcome, with their duration; the
credit in use is read at scrape time. Counting costs a dict increment and a histogram observation per execution,
and only when the port is set.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from exosphere.errors import InvalidArgumentError

__all__ = ["RuntimeMetrics"]

EXECUTION_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class RuntimeMetrics:
    def __init__(self, *, runtime: str, namespace: str, in_flight: Callable[[], int], credit: int) -> None:
        try:
            from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        except ImportError:
            raise InvalidArgumentError(
                "metrics_port needs prometheus-client: pip install 'exosphere[metrics]'"
            ) from None
        self.registry = CollectorRegistry()
        labels = {"runtime": runtime, "namespace": namespace}
        self._executions = Counter(
            "exosphere_runtime_executions",
            "Executions finished, by node and outcome (executed, errored, pruned, requeue_after).",
            ["node", "outcome"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "exosphere_runtime_execution_seconds",
            "How long executions took in this runtime.",
            ["node"],
            buckets=EXECUTION_BUCKETS_S,
            registry=self.registry,
        )
        in_use = Gauge(
            "exosphere_runtime_in_flight", "States this runtime is executing.", list(labels), registry=self.registry
        )
        in_use.labels(**labels).set_function(lambda: float(in_flight()))
        total = Gauge(
            "exosphere_runtime_max_concurrency", "States it executes at once.", list(labels), registry=self.registry
        )
        total.labels(**labels).set(credit)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def clock() -> float:
        return time.perf_counter()

    def executed(self, node: str, outcome: str, started: float) -> None:
        self._executions.labels(node, outcome).inc()
        self._seconds.labels(node).observe(time.perf_counter() - started)

    def serve(self, host: str, port: int) -> int:
        """Start serving ``/metrics``; returns the bound port (``port`` 0 picks one)."""
        from prometheus_client import start_http_server

        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)
