"""A runtime the conformance kit must fail: StoreWrite is missing and Echo's input has a default.

The other nodes are the Python conformance runtime's (examples/conformance/python_runtime.py).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from pydantic import BaseModel

from exosphere import BaseNode, Runtime

_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "conformance" / "python_runtime.py"


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str = "a default the kit does not expect"

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> Outputs:
        return self.Outputs(text=self.inputs.text)


def main() -> None:
    spec = importlib.util.spec_from_file_location("conformance_example", _EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    nodes = [Echo, example.Fail, example.Sleep, example.FanOut]
    namespace = os.environ.get("EXOSPHERE_NAMESPACE", "conformance")
    Runtime(namespace=namespace, name="broken", nodes=nodes, max_concurrency=2).start()


if __name__ == "__main__":
    main()
