"""OpenTelemetry traces of runs (the ``otel`` extra; ``--otel``): a span for each trigger, one per state dispatch.

A run's trace starts with ``exosphere.trigger``; every dispatch of one of its states is an ``exosphere.state`` span,
a child of the trigger, from the moment the state is handed to a runtime until its result comes back. Its W3C
``traceparent`` travels in the ``Execute`` message, so the runtime's ``exosphere.execute`` span is its child
(``exosphere/_tracing.py``). Spans are built only when tracing is on; off, the hot path pays one ``None`` check per
batch. The trace context lives in memory: states dispatched again after a scheduler restart start a new trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .runstate import Aside, Run, Session, State
from .status import ResultKind

__all__ = ["Tracing"]

_PROPAGATOR = TraceContextTextMapPropagator()


def _ns(ms: int) -> int:
    return ms * 1_000_000


class Tracing:
    """Spans of the scheduler, on ``provider`` (the global tracer provider when None)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("exosphere.scheduler", tracer_provider=provider)

    def triggered(self, runs: Sequence[Run], start_ns: int) -> None:
        """Runs were started (and committed): one trigger span each, the root of the run's trace."""
        for run in runs:
            span = self._tracer.start_span(
                "exosphere.trigger",
                kind=SpanKind.SERVER,
                start_time=start_ns,
                attributes={
                    "exosphere.run_id": run.run_id,
                    "exosphere.namespace": run.namespace,
                    "exosphere.graph": run.graph_name,
                    "exosphere.graph_version": run.graph_version,
                },
            )
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
            run.trace_carrier = carrier
            span.end()

    def dispatched(self, state: State, session: Session, now_ms: int) -> None:
        """``state`` went to ``session``'s runtime: its span starts, and its traceparent goes with the Execute."""
        aside = state.aside
        if aside is None:
            aside = state.aside = Aside()
        elif aside.trace_span is not None:  # dispatched before and never answered (its runtime went away)
            aside.trace_span.set_attribute("exosphere.result", "redispatched")
            aside.trace_span.end(end_time=_ns(now_ms))
        run = state.run
        parent: Context | None = _PROPAGATOR.extract(run.trace_carrier) if run.trace_carrier else None
        span = self._tracer.start_span(
            "exosphere.state",
            context=parent,
            kind=SpanKind.PRODUCER,
            start_time=_ns(now_ms),
            attributes={
                "exosphere.run_id": state.run_id,
                "exosphere.state_id": state.state_id,
                "exosphere.identifier": state.identifier,
                "exosphere.node": state.node_name,
                "exosphere.attempt": state.attempt,
                "exosphere.runtime": session.runtime_name,
                "exosphere.runtime_id": session.runtime_id,
                "exosphere.wait_ms": max(0, now_ms - max(state.updated_at_ms, state.run_at_ms)),
            },
        )
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        aside.trace_span = span
        state.traceparent = carrier.get("traceparent", "")

    def answered(self, state: State, kind: ResultKind, error: dict[str, str] | None, now_ms: int) -> None:
        """The runtime's result for ``state`` came back: its span ends, and the state keeps nothing of it (an Aside
        of nothing else, about 88 bytes, and the traceparent, about 100, would stay as long as its run)."""
        aside = state.aside
        if aside is None or aside.trace_span is None:
            return
        span: Any = aside.trace_span
        aside.trace_span = None
        if aside.holds_nothing():
            state.aside = None
        state.traceparent = ""
        span.set_attribute("exosphere.result", str(kind))
        if kind == ResultKind.ERRORED:
            error = error or {}
            span.set_status(Status(StatusCode.ERROR, f"{error.get('type', 'Error')}: {error.get('message', '')}"))
        span.end(end_time=_ns(now_ms))
