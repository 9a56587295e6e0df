"""`make run`'s script finishes a run and stops everything it started."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "run_demo.py"


async def test_make_run_demo_shows_a_finished_run(tmp_path: Path) -> None:
    env = {**os.environ, "EXOSPHERE_DB": str(tmp_path / "demo.db")}
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(DEMO)], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    assert "WORKFLOWS! SHOULD! BE! FAST! AND! SIMPLE!" in proc.stdout
    assert "Traceback" not in proc.stderr
