"""Runs one Execute item through a node class and turns what happens into a Result message."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Coroutine
from typing import Any

from pydantic import BaseModel, ValidationError

from exosphere._tracing import execution_span, record_result
from exosphere.node import BaseNode
from exosphere.signals import PruneSignal, ReQueueAfterSignal
from exosphere.v1 import common_pb2, runtime_pb2

logger = logging.getLogger(__name__)

__all__ = ["execute_item"]

# A node that prints or returns megabytes fails only its own state: results above this are refused here.
MAX_RESULT_BYTES = 16 * 1024 * 1024
# The scheduler refuses wider results (server/wire.py); refusing here, before any protobuf is built, saves the work
# and the bytes. The message is worded as the scheduler's.
MAX_OUTPUTS_PER_RESULT = common_pb2.LIMIT_MAX_OUTPUTS_PER_RESULT


def _plain(mapping: Any) -> dict[str, str]:
    return {k: mapping[k] for k in mapping}


# Secrets models with nothing in them (no fields, private attributes, extras or validators), validated once: an
# instance holds nothing a node could change, so every state of the node shares it (0.54 us per state otherwise).
_EMPTY_SECRETS: dict[type[BaseModel], BaseModel] = {}


def _no_secrets(node_cls: type[BaseNode]) -> BaseModel:
    """The Secrets of a node given none: validated, so a node that declares required secrets still fails (and
    validating nothing is faster than ``model_construct``: 0.56 against 0.98 us)."""
    model = node_cls.Secrets
    empty = _EMPTY_SECRETS.get(model)
    if empty is not None:
        return empty
    secrets = model.model_validate({})
    decorators = model.__pydantic_decorators__
    holds_nothing = not (
        model.model_fields
        or model.__private_attributes__
        or model.model_config.get("extra") == "allow"
        or decorators.model_validators
        or decorators.field_validators
    )
    if holds_nothing:
        _EMPTY_SECRETS[model] = secrets
    return secrets


def _errored(result: runtime_pb2.Result, exc_type: str, message: str, tb: str = "") -> runtime_pb2.Result:
    result.errored.CopyFrom(common_pb2.StateError(message=message, type=exc_type, traceback=tb))
    return result


def _failed(
    node_cls: type[BaseNode], item: runtime_pb2.Execute, result: runtime_pb2.Result, exc: Exception
) -> runtime_pb2.Result:
    logger.warning(
        "execution failed node=%s state_id=%s attempt=%d error_type=%s",
        node_cls.__name__, item.state_id, item.attempt, type(exc).__name__, exc_info=exc,
    )  # fmt: skip
    tb = "".join(traceback.format_exception(exc, limit=20))
    return _errored(result, type(exc).__name__, str(exc) or repr(exc), tb)


class TooManyOutputsError(ValueError):
    """A node returned more outputs than one result may carry."""


def _outputs_list(node_cls: type[BaseNode], returned: Any) -> list[dict[str, str]]:
    """Normalise what execute returned into a list of output maps, or raise TypeError naming the problem."""
    name = node_cls.__name__
    items: list[Any]
    if returned is None:
        items = []
    elif isinstance(returned, list | tuple):
        if len(returned) > MAX_OUTPUTS_PER_RESULT:  # before validating any of them
            raise TooManyOutputsError(
                f"a result may carry at most {MAX_OUTPUTS_PER_RESULT} outputs (LIMIT_MAX_OUTPUTS_PER_RESULT), "
                f"got {len(returned)}: fan out in stages, or return fewer, larger outputs"
            )
        items = list(returned)
    else:
        items = [returned]
    outputs: list[dict[str, str]] = []
    for index, item in enumerate(items):
        if isinstance(item, node_cls.Outputs):
            model: BaseModel = item
        elif isinstance(item, dict):
            try:
                model = node_cls.Outputs.model_validate(item)
            except ValidationError as exc:
                raise TypeError(f"{name}.execute returned invalid outputs at index {index}: {exc}") from None
        else:
            where = f" at index {index}" if isinstance(returned, list | tuple) else ""
            raise TypeError(
                f"{name}.execute returned {type(item).__name__}{where}; expected {name}.Outputs, "
                "a list of them, or None"
            )
        # Every field is a str (checked when the Runtime was built), so the model's __dict__ is its dump.
        dumped = dict(model.__dict__)
        for key, value in dumped.items():
            if not isinstance(value, str):
                raise TypeError(f"{name}.Outputs field '{key}' must be a str, got {type(value).__name__}")
        outputs.append(dumped)
    return outputs


def execute_item(
    node_cls: type[BaseNode], item: runtime_pb2.Execute, store: Any = None
) -> Coroutine[Any, Any, runtime_pb2.Result]:
    """Execute one state (await what this returns). Never raises except ``CancelledError``: every failure becomes an
    errored result.

    ``store`` is the run's store when it did not travel in ``item`` (Execute.store_as_previous). Without tracing the
    execution's own coroutine is returned, not one more around it.
    """
    if not item.traceparent:  # the scheduler does not trace: no span, one check
        return _execute_item(node_cls, item, store)
    return _traced(node_cls, item, store)


async def _traced(node_cls: type[BaseNode], item: runtime_pb2.Execute, store: Any) -> runtime_pb2.Result:
    with execution_span(item) as span:
        result = await _execute_item(node_cls, item, store)
        if span is not None:
            record_result(span, result)
        return result


async def _execute_item(node_cls: type[BaseNode], item: runtime_pb2.Execute, store: Any = None) -> runtime_pb2.Result:
    result = runtime_pb2.Result(state_id=item.state_id, attempt=item.attempt, dispatch_id=item.dispatch_id)
    try:
        node = node_cls()
        node.inputs = node_cls.Inputs.model_validate(_plain(item.inputs))
    except ValidationError as exc:
        return _errored(result, "InputValidationError", f"{node_cls.__name__} got invalid inputs: {exc}")
    except Exception as exc:  # a node's constructor or a validator of its own raising anything else
        return _failed(node_cls, item, result, exc)
    try:
        secrets = item.secrets
        node.secrets = node_cls.Secrets.model_validate(_plain(secrets)) if secrets else _no_secrets(node_cls)
    except ValidationError as exc:
        # Never echo a secret: describe the problem without the input values.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        return _errored(result, "SecretsValidationError", f"{node_cls.__name__} got invalid secrets: {problems}")
    except Exception as exc:  # never echo a secret: a validator's own error keeps its type, not its message
        return _errored(result, type(exc).__name__, f"{node_cls.__name__} could not read its secrets")
    store = item.store if store is None else store
    store_before = _plain(store) if store else {}
    node.store = dict(store_before)
    try:
        returned = await node.execute()
        outputs = _outputs_list(node_cls, returned)
    except PruneSignal as signal:
        try:
            data_json = json.dumps(signal.data, default=str)
        except (TypeError, ValueError) as exc:
            return _errored(result, "TypeError", f"PruneSignal data is not JSON-serialisable: {exc}")
        result.pruned.data_json = data_json
        return result
    except ReQueueAfterSignal as signal:
        result.requeue_after.delay_ms = max(1, int(signal.delay.total_seconds() * 1000))
        return result
    except Exception as exc:  # a node failing is a result, not a crash of the runtime
        return _failed(node_cls, item, result, exc)
    executed = result.executed
    executed.SetInParent()  # no outputs is still an outcome: the state succeeded with none
    size = 0
    for fields in outputs:
        for value in fields.values():
            size += len(value)
        added = executed.outputs.add().fields
        for key, value in fields.items():  # assignments: faster than update() on a map
            added[key] = value
    if size > MAX_RESULT_BYTES:
        result.ClearField("executed")
        return _errored(
            result,
            "ResultTooLargeError",
            f"{node_cls.__name__} returned {size} bytes of outputs; limit {MAX_RESULT_BYTES}",
        )
    for key, value in node.store.items():
        if store_before.get(key) != value:
            if not isinstance(key, str) or not isinstance(value, str):
                result.ClearField("executed")
                return _errored(result, "TypeError", f"store keys and values must be str, got {key!r}: {value!r}")
            result.store_writes[key] = value
    return result
