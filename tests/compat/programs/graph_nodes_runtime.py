# The two nodes exospherehost's "Python SDK" graph page wires together, hosted the way its docs host nodes.
import json

from exospherehost import Runtime, BaseNode
from pydantic import BaseModel


class DataLoaderNode(BaseNode):
    class Inputs(BaseModel):
        source: str

    class Outputs(BaseModel):
        data: str

    class Secrets(BaseModel):
        api_key: str

    async def execute(self) -> Outputs:
        return self.Outputs(data=json.dumps({"source": self.inputs.source, "key_len": len(self.secrets.api_key)}))


class DataProcessorNode(BaseNode):
    class Inputs(BaseModel):
        data: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> Outputs:
        return self.Outputs(result=f"processed {json.loads(self.inputs.data)['source']}")


Runtime(namespace="MyProject", name="GraphRuntime", nodes=[DataLoaderNode, DataProcessorNode]).start()
