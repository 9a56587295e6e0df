"""Nodes: the unit of work users write, and the checks a Runtime runs on them."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, ClassVar

from pydantic import BaseModel

from exosphere.errors import NodeValidationError

__all__ = ["BaseNode", "validate_nodes"]

MODEL_NAMES = ("Inputs", "Outputs", "Secrets")


class BaseNode(ABC):
    """Base class of every node.

    Subclasses declare nested pydantic models ``Inputs``, ``Outputs`` and ``Secrets`` (each may be omitted; every
    field must be annotated exactly ``str``) and implement ``async def execute(self)``, which reads
    ``self.inputs`` and ``self.secrets`` and returns one ``Outputs``, a list of them (fan-out), or ``None``.

    A node may set ``timeout`` (a ``timedelta``): a state running longer is TIMEDOUT and retried by the policy.
    ``self.store`` is the run's store as of dispatch; keys the node sets on it are written back atomically with
    the state's result.
    """

    class Inputs(BaseModel):
        pass

    class Outputs(BaseModel):
        pass

    class Secrets(BaseModel):
        pass

    timeout: ClassVar[timedelta | None] = None

    inputs: Any
    secrets: Any
    store: dict[str, str]

    def __init__(self) -> None:
        self.inputs = None
        self.secrets = None
        self.store = {}

    @abstractmethod
    async def execute(self) -> Any:
        """Run the node. Return ``self.Outputs(...)``, a list of them, or ``None``."""


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _node_errors(node: Any) -> list[str]:
    name = getattr(node, "__name__", repr(node))
    if not (inspect.isclass(node) and issubclass(node, BaseNode)):
        return [f"{name} does not inherit from exospherehost.BaseNode"]
    errors: list[str] = []
    for model_name in MODEL_NAMES:
        model = getattr(node, model_name, None)
        if not (inspect.isclass(model) and issubclass(model, BaseModel)):
            errors.append(f"{name} does not have an {model_name} class that inherits from pydantic.BaseModel")
            continue
        for field_name, field in model.model_fields.items():
            if field.annotation is not str:
                errors.append(
                    f"{name}.{model_name} field '{field_name}' must be of type str, got {_type_name(field.annotation)}"
                )
            elif field.default is not None and not field.is_required() and not isinstance(field.default, str):
                errors.append(f"{name}.{model_name} field '{field_name}' default must be a str")
    if not inspect.iscoroutinefunction(getattr(node, "execute", None)):
        errors.append(f"{name}.execute must be defined with 'async def'")
    elif inspect.isabstract(node):
        errors.append(f"{name} does not implement execute")
    timeout = getattr(node, "timeout", None)
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        errors.append(f"{name}.timeout must be a positive timedelta, got {timeout!r}")
    return errors


def validate_nodes(nodes: Iterable[Any]) -> list[type[BaseNode]]:
    """Check node classes; raise one :class:`NodeValidationError` that lists every problem."""
    nodes = list(nodes)
    errors: list[str] = []
    if not nodes:
        errors.append("no nodes given: pass at least one BaseNode subclass in nodes=[...]")
    for node in nodes:
        errors.extend(_node_errors(node))
    names = [getattr(n, "__name__", repr(n)) for n in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        errors.append(f"Duplicate node class names found: {duplicates}")
    if errors:
        raise NodeValidationError(errors)
    return nodes
