"""Cluster mode: a call that must reach the replica owning a run (cancel, retry) is forwarded to it.

The caller's API key goes along, so the owner checks it as if it had been called directly; a forwarded call is
marked, and is never forwarded again (the owner answers, or says it does not own the run any more and the client
retries). Channels to the other replicas are opened on first use and kept.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from exosphere.v1 import scheduler_pb2_grpc

__all__ = ["FORWARDED", "Forwarder"]

logger = logging.getLogger(__name__)

# Metadata that marks a forwarded call.
FORWARDED = "x-exosphere-forwarded"
# Metadata passed on to the owner.
_PASSED = frozenset({"x-api-key"})
CALL_TIMEOUT_S = 30.0


class Forwarder:
    def __init__(self, *, root_certificates: bytes | None = None) -> None:
        self._root_certificates = root_certificates
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> scheduler_pb2_grpc.SchedulerServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            if self._root_certificates is not None:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
                channel = grpc.aio.secure_channel(address, credentials)
            else:
                channel = grpc.aio.insecure_channel(address)
            self._channels[address] = channel
        return scheduler_pb2_grpc.SchedulerServiceStub(channel)

    async def call(self, address: str, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """``method`` with ``request`` on the replica at ``address``; its error status comes back unchanged."""
        metadata = [(k, v) for k, v in context.invocation_metadata() or () if k in _PASSED]
        metadata.append((FORWARDED, "1"))
        logger.debug("forwarding call method=%s replica=%s", method, address)
        try:
            return await getattr(self._stub(address), method)(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "", trailing_metadata=exc.trailing_metadata() or ())
            raise  # context.abort raises; this keeps type checkers informed

    async def call_as(self, address: str, method: str, request: Any, api_key: str | None) -> Any:
        """For the dashboard: ``method`` on the replica at ``address``, as the holder of ``api_key`` (checked there
        as if it had been called directly). A failure raises that replica's ``grpc.aio.AioRpcError``."""
        metadata = [(FORWARDED, "1"), *([("x-api-key", api_key)] if api_key else [])]
        logger.debug("forwarding dashboard call method=%s replica=%s", method, address)
        return await getattr(self._stub(address), method)(request, metadata=metadata, timeout=CALL_TIMEOUT_S)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()


def forwarded(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    return any(k == FORWARDED for k, _ in context.invocation_metadata() or ())
