# exospherehost docs, "Create Runtime → Advanced", verbatim below the two settings lines the page leaves to the
# reader (it reads them from the environment, as its "Environment Configuration" section suggests).
import os

EXOSPHERE_STATE_MANAGER_URI = os.environ["EXOSPHERE_STATE_MANAGER_URI"]
EXOSPHERE_API_KEY = os.environ["EXOSPHERE_API_KEY"]

from exospherehost import Runtime, BaseNode
from pydantic import BaseModel

class MyNode(BaseNode):
    class Inputs(BaseModel):
        data: str

    class Outputs(BaseModel):
        result: str

    class Secrets(BaseModel):
        pass

    async def execute(self) -> Outputs:
        return self.Outputs(result=f"Processed: {self.inputs.data}")

# Create runtime with custom configuration
runtime = Runtime(
    namespace="MyProject",
    name="MyRuntime",
    nodes=[MyNode],
    state_manager_uri=EXOSPHERE_STATE_MANAGER_URI,
    key=EXOSPHERE_API_KEY,
    batch_size=32,
    workers=8,
    poll_interval=2
)

# Start the runtime
runtime.start()
