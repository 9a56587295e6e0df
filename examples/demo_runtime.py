"""The demo's runtime process: `python examples/demo_runtime.py` (reads EXOSPHERE_SCHEDULER_ADDRESS)."""

from __future__ import annotations

from demo_nodes import JoinWords, Shout, SplitWords

from exosphere import Runtime

if __name__ == "__main__":
    Runtime(namespace="demo", name="demo-runtime", nodes=[SplitWords, Shout, JoinWords]).start()
