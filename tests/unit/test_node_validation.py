from __future__ import annotations

from typing import Optional

import pytest
from pydantic import BaseModel

from exosphere import BaseNode, NodeValidationError, Runtime
from exosphere._convert import node_to_schema
from tests.nodes import Concat, Echo


class IntField(BaseNode):
    class Inputs(BaseModel):
        count: int

    async def execute(self) -> None:
        return None


class OptionalField(BaseNode):
    class Outputs(BaseModel):
        maybe: Optional[str]  # noqa: UP045 - the spelling users write

    async def execute(self) -> None:
        return None


class NotAModel(BaseNode):
    class Secrets:
        token: str

    async def execute(self) -> None:
        return None


class NotANode:
    pass


def _errors(*nodes: object) -> str:
    with pytest.raises(NodeValidationError) as info:
        # The point is to pass what is not a node (NotANode), which the type of `nodes` forbids.
        Runtime(namespace="ns", name="rt", nodes=list(nodes))  # type: ignore[arg-type]
    return str(info.value)


def test_every_invalid_node_is_listed_in_one_error() -> None:
    message = _errors(IntField, OptionalField, NotAModel, NotANode, Echo, Echo)
    assert message.startswith("Following errors while validating nodes:")
    assert "IntField.Inputs field 'count' must be of type str, got int" in message
    assert "OptionalField.Outputs field 'maybe' must be of type str, got Optional[str]" in message
    assert "NotAModel does not have an Secrets class that inherits from pydantic.BaseModel" in message
    assert "NotANode does not inherit from exospherehost.BaseNode" in message
    assert "Duplicate node class names found: ['Echo']" in message


def test_models_may_be_omitted() -> None:
    class Bare(BaseNode):
        async def execute(self) -> None:
            return None

    Runtime(namespace="ns", name="rt", nodes=[Bare])


def test_schema_becomes_proto2_descriptors() -> None:
    schema = node_to_schema(Concat)
    assert schema.name == "Concat"
    fields = {f.name: f for f in schema.inputs.field}
    assert [f.name for f in schema.inputs.field] == ["left", "right"]
    assert [f.number for f in schema.inputs.field] == [1, 2]
    assert fields["left"].label == fields["left"].LABEL_REQUIRED
    assert fields["right"].label == fields["right"].LABEL_OPTIONAL
    assert fields["right"].default_value == ""
    assert all(f.type == f.TYPE_STRING for f in schema.inputs.field)
    assert schema.secrets.name == "Secrets" and not schema.secrets.field


def test_exospherehost_builds_on_our_classes() -> None:
    import exosphere
    import exospherehost

    assert issubclass(exospherehost.BaseNode, exosphere.BaseNode)
    assert issubclass(exospherehost.Runtime, exosphere.Runtime)
    assert set(exospherehost.__all__) - {"VERSION"} <= set(exosphere.__all__)
