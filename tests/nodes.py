"""Nodes shared by the tests."""

from __future__ import annotations

from pydantic import BaseModel

from exosphere import BaseNode


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


class Upper(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text.upper())


class Concat(BaseNode):
    class Inputs(BaseModel):
        left: str
        right: str = ""

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.left + self.inputs.right)
