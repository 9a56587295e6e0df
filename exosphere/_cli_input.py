"""What the CLI reads from the user: ``KEY=VALUE`` options, graph files (YAML or JSON), and typed arguments.

Every problem is a :class:`UsageError` naming it, which ``exosphere`` prints as one line and exits 2 for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exosphere.models import CronTrigger, GraphNodeModel, RetryPolicyModel, StoreConfigModel


class UsageError(Exception):
    """A bad command line or input file; exits with code 2. ``details`` are printed one per line after it."""

    def __init__(self, message: str, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.details = list(details)


# ---------------------------------------------------------------------- inputs


def parse_pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """Parse repeated ``KEY=VALUE`` options into a dict.

    Args:
        values: The option's values, as given.
        option: The option's name, for error messages.

    Returns:
        The pairs; the value is everything after the first ``=`` and may be empty.

    Raises:
        UsageError: A value without ``=``, with an empty key, or a key given twice.
    """
    pairs: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{option} expects KEY=VALUE, got {item!r}")
        if key in pairs:
            raise UsageError(f"{option} key {key!r} given twice")
        pairs[key] = value
    return pairs


class GraphFile(BaseModel):
    """The content of a graph file."""

    model_config = ConfigDict(extra="forbid")
    namespace: str | None = None
    name: str | None = None
    nodes: list[GraphNodeModel]
    secrets: dict[str, str] | None = None
    retry_policy: RetryPolicyModel | None = None
    store_config: StoreConfigModel | None = None
    triggers: list[CronTrigger] = Field(default_factory=list)
    # Written by ``graph get --json`` and ignored, so that its output can be applied again.
    secret_names: list[str] = Field(default_factory=list)
    version: int | None = None
    updated_at: str | None = None


def yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem or exc.context or 'syntax error'} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def read_graph_file(path: str) -> dict[str, Any]:
    """Read a graph file: JSON (``.json``), YAML (``.yaml``, ``.yml``) or, for other names and ``-`` (stdin), either.

    Args:
        path: The file's path, or ``-`` for stdin.

    Returns:
        The file's top-level mapping.

    Raises:
        UsageError: The file cannot be read or parsed, or does not hold a mapping.
    """
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"cannot read {path}: {reason}") from None
    suffix = Path(path).suffix.lower()
    data: Any
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path} is not valid JSON: {exc}") from None
    else:
        # YAML is a superset of JSON, so this reads JSON from files with other names as well.
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            kind = "YAML" if suffix in (".yaml", ".yml") else "JSON or YAML"
            raise UsageError(f"{path} is not valid {kind}: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping with 'name' and 'nodes', not {type(data).__name__}")
    return data


def load_graph(path: str, namespace: str | None = None, name: str | None = None) -> GraphFile:
    """Read and check a graph file; ``namespace`` and ``name`` override the file's.

    A node without a ``namespace``, or with the file's own, gets the graph's namespace.

    Raises:
        UsageError: The file cannot be read, has no namespace or name, or is not a valid graph.
    """
    data = read_graph_file(path)
    file_namespace = data.get("namespace")
    graph_namespace = namespace or file_namespace
    if not isinstance(graph_namespace, str) or not graph_namespace.strip():
        raise UsageError(f"{path} has no 'namespace'; add one or pass --namespace")
    graph_name = name or data.get("name")
    if not isinstance(graph_name, str) or not graph_name.strip():
        raise UsageError(f"{path} has no 'name'; add one or pass --name")
    nodes = data.get("nodes")
    if isinstance(nodes, list):
        nodes = [
            {**node, "namespace": graph_namespace}
            if isinstance(node, dict) and node.get("namespace") in (None, file_namespace)
            else node
            for node in nodes
        ]
    try:
        return GraphFile.model_validate({**data, "namespace": graph_namespace, "name": graph_name, "nodes": nodes})
    except ValidationError as exc:
        raise UsageError(
            f"{path} is not a valid graph: {exc.error_count()} problem(s):", validation_details(exc)
        ) from None


def validation_details(exc: ValidationError) -> list[str]:
    details = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        details.append(f"{where}: {error['msg']}" if where else error["msg"])
    return details


# ---------------------------------------------------------------------- commands


def number_type(kind: type[int] | type[float], minimum: float, what: str) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if number < minimum or (kind is float and number == minimum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}")
        return number

    return parse


def text_type(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("cannot be empty")
    return value.strip()


positive_int = number_type(int, 1, "a positive integer")
non_negative_int = number_type(int, 0, "an integer >= 0")
positive_float = number_type(float, 0, "a positive number of seconds")
