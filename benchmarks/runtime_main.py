"""A benchmark runtime process: `python -m benchmarks.runtime_main NAMESPACE MAX_CONCURRENCY`."""

from __future__ import annotations

import sys

from benchmarks.bench_nodes import NODES
from exosphere import Runtime

if __name__ == "__main__":
    Runtime(namespace=sys.argv[1], name="bench", nodes=NODES, max_concurrency=int(sys.argv[2])).start()
