# Signals as exospherehost's "Signals" page describes them, in the SDK's node style (inputs on self.inputs).
from datetime import timedelta

from exospherehost import BaseNode, PruneSignal, ReQueueAfterSignal, Runtime
from pydantic import BaseModel


class FilterNode(BaseNode):
    class Inputs(BaseModel):
        data: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> Outputs:
        if self.inputs.data == "invalid":
            raise PruneSignal({"reason": "invalid_data", "error": "Data validation failed"})
        return self.Outputs(result="processed")


attempts = {}


class PollingNode(BaseNode):
    class Inputs(BaseModel):
        job_id: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> Outputs:
        attempts[self.inputs.job_id] = attempts.get(self.inputs.job_id, 0) + 1
        if attempts[self.inputs.job_id] < 3:
            # Job still running, poll again shortly
            raise ReQueueAfterSignal(timedelta(milliseconds=100))
        return self.Outputs(result=f"done after {attempts[self.inputs.job_id]} polls")


Runtime(namespace="MyProject", name="SignalsRuntime", nodes=[FilterNode, PollingNode]).start()
