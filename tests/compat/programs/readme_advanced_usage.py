# exospherehost python-sdk README, "Advanced Usage": its two nodes verbatim, hosted as its Quick Start does.
from exospherehost import Runtime, BaseNode
from pydantic import BaseModel

class ConfigurableNode(BaseNode):
    class Inputs(BaseModel):
        text: str
        max_length: str = "100"  # v1: strings only

    class Outputs(BaseModel):
        result: str
        length: str  # v1: strings only

    async def execute(self) -> Outputs:
        max_length = int(self.inputs.max_length)
        result = self.inputs.text[:max_length]
        return self.Outputs(result=result, length=str(len(result)))

class RobustNode(BaseNode):
    class Inputs(BaseModel):
        data: str

    class Outputs(BaseModel):
        success: str
        result: str

    async def execute(self) -> Outputs:
        raise Exception("This is a test error")

Runtime(
    namespace="MyProject",
    name="AdvancedUsage",
    nodes=[ConfigurableNode, RobustNode]
).start()
