"""The Secrets a node gets when a state carries none (exosphere/_executor.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator

from exosphere import BaseNode
from exosphere._executor import _no_secrets


def _node(secrets: type[BaseModel]) -> type[BaseNode]:
    class Node(BaseNode):
        Secrets = secrets  # type: ignore[assignment]  # any model, as a user declares it

        async def execute(self) -> None:
            return None

    return Node


class Empty(BaseModel):
    pass


class WithPrivate(BaseModel):
    _seen: list[str] = PrivateAttr(default_factory=list)


class Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Checked(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def fresh(cls, data: Any) -> Any:
        return data


class Required(BaseModel):
    api_key: str


def test_an_empty_secrets_model_is_validated_once_and_shared() -> None:
    node = _node(Empty)
    assert _no_secrets(node) is _no_secrets(node)


@pytest.mark.parametrize("model", [WithPrivate, Open, Checked])
def test_a_secrets_model_that_may_hold_something_is_made_for_each_state(model: type[BaseModel]) -> None:
    node = _node(model)
    first, second = _no_secrets(node), _no_secrets(node)
    assert isinstance(first, model) and first is not second


def test_declared_secrets_left_out_still_fail_the_state() -> None:
    with pytest.raises(ValidationError):
        _no_secrets(_node(Required))
