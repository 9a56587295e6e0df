"""exospherehost's ``Runtime``: its constructor, its checks and messages, on our streaming runtime.

What each parameter does here:

- ``state_manager_uri`` (else ``EXOSPHERE_STATE_MANAGER_URI``): the scheduler's address, given as exospherehost
  users have it, ``http://host:port`` (plaintext) or ``https://host:port`` (TLS). Without either, our own
  settings apply (``EXOSPHERE_SCHEDULER_ADDRESS``, default ``localhost:50051``) instead of a ``ValueError``.
- ``key`` (else ``EXOSPHERE_API_KEY``): the API key; optional, as our scheduler may run without keys.
- ``workers``: how many states run at once, our ``max_concurrency`` (the scheduler never sends more).
- ``batch_size``: checked (>= 1) and kept. The scheduler pushes a state as soon as a worker is free, so there is
  no poll batch to size.
- ``state_manage_version`` (also spelled ``state_manager_version``, as its docs do) and ``poll_interval``:
  accepted and kept; there is one API version and nothing polls.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from exosphere import errors as _errors
from exosphere import runtime as _ours
from exosphere.config import ClientConfig
from exosphere.logs import setup_default_logging
from exosphere.node import BaseNode
from exospherehost._address import resolve_target
from exospherehost._errors import NodeValidationError

__all__ = ["Runtime"]


def _setup_default_logging() -> None:
    """exospherehost's name for the default logging setup (``EXOSPHERE_LOG_LEVEL``, only without handlers)."""
    setup_default_logging()


def _node_errors(nodes: Sequence[Any]) -> list[str]:
    """exospherehost's checks, in its words."""
    errors: list[str] = []
    for node in nodes:
        name = getattr(node, "__name__", repr(node))
        if not (inspect.isclass(node) and issubclass(node, BaseNode)):
            errors.append(f"{name} does not inherit from exospherehost.BaseNode")
        for model_name in ("Inputs", "Outputs", "Secrets"):
            if not hasattr(node, model_name):
                errors.append(f"{name} does not have an {model_name} class")
            model = getattr(node, model_name, None)
            if not (inspect.isclass(model) and issubclass(model, BaseModel)):
                errors.append(f"{name} does not have an {model_name} class that inherits from pydantic.BaseModel")
                continue
            for field_name, field in model.model_fields.items():
                if field.annotation is not str:
                    errors.append(
                        f"{name}.{model_name} field '{field_name}' must be of type str, got {field.annotation}"
                    )
    names = [getattr(node, "__name__", repr(node)) for node in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        errors.append(f"Duplicate node class names found: {duplicates}")
    return errors


class Runtime(_ours.Runtime):
    """Hosts ``nodes`` for ``namespace``; ``start()`` blocks, or returns a task inside a running event loop.

    ``start()`` also works in a daemon thread (``Thread(target=runtime.start, daemon=True).start()``). It is our
    :class:`exosphere.Runtime`, so ``run()``, ``stop()`` and ``wait_registered()`` work too. Invalid settings and
    nodes raise ``ValueError`` with exospherehost's messages.
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        nodes: Sequence[type[BaseNode]],
        state_manager_uri: str | None = None,
        key: str | None = None,
        batch_size: int = 16,
        workers: int = 4,
        state_manage_version: str = "v0",
        poll_interval: int = 1,
        *,
        state_manager_version: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("Batch size should be at least 1")
        if workers < 1:
            raise ValueError("Workers should be at least 1")
        target = resolve_target(state_manager_uri)
        nodes = list(nodes)
        errors = _node_errors(nodes)
        if errors:
            raise NodeValidationError(errors)
        try:
            super().__init__(
                namespace,
                name,
                nodes,
                max_concurrency=workers,
                address=target.address,
                key=key,
                tls_ca_file=target.tls_ca_file,
            )
        except _errors.NodeValidationError as exc:  # our stricter checks (async execute, str defaults...)
            raise NodeValidationError(exc.errors) from None
        # exospherehost's attribute names, which its users' tests read.
        self._name = self.name
        self._namespace = self.namespace
        config = ClientConfig.resolve(address=target.address, api_key=key)
        self._key = config.api_key
        self._state_manager_uri = target.uri or config.address
        self._state_manager_version = state_manager_version or state_manage_version
        self._batch_size = batch_size
        self._workers = workers
        self._poll_interval = poll_interval
        self._node_names = [node.__name__ for node in nodes]
        self._node_mapping = {node.__name__: node for node in nodes}

    def _need_secrets(self, node: type[BaseNode]) -> bool:
        """Whether ``node`` declares secrets."""
        return len(node.Secrets.model_fields) > 0
