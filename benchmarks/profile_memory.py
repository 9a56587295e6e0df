"""Where a live state's bytes go: the scheduler under tracemalloc during the 100,000-state fan-out.

python -m benchmarks.profile_memory [--n 100000] [--frames 1] [--top 15]

Runs ``fanout_staged`` (1 -> n / 1,000 -> n -> 1, as ``python -m benchmarks --only scale``) against a scheduler
process that traces its allocations. The scheduler snapshots them before the run and at each new high of traced
memory. Printed: traced memory through the run (the burst of new states, then the states finishing), and per state
of the run the allocation sites that grew most from the first snapshot to the highest. Tracing slows the scheduler
about threefold, which moves what is in flight at the high a little; the RSS figures of ``--only scale`` are the
ones to quote. Writing the snapshots holds the scheduler for seconds after the run, so its runtime may log a lost
stream then.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from benchmarks import harness as h

_SERVE = "--serve-traced"


def _serve(out: Path, frames: int, argv: list[str]) -> None:
    """The scheduler's process: trace, snapshot on SIGUSR1 (the base) and at each high after it, write on SIGUSR2."""
    tracemalloc.start(frames)
    lock = threading.Lock()
    kept: dict[str, Any] = {"base": None, "last": None, "high": 0, "on": False, "timeline": []}

    def poll() -> None:
        while True:
            time.sleep(0.01)
            if not kept["on"]:
                continue
            now = tracemalloc.get_traced_memory()[0]
            kept["timeline"].append(now)
            if now > kept["high"] * 1.02:
                with lock:
                    kept["last"], kept["high"] = tracemalloc.take_snapshot(), tracemalloc.get_traced_memory()[0]

    def start(*_: object) -> None:
        with lock:
            kept["base"], kept["on"] = tracemalloc.take_snapshot(), True
            kept["high"] = tracemalloc.get_traced_memory()[0]

    def write(*_: object) -> None:
        with lock:
            kept["on"] = False
            for name in ("base", "last"):
                if kept[name] is not None:
                    kept[name].dump(str(out / name))
            (out / "timeline").write_text(" ".join(str(v) for v in kept["timeline"][::25]))
            (out / "done").write_text("ok")

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, write)
    threading.Thread(target=poll, name="tracemalloc-poll", daemon=True).start()
    from exosphere_server.__main__ import main

    main(argv)


async def _measure(n: int, frames: int, out: Path) -> int:
    traced = ("benchmarks.profile_memory", _SERVE, str(out), str(frames))
    async with h.cluster(runtimes=1, server_module=traced) as c:
        os.kill(c.server.pid, signal.SIGUSR1)
        await asyncio.sleep(1.0)
        states = await h.fanout_staged(c, n)
        os.kill(c.server.pid, signal.SIGUSR2)
        while not (out / "done").exists():
            await asyncio.sleep(0.2)
    return states


def _report(out: Path, states: int, top: int) -> None:
    base = tracemalloc.Snapshot.load(str(out / "base"))
    timeline = [int(v) / 2**20 for v in (out / "timeline").read_text().split()]
    print("traced MiB every 0.25 s:", " ".join(f"{v:.0f}" for v in timeline))
    stats = tracemalloc.Snapshot.load(str(out / "last")).compare_to(base, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"at the highest: {total / 2**20:.1f} MiB traced above the base, {total / states:,.0f} bytes per state")
    for s in stats[:top]:
        frame = s.traceback[0]
        print(f"  {s.size_diff / states:7.1f} B/state {s.count_diff:9,d} blocks  {frame.filename}:{frame.lineno}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == _SERVE:
        _serve(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--frames", type=int, default=1, help="frames per traceback (more: slower)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exo-memory-") as name:
        states = asyncio.run(_measure(args.n, args.frames, Path(name)))
        _report(Path(name), states, args.top)


if __name__ == "__main__":
    main()
