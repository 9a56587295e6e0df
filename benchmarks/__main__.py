"""`make bench` / `make bench-peers`: run the workloads several times, print medians, write JSON and a chart.

python -m benchmarks [--repeat 3] [--quick] [--peers] [--only fanout,latency,userpath,read,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvloop
from rich.console import Console
from rich.table import Table

from benchmarks import harness as h
from benchmarks import user_path as u

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(width=150)

# name: (unit, higher is better, target text, target check)
TARGETS: dict[str, tuple[str, bool, str, Callable[[float], bool]]] = {
    "fanout": ("states/s", True, ">= 35,000", lambda v: v >= 35_000),
    "cpu_us_per_state_scheduler": ("us CPU", False, "<= 20 (fan-out, scheduler)", lambda v: v <= 20),
    "cpu_us_per_state_runtime": ("us CPU", False, "<= 12 (fan-out, runtime)", lambda v: v <= 12),
    "latency_p50": ("ms", False, "<= 1", lambda v: v <= 1),
    "latency_p99": ("ms", False, "<= 3", lambda v: v <= 3),
    "latency_2call_p50": ("ms", False, "(trigger + watch)", lambda v: True),
    "grpc_rtt_p50": ("ms", False, "(bare gRPC round trip: the floor)", lambda v: True),
    "floor_p50": ("ms", False, "(two bare gRPC round trips, in turn with the two below)", lambda v: True),
    "floor_p99": ("ms", False, "(the same, p99: the machine's own tail)", lambda v: True),
    "userpath_p50": ("ms", False, "<= floor + 0.3; >= 1.5x Celery", lambda v: True),
    "userpath_p99": ("ms", False, "<= floor p99 + 1", lambda v: True),
    "trigger_and_wait_p50": ("ms", False, "<= floor + 0.2", lambda v: True),
    "trigger_and_wait_p99": ("ms", False, "(with its states)", lambda v: True),
    "read_first_get_run": ("states/s", True, ">= 100,000 (10k-state run, 1st get_run)", lambda v: v >= 100_000),
    "read_get_run": ("states/s", True, ">= 100,000 (same, get_run again)", lambda v: v >= 100_000),
    "read_wait": ("states/s", True, ">= 100,000 (same, wait)", lambda v: v >= 100_000),
    "chain": ("ms/hop", False, "<= 1", lambda v: v <= 1),
    "runs": ("runs/s", True, ">= 5,000", lambda v: v >= 5_000),
    "runs_single": ("runs/s", True, "(1 run per call)", lambda v: True),
    "scale_seconds": ("s", False, "<= 11x fanout time", lambda v: True),
    "scale_rss": ("MiB", False, "<= 1024", lambda v: v <= 1024),
    "scale_rss_before": ("MiB", False, "(the scheduler before that run)", lambda v: True),
    "scale_bytes_per_state": ("bytes", False, "<= 1,250 (half of 2,500; peak over before)", lambda v: v <= 1250),
}


async def _measure(args: argparse.Namespace) -> dict[str, list[float]]:
    n = 1_000 if args.quick else 10_000
    count = 200 if args.quick else 1_000
    total = 2_000 if args.quick else 10_000
    big = 20_000 if args.quick else 100_000
    only = set(args.only.split(",")) if args.only else None
    results: dict[str, list[float]] = {}

    def want(name: str) -> bool:
        return only is None or name in only

    def add(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    for round_ in range(args.repeat):
        console.print(f"[dim]round {round_ + 1}/{args.repeat}[/]")
        async with h.cluster(runtimes=1, postgres=args.postgres) as c:
            if want("fanout"):
                await h.fanout(c, 200)
                rate, server_us, runtime_us = await h.fanout_profile(c, n)
                add("fanout", rate)
                add("cpu_us_per_state_scheduler", server_us)
                add("cpu_us_per_state_runtime", runtime_us)
                add("fanout_seconds", (n + 2) / results["fanout"][-1])
            if want("latency"):
                add("grpc_rtt_p50", await h.transport_rtt(c, count))
                p50, p99 = await h.latency(c, count)
                add("latency_p50", p50)
                add("latency_p99", p99)
                p50_2, _ = await h.latency(c, count // 2, one_call=False)
                add("latency_2call_p50", p50_2)
            if want("userpath"):
                path = await u.user_path(c, count)
                add("floor_p50", path.floor_p50)
                add("floor_p99", path.floor_p99)
                add("userpath_p50", path.trigger_wait_p50)
                add("userpath_p99", path.trigger_wait_p99)
                add("trigger_and_wait_p50", path.trigger_and_wait_p50)
                add("trigger_and_wait_p99", path.trigger_and_wait_p99)
            if want("read"):
                read = await u.read_run(c, n)
                add("read_first_get_run", read.first_get_run_per_s)
                add("read_get_run", read.get_run_per_s)
                add("read_wait", read.wait_per_s)
            if want("chain"):
                add("chain", await h.chain(c))
            if want("runs"):
                add("runs", await h.runs(c, total, clients=4, in_flight=4, batch=100))
                add("runs_single", await h.runs(c, total // 4, clients=4, in_flight=32))
        if want("scale") and round_ == 0:  # once: a fresh scheduler, so its peak memory is this workload's
            async with h.cluster(runtimes=1, postgres=args.postgres) as c:
                before_mb = c.server_rss_mb()
                started = time.perf_counter()
                states = await h.fanout_staged(c, big)
                add("scale_seconds", time.perf_counter() - started)
                add("scale_rss", c.server_peak_rss_mb())
                add("scale_rss_before", before_mb)
                # What a live state costs: the scheduler's growth to its peak, per state of the run.
                add("scale_bytes_per_state", (c.server_peak_rss_mb() - before_mb) * 2**20 / states)
    results["scale_n"] = [big]
    results["fanout_n"] = [n]
    return results


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def _peer_value(peer: dict[str, Any], key: str) -> float | None:
    w = peer.get("workloads", {})
    try:
        if key == "fanout":
            return float(statistics.median(w["fanout"]["values"]))
        if key in ("latency_p50", "userpath_p50"):  # the peers' submit-then-get is the user's path
            return float(statistics.median(w["latency"]["p50_ms"]))
        if key in ("latency_p99", "userpath_p99"):
            return float(statistics.median(w["latency"]["p99_ms"]))
        if key == "chain":
            return float(statistics.median(w["chain"]["values"]))
        if key in ("runs", "runs_single"):
            return float(statistics.median(w["runs"]["values"]))
    except (KeyError, TypeError, statistics.StatisticsError):
        return None
    return None


# The user's path against the floor measured in the same run, like with like (a p99 against the floor's own p99,
# the machine's tail): at most this many ms above it.
_OVER_FLOOR = {
    "userpath_p50": ("floor_p50", 0.3),
    "userpath_p99": ("floor_p99", 1.0),
    "trigger_and_wait_p50": ("floor_p50", 0.2),
}


def report(
    results: dict[str, list[float]], noise: dict[str, float], peers: dict[str, Any] | None, database: str = "SQLite"
) -> None:
    table = Table(
        title=f"Exosphere benchmarks (medians of rounds; durable {database}; scheduler + runtime + client, 2 cores)"
    )
    for col in ("workload", "median", "min-max", "unit", "target", "met"):
        table.add_column(col)
    peer_names = sorted((peers or {}).get("peers", {}))
    for name in peer_names:
        table.add_column(f"x {name}")
    for key, (unit, higher, target, check) in TARGETS.items():
        values = results.get(key)
        if not values:
            continue
        median = statistics.median(values)
        met = check(median)
        if key == "scale_seconds" and "fanout_seconds" in results:
            ratio = median / statistics.median(results["fanout_seconds"])
            size_ratio = results["scale_n"][0] / results["fanout_n"][0]
            met = ratio <= 1.1 * size_ratio
            target = f"<= {1.1 * size_ratio:.0f}x fanout time (is {ratio:.1f}x)"
        if key in _OVER_FLOOR and _OVER_FLOOR[key][0] in results:
            floor_key, most = _OVER_FLOOR[key]
            over = median - statistics.median(results[floor_key])
            met = over <= most
            celery = _peer_value(peers["peers"]["celery"], key) if peers and "celery" in peers["peers"] else None
            if key == "userpath_p50" and celery:
                met = met and celery / median >= 1.5
            target = f"{target} (is {floor_key.replace('_', ' ')} + {over:.2f})"
        row = [key, _fmt(median), f"{_fmt(min(values))}-{_fmt(max(values))}", unit, target, "yes" if met else "NO"]
        for name in peer_names:
            pv = _peer_value(peers["peers"][name], key) if peers else None
            row.append("" if not pv else f"{(median / pv if higher else pv / median):.1f}x")
        table.add_row(*row)
    console.print(table)
    console.print(
        f"machine noise: a fixed CPU loop took {noise['median_ms']:.1f} ms median "
        f"({noise['min_ms']:.1f}-{noise['max_ms']:.1f}, spread {noise['spread_pct']:.0f}%) across the run"
    )


def chart(results: dict[str, list[float]], peers: dict[str, Any] | None, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        console.print("[yellow]matplotlib not installed: no chart (pip install matplotlib)[/]")
        return False
    names = ["exosphere", *sorted((peers or {}).get("peers", {}))]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (key, label) in zip(
        axes,
        [
            ("fanout", "fan-out states/s"),
            ("runs_single", "runs/s (3-node chain, 1 per call)"),
            ("latency_p50", "p50 ms (trigger_and_wait; peers: submit + get)"),
            ("userpath_p50", "user's path p50 ms (trigger() + wait())"),
        ],
        strict=True,
    ):
        values = []
        for name in names:
            if name == "exosphere":
                values.append(statistics.median(results[key]) if results.get(key) else 0)
            else:
                values.append(_peer_value(peers["peers"][name], key) or 0)  # type: ignore[index]
        ax.bar(names, values, color=["#2b6cb0" if n == "exosphere" else "#a0aec0" for n in names])
        ax.set_title(label)
        if key not in ("latency_p50", "userpath_p50"):
            ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke check")
    parser.add_argument("--peers", action="store_true", help="also run Celery, Dask and Temporal in the same run")
    parser.add_argument("--only", help="comma-separated: fanout,latency,userpath,read,chain,runs,scale")
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        help="run the scheduler on PostgreSQL: a database made on this server per round "
        "(e.g. postgresql://postgres@127.0.0.1:5432/postgres); results go to bench-postgres.*",
    )
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    before = h.machine_noise()
    results = uvloop.run(_measure(args))
    peers = None
    if args.peers:
        from benchmarks.peers.run_all import run_peers

        peers = {"peers": run_peers(quick=args.quick, repeat=args.repeat, only=None)}
    after = h.machine_noise()
    samples = [before[0], after[0]]
    noise = {
        "median_ms": statistics.median(samples),
        "min_ms": min(before[1], after[1]),
        "max_ms": max(before[2], after[2]),
    }
    noise["spread_pct"] = (noise["max_ms"] - noise["min_ms"]) / noise["min_ms"] * 100
    report(results, noise, peers, "PostgreSQL" if args.postgres else "SQLite")
    out = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
        "args": vars(args),
        "noise": noise,
        "exosphere": results,
        "peers": peers,
    }
    stem = "bench-postgres" if args.postgres else "bench"
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2))
    if chart(results, peers, RESULTS / f"{stem}.png"):
        console.print(f"wrote {RESULTS / f'{stem}.json'} and {RESULTS / f'{stem}.png'}")


if __name__ == "__main__":
    main()
