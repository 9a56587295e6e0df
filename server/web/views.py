"""The dashboard's JSON shapes (what server/web/routes.py answers) and the checks of what it is sent.

Secrets never appear: a graph shows its secret names only, and states carry none.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from exosphere.errors import InvalidArgumentError, NotFoundError

from ..models import GraphSpec, RunRow, StateRow
from ..packed import as_list
from ..store import RunCursor

__all__ = ["graph_view", "parse_cursor", "read_json", "run_id_of", "run_view", "state_brief", "state_full", "strings"]


def parse_cursor(token: str | None) -> RunCursor | None:
    """The place a page of runs starts after: the ``next`` of the previous page (``RunCursor.token``)."""
    if not token:
        return None
    try:
        return RunCursor.parse(token)
    except ValueError as problem:
        raise InvalidArgumentError(f"invalid page cursor {token[:64]!r}: {problem}") from None


def run_id_of(state_id: str) -> str:
    run_id = state_id.rpartition("-")[0]
    if not run_id:
        raise NotFoundError(f"state {state_id} not found")
    return run_id


async def read_json(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgumentError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgumentError("the body must be a JSON object")
    return body


def strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidArgumentError(f"{what} must be an object of strings")
    return value


def graph_view(spec: GraphSpec) -> dict[str, Any]:
    return {
        "namespace": spec.namespace,
        "name": spec.name,
        "version": spec.version,
        "updated_at_ms": spec.updated_at_ms,
        "secret_names": sorted(spec.secrets),  # names only, never values
        "store_keys": spec.store_config.required_keys if spec.store_config else [],
        "store_defaults": spec.store_config.default_values if spec.store_config else {},
        "nodes": [
            {
                "identifier": n.identifier,
                "node_name": n.node_name,
                "next_nodes": n.next_nodes,
                "unites": n.unites.identifier if n.unites else None,
                "inputs": n.inputs,
            }
            for n in spec.nodes
        ],
    }


def run_view(run: RunRow) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "namespace": run.namespace,
        "graph_name": run.graph_name,
        "graph_version": run.graph_version,
        "status": str(run.status),
        "created_at_ms": run.created_at_ms,
        "updated_at_ms": run.updated_at_ms,
        "state_counts": {str(k): v for k, v in run.state_counts.items()},
        "waiting_for_runtime": run.waiting_for_runtime,
    }


def state_brief(s: StateRow) -> dict[str, Any]:
    return {
        "state_id": s.state_id,
        "identifier": s.identifier,
        "node_name": s.node_name,
        "status": str(s.status),
        "attempt": s.attempt,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
        "runtime_name": s.runtime_name,
        "started_at_ms": s.started_at_ms,
        "ran_ms": s.ran_ms,
    }


def state_full(s: StateRow) -> dict[str, Any]:
    return {
        **state_brief(s),
        "inputs": s.inputs,
        "outputs": None if s.outputs is None else as_list(s.outputs),
        "error": s.error,
        "pruned_data": s.pruned_data,
        "parent_id": s.parent_id,
        "run_at_ms": s.run_at_ms,
    }
