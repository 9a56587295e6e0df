"""Prometheus metrics of the scheduler, read at scrape time.

Nothing is counted here on the hot path: gauges (live states, queue depths, runtimes and their credit) are read
from the engine when ``/metrics`` is scraped, and histograms and counters come from the batches the engine tallies
(``server/observe.py``). The one per-call cost is the RPC counter, one dict increment when a call ends.

Every series with a namespace label is shown only to an API key allowed in that namespace.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest

from .engine import Engine
from .observe import Histogram

__all__ = ["RpcCounter", "SchedulerMetrics", "render"]

NODE_LABELS = ["namespace", "node"]


class RpcCounter(grpc.aio.ServerInterceptor):
    """Counts finished RPCs by method and status code (one increment per call, when it ends)."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return _counted(handler, handler_call_details.method, self.calls)


def _counted(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, calls: Counter[tuple[str, str]]
) -> grpc.RpcMethodHandler[Any, Any]:
    def done(context: Any) -> None:
        code = context.code()
        if code is None:
            code = grpc.StatusCode.CANCELLED if context.cancelled() else grpc.StatusCode.OK
        calls[method, code.name] += 1

    def wrap(behavior: Any) -> Any:
        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                context.add_done_callback(done)
                async for item in behavior(request, context):
                    yield item

            return stream

        async def call(request: Any, context: Any) -> Any:
            context.add_done_callback(done)
            return await behavior(request, context)

        return call

    kwargs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary), **kwargs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), **kwargs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary), **kwargs)
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), **kwargs)
    return handler


class SchedulerMetrics:
    """The scheduler's metric families, built from the engine at each scrape."""

    def __init__(self, engine: Engine, rpcs: RpcCounter) -> None:
        self._engine = engine
        self._rpcs = rpcs

    def collect(self, allowed: Callable[[str], bool]) -> Iterator[Metric]:
        engine, tally = self._engine, self._engine.tally

        states = GaugeMetricFamily(
            "exosphere_states", "States of the runs held in memory, by status.", labels=[*NODE_LABELS, "status"]
        )
        live = Counter((s.run.namespace, s.node_name, str(s.status)) for s in engine.live_states())
        for (namespace, node, status), n in sorted(live.items()):
            if allowed(namespace):
                states.add_metric([namespace, node, status], n)
        yield states

        finished = CounterMetricFamily(
            "exosphere_states_finished",
            "States that reached a final status (SUCCESS, ERRORED, PRUNED, ...), once committed.",
            labels=[*NODE_LABELS, "status"],
        )
        for (namespace, node, status), n in sorted(tally.states_finished.items()):
            if allowed(namespace):
                finished.add_metric([namespace, node, str(status)], n)
        yield finished

        runs = GaugeMetricFamily("exosphere_runs_pending", "Runs not finished yet.", labels=["namespace"])
        pending = Counter(r.namespace for r in engine.live_runs() if r.pending)
        for namespace, n in sorted(pending.items()):
            if allowed(namespace):
                runs.add_metric([namespace], n)
        yield runs

        depth = GaugeMetricFamily(
            "exosphere_queue_depth", "Ready states waiting for a runtime's credit.", labels=NODE_LABELS
        )
        for (namespace, node), n in sorted(engine.queue_depths().items()):
            if allowed(namespace):
                depth.add_metric([namespace, node], n)
        yield depth

        yield _histograms(
            "exosphere_dispatch_wait_seconds",
            "From ready (created, requeued or due) to handed to a runtime.",
            tally.dispatch_wait,
            allowed,
        )
        yield _histograms(
            "exosphere_execution_seconds",
            "From handed to a runtime to its result, as the scheduler sees it.",
            tally.execution,
            allowed,
        )

        sessions = [s for s in engine.runtimes.connected() if allowed(s.namespace)]
        connected = GaugeMetricFamily("exosphere_runtimes_connected", "Runtime streams open.", labels=["namespace"])
        for namespace, n in sorted(Counter(s.namespace for s in sessions).items()):
            connected.add_metric([namespace], n)
        yield connected
        labels = ["namespace", "runtime", "runtime_id"]
        total = GaugeMetricFamily("exosphere_runtime_credit", "States a runtime runs at once.", labels=labels)
        used = GaugeMetricFamily("exosphere_runtime_credit_used", "States a runtime holds now.", labels=labels)
        for s in sessions:
            total.add_metric([s.namespace, s.runtime_name, s.runtime_id], s.max_concurrency)
            used.add_metric([s.namespace, s.runtime_name, s.runtime_id], len(s.in_flight))
        yield total
        yield used

        rejected = CounterMetricFamily(
            "exosphere_results_rejected",
            "Runtime results that matched no dispatch of their stream, by reason (server/rejects.py).",
            labels=["namespace", "reason"],
        )
        for (namespace, reason), n in sorted(engine.rejects.counts.items()):
            if allowed(namespace):
                rejected.add_metric([namespace, reason], n)
        yield rejected

        yield CounterMetricFamily("exosphere_commits", "Group commits (transactions).", value=tally.commits)
        yield CounterMetricFamily(
            "exosphere_committed_states", "State rows written by group commits.", value=tally.committed_states
        )
        latency = HistogramMetricFamily(
            "exosphere_commit_seconds", "From the end of a loop tick to its transaction being durable."
        )
        _add_histogram(latency, [], tally.commit_latency)
        yield latency

        rpcs = CounterMetricFamily(
            "exosphere_rpcs", "gRPC calls finished, by method and code.", labels=["method", "code"]
        )
        for (method, code), n in sorted(self._rpcs.calls.items()):
            rpcs.add_metric([method, code], n)
        yield rpcs


def _histograms(
    name: str, doc: str, hists: dict[tuple[str, str], Histogram], allowed: Callable[[str], bool]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=NODE_LABELS)
    for (namespace, node), hist in sorted(hists.items()):
        if allowed(namespace):
            _add_histogram(family, [namespace, node], hist)
    return family


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    counts = hist.cumulative()  # values are in ms; Prometheus wants seconds
    buckets = [(_le(bound / 1000), count) for bound, count in zip(hist.bounds, counts, strict=False)]
    buckets.append(("+Inf", counts[-1]))
    family.add_metric(labels, buckets, sum_value=hist.total / 1000)


def _le(seconds: float) -> str:
    return repr(float(seconds))


class _Scoped:
    def __init__(self, metrics: SchedulerMetrics, allowed: Callable[[str], bool]) -> None:
        self._metrics = metrics
        self._allowed = allowed

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect(self._allowed)


def render(metrics: SchedulerMetrics, allowed: Callable[[str], bool]) -> bytes:
    """The text exposition format, with only the namespaces ``allowed`` says yes to."""
    return generate_latest(_Scoped(metrics, allowed))
