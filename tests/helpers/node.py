"""The Node.js runtime example (examples/node-runtime): skip without Node.js, install its dependencies once."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

NODE_RUNTIME_DIR = Path(__file__).resolve().parents[2] / "examples" / "node-runtime"


async def ensure_node_modules() -> None:
    """Skip without Node.js; install the example's dependencies when they are missing."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed; the Node.js runtime example cannot run")
    if (NODE_RUNTIME_DIR / "node_modules").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("examples/node-runtime/node_modules is missing and npm is not installed to create it")
    proc = await asyncio.create_subprocess_exec(
        npm, "ci", "--silent", cwd=NODE_RUNTIME_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"npm ci failed:\n{out.decode(errors='replace')}"
