"""Where the fan-out's CPU goes, per state: py-spy attached to the scheduler and the runtime during fan-outs.

python -m benchmarks.profile_fanout [--n 10000] [--runs 5] [--rate 200]

Runs ``--runs`` fan-outs 1 -> n -> 1 against a real scheduler process and one runtime process while ``py-spy
record`` samples both, then splits each process's CPU time per state (measured from /proc, not from the samples)
over components by the share of samples whose stack passes through them. Needs py-spy (``pip install py-spy``)
and permission to attach to our own children (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

from benchmarks import harness as h

# (component, substrings of a frame): the first component any frame of a stack matches, innermost frame first.
SCHEDULER = [
    ("sqlite commit (writer thread)", ("commit (server/sqlite_store.py", "commit (server/pg_store.py")),
    ("sqlite prepare (rows)", ("prepare (server/sqlite_store.py", "prepare (server/pg_store.py")),
    ("Execute build + write", ("_send (server/runtime_api.py", "_write_loop (server/runtime_api.py")),
    ("Result decode", ("result_from_pb (server/wire.py", "results_from_pb (server/wire.py", "_bound_store_writes")),
    ("engine: results, children, fan-in", ("handle_results (server/engine.py",)),
    ("engine: dispatch", ("dispatch (server/dispatch.py",)),
    ("commit bookkeeping + watchers", ("server/commit.py", "server/watches.py", "_after_commit")),
    ("stream read (grpc)", ("_read_loop (server/runtime_api.py",)),
]
RUNTIME = [
    ("Result write (grpc)", ("_flush (exosphere/runtime.py", "_write_loop (exosphere/runtime.py")),
    ("inputs/secrets validation", ("model_validate", "_no_secrets")),
    ("node execute + outputs", ("execute (benchmarks/bench_nodes.py", "_outputs_list")),
    ("Result build", ("_execute_item (exosphere/_executor.py",)),
    ("per-state task + limiter", ("_run_item (exosphere/runtime.py",)),
    ("Execute read + start", ("_read_loop (exosphere/runtime.py", "_start (exosphere/runtime.py")),
]


def classify(raw: str, components: list[tuple[str, tuple[str, ...]]]) -> dict[str, int]:
    """Samples per component from py-spy's raw (collapsed) output; unmatched stacks count as "other"."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        # The scheduler's modules are server/ in a checkout and exosphere_server/ when run from elsewhere.
        frames = stack.replace("exosphere_server/", "server/").split(";")[::-1]
        name = "other (event loop, grpc, gc)"
        for frame in frames:
            hit = next((c for c, keys in components if any(k in frame for k in keys)), None)
            if hit is not None:
                name = hit
                break
        counts[name] += int(count)
    return dict(counts)


def _record(pid: int, out: Path, rate: int) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--nonblocking",
         "--threads", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _table(title: str, us: float, samples: dict[str, int]) -> None:
    total = sum(samples.values()) or 1
    print(f"\n{title}: {us:.1f} us CPU per state ({total} samples)")
    for name, count in sorted(samples.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<40} {us * count / total:6.1f} us  {100 * count / total:5.1f} %")


async def _measure(args: argparse.Namespace, tmp: Path) -> tuple[list[float], float, float]:
    """Rates of the fan-outs and CPU microseconds per state of the scheduler and the runtime; py-spy writes its
    samples to ``tmp`` meanwhile."""
    async with h.cluster(runtimes=1) as c:
        await h.fanout(c, 200)  # warm up both processes
        spies = [] if args.no_spy else [
            _record(c.server.pid, tmp / "scheduler.txt", args.rate),
            _record(c.runtimes[0].pid, tmp / "runtime.txt", args.rate),
        ]  # fmt: skip
        await asyncio.sleep(1.0 if spies else 0)  # py-spy attaching
        server_before, runtime_before = c.cpu_seconds()
        rates = [(await h.fanout_profile(c, args.n))[0] for _ in range(args.runs)]
        server_after, runtime_after = c.cpu_seconds()
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            await asyncio.to_thread(spy.wait, 30)
    states = (args.n + 2) * args.runs
    return rates, (server_after - server_before) / states * 1e6, (runtime_after - runtime_before) / states * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_fanout")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--no-spy", action="store_true", help="only the CPU per state, without py-spy attached")
    parser.add_argument("--keep", metavar="DIR", help="keep py-spy's raw stacks in DIR")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exo-profile-") as name:
        tmp = Path(name)
        rates, server_us, runtime_us = uvloop.run(_measure(args, tmp))
        print(f"fan-out 1 -> {args.n} -> 1, {args.runs} runs: {', '.join(f'{r:,.0f}' for r in rates)} states/s")
        print(f"CPU per state: scheduler {server_us:.1f} us, runtime {runtime_us:.1f} us")
        if args.no_spy:
            return
        _table("scheduler", server_us, classify((tmp / "scheduler.txt").read_text(), SCHEDULER))
        _table("runtime", runtime_us, classify((tmp / "runtime.txt").read_text(), RUNTIME))
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for name in ("scheduler.txt", "runtime.txt"):
                (Path(args.keep) / name).write_text((tmp / name).read_text())


if __name__ == "__main__":
    main()
