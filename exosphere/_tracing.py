"""A runtime's execution spans (OpenTelemetry, the ``otel`` extra), children of the scheduler's dispatch span.

The scheduler sends the dispatch span's W3C ``traceparent`` in each ``Execute`` when it traces (``--otel``). The
span goes to the process's global tracer provider, which the application configures as it likes (without one,
OpenTelemetry's no-op provider drops it). Without the extra, or without a traceparent, nothing is done.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from exosphere.v1 import runtime_pb2

__all__ = ["execution_span", "record_result"]


@functools.cache
def _otel() -> ModuleType | None:
    """``opentelemetry.trace``, imported on the first traced execution (None without the otel extra)."""
    try:
        importlib.import_module("opentelemetry.trace.propagation.tracecontext")
        return importlib.import_module("opentelemetry.trace")
    except ImportError:
        return None


@contextlib.contextmanager
def execution_span(item: runtime_pb2.Execute) -> Iterator[Any]:
    """``exosphere.execute`` around one execution, or nothing (yields None) when it is not traced."""
    trace = _otel() if item.traceparent else None
    if trace is None:
        yield None
        return
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract({"traceparent": item.traceparent})
    tracer = trace.get_tracer("exosphere.runtime")
    with tracer.start_as_current_span(
        f"exosphere.execute {item.node_name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "exosphere.run_id": item.run_id,
            "exosphere.state_id": item.state_id,
            "exosphere.node": item.node_name,
            "exosphere.attempt": item.attempt,
            "exosphere.graph": item.graph_name,
        },
        record_exception=False,
        set_status_on_exception=True,
    ) as span:
        yield span


def record_result(span: Any, result: runtime_pb2.Result) -> None:
    """Mark the execution span with what the execution ended as (an error sets the span's status)."""
    from opentelemetry.trace import Status, StatusCode

    kind = result.WhichOneof("outcome") or "none"
    span.set_attribute("exosphere.result", kind)
    if kind == "errored":
        span.set_status(Status(StatusCode.ERROR, f"{result.errored.type}: {result.errored.message}"))
