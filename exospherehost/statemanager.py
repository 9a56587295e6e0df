"""exospherehost's ``StateManager``: its constructor, async methods and the dicts its state manager returned.

Each call opens its own channel and closes it (as exospherehost opened an HTTP session per call), so one
``StateManager`` serves any number of ``asyncio.run(...)`` calls. Errors are our classes (``GraphNotFoundError``,
``AuthenticationError``...) worded as exospherehost's: ``Failed to trigger state: 404 ...``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from exosphere import client as _ours
from exosphere.errors import GraphValidationError
from exosphere.models import CronTrigger, GraphModel, RetryPolicyModel, StoreConfigModel
from exospherehost._address import resolve_target
from exospherehost._errors import GraphValidationFailedError, http_errors
from exospherehost.models import GraphNodeModel

__all__ = ["StateManager", "TriggerState"]

logger = logging.getLogger(__name__)

# The scheduler's error for a graph node whose class no runtime has registered (yet).
_NOT_REGISTERED = "is not registered in namespace"


class TriggerState(BaseModel):
    """An older exospherehost name some docs still import: a node identifier and its inputs."""

    model_config = ConfigDict(extra="ignore")
    identifier: str
    inputs: dict[str, str]


def _retry_policy(policy: RetryPolicyModel | None) -> dict[str, Any]:
    dumped = (policy or RetryPolicyModel()).model_dump(mode="json")
    if float(dumped["exponent"]).is_integer():
        dumped["exponent"] = int(dumped["exponent"])  # exospherehost's exponent is an int
    return dumped


def graph_to_dict(graph: GraphModel) -> dict[str, Any]:
    """A graph as exospherehost's state manager showed it (``GET .../graph/{name}``)."""
    when = graph.updated_at.isoformat() if graph.updated_at else None
    return {
        "name": graph.name,
        "namespace": graph.namespace,
        "nodes": [
            {
                "node_name": node.node_name,
                "namespace": node.namespace,
                "identifier": node.identifier,
                "inputs": dict(node.inputs),
                "next_nodes": list(node.next_nodes or []),
                "unites": node.unites.model_dump(mode="json") if node.unites else None,
            }
            for node in graph.nodes
        ],
        "secrets": dict.fromkeys(graph.secret_names, True),
        "retry_policy": _retry_policy(graph.retry_policy),
        "store_config": (graph.store_config or StoreConfigModel()).model_dump(mode="json"),
        "triggers": [
            {"type": "CRON", "value": {"expression": t.expression, "timezone": t.timezone}} for t in graph.triggers
        ],
        # The scheduler keeps when the current version was saved; exospherehost also had the first save.
        "created_at": when,
        "updated_at": when,
        # A graph the scheduler stored is valid: it refuses invalid ones (see upsert_graph).
        "validation_status": "VALID",
        "validation_errors": [],
    }


class StateManager:
    """Manage graphs and trigger runs of one namespace, with exospherehost's API.

    ``state_manager_uri`` (else ``EXOSPHERE_STATE_MANAGER_URI``) is the scheduler's address as a URL,
    ``http://host:port`` or ``https://host:port``; without one, our settings apply (``EXOSPHERE_SCHEDULER_ADDRESS``,
    default ``localhost:50051``). ``key`` (else ``EXOSPHERE_API_KEY``) is the API key. ``state_manager_version``
    is kept and means nothing here: the scheduler has one API.
    """

    def __init__(
        self,
        namespace: str,
        state_manager_uri: str | None = None,
        key: str | None = None,
        state_manager_version: str = "v0",
    ) -> None:
        self._namespace = namespace
        self._target = resolve_target(state_manager_uri)
        self._state_manager_uri = self._target.uri
        # Read once, here, as exospherehost did: a later change of the environment does not move the client.
        self._key = key if key is not None else os.environ.get("EXOSPHERE_API_KEY")
        self._state_manager_version = state_manager_version
        _ours.StateManager(namespace)  # refuse a bad namespace now, as ours does

    def _client(self) -> _ours.StateManager:
        return _ours.StateManager(
            self._namespace, self._target.address, self._key, tls_ca_file=self._target.tls_ca_file
        )

    async def trigger(
        self,
        graph_name: str,
        inputs: dict[str, str] | None = None,
        store: dict[str, str] | None = None,
        start_delay: int = 0,
    ) -> dict[str, Any]:
        """Start a run of ``graph_name``; returns ``{"status": "CREATED", "run_id": ...}``.

        ``inputs`` override the root node's template inputs, ``store`` seeds the run's store, ``start_delay`` is
        in milliseconds.
        """
        async with self._client() as client, http_errors("trigger state"):
            response = await client.trigger(graph_name, inputs=inputs, store=store, start_delay=start_delay)
        return {"status": "CREATED", "run_id": response.run_id}

    async def get_graph(self, graph_name: str) -> dict[str, Any]:
        """The graph template as a dict (``nodes``, ``secrets`` names, ``validation_status``...)."""
        async with self._client() as client, http_errors("get graph"):
            graph = await client.get_graph(graph_name)
        return graph_to_dict(graph)

    async def upsert_graph(
        self,
        graph_name: str,
        graph_nodes: Sequence[GraphNodeModel],
        secrets: dict[str, str],
        retry_policy: RetryPolicyModel | None = None,
        store_config: StoreConfigModel | None = None,
        triggers: Sequence[CronTrigger] | None = None,
        validation_timeout: float = 60,
        polling_interval: float = 1,
    ) -> dict[str, Any]:
        """Create or replace a graph template and return it as :meth:`get_graph` does (``validation_status``).

        Nodes that no runtime has registered yet are waited for, checking every ``polling_interval`` seconds for
        up to ``validation_timeout`` seconds, so a graph can be saved while its runtime is starting. Any other
        problem, or nodes still missing at the deadline, raises ``Graph validation failed: INVALID and errors:
        [...]`` (a :class:`exosphere.GraphValidationError`, hence a ``ValueError``).
        """
        deadline = time.monotonic() + validation_timeout
        nodes: list[GraphNodeModel | Mapping[str, Any]] = list(graph_nodes)
        async with self._client() as client:
            while True:
                try:
                    async with http_errors("upsert graph"):
                        graph = await client.upsert_graph(
                            graph_name, nodes, secrets, retry_policy, store_config, list(triggers or [])
                        )
                    return graph_to_dict(graph)
                except GraphValidationError as exc:
                    waiting = [e for e in exc.errors if _NOT_REGISTERED in e]
                    if not waiting or time.monotonic() + polling_interval > deadline:
                        raise GraphValidationFailedError(exc.errors) from None
                    logger.info(
                        "graph waits for nodes to register graph=%s namespace=%s missing=%d",
                        graph_name,
                        self._namespace,
                        len(waiting),
                    )
                await asyncio.sleep(polling_interval)
