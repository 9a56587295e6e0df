"""Lease renewal from a thread, so a node that blocks the event loop does not cost its runtime the lease."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from exosphere._channel import metadata
from exosphere.config import ClientConfig
from exosphere.v1 import runtime_pb2, runtime_pb2_grpc

__all__ = ["KeepAlive"]

logger = logging.getLogger(__name__)


class KeepAlive:
    """Calls ``RuntimeService.KeepAlive`` every ``interval_s`` on its own channel and thread until ``stop()``."""

    def __init__(self, config: ClientConfig, session_id: str, interval_s: float) -> None:
        self._config = config
        self._session_id = session_id
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"exosphere-keepalive-{session_id[:8]}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _channel(self) -> grpc.Channel:
        if self._config.tls_ca_file:
            credentials = grpc.ssl_channel_credentials(root_certificates=Path(self._config.tls_ca_file).read_bytes())
            return grpc.secure_channel(self._config.address, credentials)
        return grpc.insecure_channel(self._config.address)

    def _run(self) -> None:
        request = runtime_pb2.KeepAliveRequest(session_id=self._session_id)
        with self._channel() as channel:
            stub = runtime_pb2_grpc.RuntimeServiceStub(channel)
            while not self._stopped.wait(self._interval_s):
                try:
                    reply = stub.KeepAlive(request, metadata=metadata(self._config), timeout=max(1.0, self._interval_s))
                except grpc.RpcError as exc:
                    logger.debug("keepalive failed session=%s error=%s", self._session_id, exc)
                    continue
                if not reply.known:
                    return
