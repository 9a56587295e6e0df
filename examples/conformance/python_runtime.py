"""A runtime on the Python SDK that hosts the conformance nodes, for ``exosphere conformance``.

    exosphere conformance -- python examples/conformance/python_runtime.py

The scheduler's address, API key and namespace come from EXOSPHERE_SCHEDULER_ADDRESS, EXOSPHERE_API_KEY and
EXOSPHERE_NAMESPACE, which the kit sets. docs/protocol.md ("Conformance") says what each node does.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from exosphere import BaseNode, Runtime


class ConformanceError(Exception):
    """What Fail raises: the kit expects this type name on the wire."""


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


class Fail(BaseNode):
    class Inputs(BaseModel):
        message: str

    class Outputs(BaseModel):
        message: str

    async def execute(self) -> Outputs:
        raise ConformanceError(self.inputs.message)


class Sleep(BaseNode):
    class Inputs(BaseModel):
        ms: str

    class Outputs(BaseModel):
        ms: str

    async def execute(self) -> Outputs:
        await asyncio.sleep(int(self.inputs.ms) / 1000)
        return self.Outputs(ms=self.inputs.ms)


class FanOut(BaseNode):
    class Inputs(BaseModel):
        count: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[Outputs]:
        return [self.Outputs(item=str(i)) for i in range(int(self.inputs.count))]


class StoreWrite(BaseNode):
    class Inputs(BaseModel):
        key: str
        value: str

    class Outputs(BaseModel):
        key: str

    async def execute(self) -> Outputs:
        self.store[self.inputs.key] = self.inputs.value
        return self.Outputs(key=self.inputs.key)


NODES: list[type[BaseNode]] = [Echo, Fail, Sleep, FanOut, StoreWrite]

if __name__ == "__main__":
    Runtime(
        namespace=os.environ.get("EXOSPHERE_NAMESPACE", "conformance"),
        name="python-conformance",
        nodes=NODES,
        max_concurrency=4,
    ).start()
