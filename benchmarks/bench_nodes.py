"""No-op nodes for the benchmarks: the cost measured is Exosphere's own."""

from __future__ import annotations

from pydantic import BaseModel

from exosphere import BaseNode


class FanOut(BaseNode):
    class Inputs(BaseModel):
        n: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs]:
        make = self.Outputs
        return [make(item=str(i)) for i in range(int(self.inputs.n))]


class Noop(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> Outputs:
        return self.Outputs(item=self.inputs.item)


class Merge(BaseNode):
    class Inputs(BaseModel):
        items: str

    class Outputs(BaseModel):
        count: str

    async def execute(self) -> Outputs:
        return self.Outputs(count=str(self.inputs.items.count(",") + 1))


NODES = [FanOut, Noop, Merge]
