"""Small pieces of the runtime stream: a lazily made event, sizes of framed results, the errored result sent in place
of one too large, result batches cut by size, rejected results logged, and the event loop a blocking
``Runtime.start()`` runs on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from exosphere.v1 import common_pb2
from exosphere.v1 import runtime_pb2 as pb
from exosphere.wireformat import field, framed_size, repeated

logger = logging.getLogger("exosphere.runtime")

# Cap a batch so the two processes overlap instead of taking turns on one huge message.
MAX_BATCH = 256
# The wire counts bytes: a batch also stops growing at BATCH_BYTES (a bigger result still travels alone), and a
# result that cannot fit in one message at all is sent as errored (room is kept for the batch around it).
BATCH_BYTES = 4 * 1024 * 1024
MAX_RESULT_MESSAGE_BYTES = common_pb2.LIMIT_MAX_MESSAGE_BYTES - 64 * 1024


class LazyEvent:
    """An asyncio.Event made on first use, so a Runtime can be built outside a running loop."""

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def _get(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def set(self) -> None:
        self._get().set()

    async def wait(self) -> None:
        await self._get().wait()


CONNECT = "/exosphere.v1.RuntimeService/Connect"
_RESULTS_TAG = b"\x12"  # RuntimeMessage.results: field 2, length-delimited
_RESULT_TAG = b"\x0a"  # ResultBatch.results: field 1, length-delimited


def results_message(results: list[bytes]) -> bytes:
    """``RuntimeMessage(results=ResultBatch(results=...))`` of serialized results: each result is serialized once
    (its length is its size), never copied into a batch message."""
    return field(_RESULTS_TAG, repeated(_RESULT_TAG, results))


def too_large(result: pb.Result, size: int) -> pb.Result:
    """An errored result in place of one too large for any message (its state fails instead of the stream)."""
    logger.error("result too large to send state_id=%s bytes=%d", result.state_id, size)
    errored = pb.Result(state_id=result.state_id, attempt=result.attempt, dispatch_id=result.dispatch_id)
    errored.errored.message = (
        f"the result of state {result.state_id} is {size} bytes, over the {MAX_RESULT_MESSAGE_BYTES}-byte limit "
        "of one result (LIMIT_MAX_MESSAGE_BYTES less room for the batch); return or store less data"
    )
    errored.errored.type = "ResultTooLargeError"
    return errored


async def flush(call: Any, outbox: list[pb.Result]) -> None:
    """Write ``outbox`` (emptying it) in ResultBatch messages cut by count and by size."""
    while outbox:
        batch = outbox[:MAX_BATCH]
        del outbox[:MAX_BATCH]
        size = 0
        results: list[bytes] = []
        for result in batch:
            data = result.SerializeToString()  # once: its length is its size (no ByteSize pass, no copy into a batch)
            result_size = framed_size(len(data))
            if result_size > MAX_RESULT_MESSAGE_BYTES:
                data = too_large(result, result_size).SerializeToString()
                result_size = framed_size(len(data))
            if results and size + result_size > BATCH_BYTES:
                await call.write(results_message(results))
                results, size = [], 0
            results.append(data)
            size += result_size
        if results:
            await call.write(results_message(results))


# Rejected results logged one per line, at most this many per ResultsRejected message (then a count).
LOG_REJECTED = 5


def reject_reason(rejected: pb.RejectedResult) -> str:
    """Why the scheduler rejected a result, by name (``STATE_MISMATCH``); a reason newer than this SDK by number."""
    try:
        return pb.RejectReason.Name(rejected.reason).removeprefix("REJECT_REASON_")
    except ValueError:
        return str(rejected.reason)


def log_rejected(runtime: str, message: pb.ResultsRejected) -> None:
    """The scheduler could not match some results: a bug on this side (or a result that raced a restart)."""
    for rejected in message.results[:LOG_REJECTED]:
        reason = reject_reason(rejected)
        logger.warning(
            "result rejected by the scheduler runtime=%s state_id=%s dispatch_id=%d attempt=%d reason=%s: %s",
            runtime, rejected.state_id, rejected.dispatch_id, rejected.attempt, reason, rejected.message,
        )  # fmt: skip
    if len(message.results) > LOG_REJECTED:
        logger.warning("%d more results rejected runtime=%s", len(message.results) - LOG_REJECTED, runtime)


def first_leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    first = group.exceptions[0]
    return first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def loop_factory() -> Any:
    if os.environ.get("EXOSPHERE_LOOP", "uvloop") == "uvloop":
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.new_event_loop
    return asyncio.new_event_loop
