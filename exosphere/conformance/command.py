"""``exosphere conformance [options] -- COMMAND...``: the command line of the conformance kit."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from rich.console import Console
from rich.text import Text

from exosphere._cli_base import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Commands, Context, Parser
from exosphere.conformance.kit import KitOptions, Report, run_conformance
from exosphere.conformance.scheduler import SchedulerError

__all__ = ["register", "render_report"]

DESCRIPTION = (
    "Check a runtime written in any language against the runtime protocol: start a scheduler (SQLite in a "
    "temporary directory, 127.0.0.1), launch COMMAND with EXOSPHERE_SCHEDULER_ADDRESS, EXOSPHERE_API_KEY and "
    "EXOSPHERE_NAMESPACE set, drive it through every obligation (registration, outputs, fan-out, store writes, "
    "errors, credit, heartbeats, cancel, drain, reconnect) and print one PASS or FAIL line for each. Exit status 0 "
    "only when all pass. COMMAND must host the conformance nodes (docs/protocol.md, Conformance)."
)


def _positive_ms(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 ms, got {value}")
    return value


def _positive_s(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 s, got {text}")
    return value


def register(commands: Commands, common: Parser) -> None:
    """Add ``conformance`` to the ``exosphere`` commands; it starts its own scheduler, so takes no connection
    options (``common``)."""
    sub = commands.add_parser("conformance", help="check a runtime against the protocol", description=DESCRIPTION)
    sub.set_defaults(handler=_handle)
    sub.add_argument("--namespace", default=KitOptions.namespace, help="namespace the runtime registers in")
    sub.add_argument(
        "--lease-ms", type=_positive_ms, default=KitOptions.lease_ms, help="the scheduler's lease (default %(default)s)"
    )
    sub.add_argument(
        "--heartbeat-ms",
        type=_positive_ms,
        default=KitOptions.heartbeat_interval_ms,
        help="the heartbeat interval asked for (default %(default)s)",
    )
    sub.add_argument(
        "--drain-grace-ms",
        type=_positive_ms,
        default=KitOptions.drain_grace_ms,
        help="the drain grace (default %(default)s)",
    )
    sub.add_argument(
        "--timeout",
        type=_positive_s,
        default=KitOptions.step_timeout_s,
        metavar="SECONDS",
        help="give each step this long (default %(default)s)",
    )
    sub.add_argument(
        "--startup-timeout",
        type=_positive_s,
        default=KitOptions.startup_timeout_s,
        metavar="SECONDS",
        help="to register (default %(default)s)",
    )
    sub.add_argument("--keep", type=Path, metavar="DIR", help="keep the logs and database in DIR")
    sub.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND...", help="the runtime to check")


def render_report(report: Report, out: Console) -> None:
    """One line per obligation (PASS or FAIL, expected, seen), then a summary and where the logs are."""
    for outcome in report.outcomes:
        verdict = Text("PASS", style="bold green") if outcome.passed else Text("FAIL", style="bold red")
        detail = f"  {outcome.obligation:<13} expected: {outcome.expected} | seen: {outcome.seen}"
        out.print(Text.assemble(verdict, detail), soft_wrap=True, highlight=False)
    passed = sum(o.passed for o in report.outcomes)
    out.print(Text(f"{passed}/{len(report.outcomes)} obligations passed"), highlight=False)
    if not report.passed and report.runtime_log_tail:
        out.print(Text(f"the runtime's last lines (exit status {report.runtime_status}):"), highlight=False)
        for tail in report.runtime_log_tail:
            out.print(Text(f"  {tail}"), soft_wrap=True, highlight=False)
    if report.kept:
        out.print(Text(f"logs: {report.directory}"), highlight=False)


async def _handle(ctx: Context, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        ctx.err.print(Text("error: give the runtime to check after --: exosphere conformance -- COMMAND..."))
        return EXIT_USAGE
    if shutil.which(command[0]) is None:
        ctx.err.print(Text(f"error: cannot run {command[0]!r}: no such executable"), soft_wrap=True)
        return EXIT_USAGE
    options = KitOptions(
        namespace=args.namespace,
        startup_timeout_s=args.startup_timeout,
        step_timeout_s=args.timeout,
        heartbeat_interval_ms=args.heartbeat_ms,
        lease_ms=args.lease_ms,
        drain_grace_ms=args.drain_grace_ms,
        keep_dir=args.keep,
    )
    try:
        report = await run_conformance(command, options)
    except SchedulerError as exc:
        ctx.err.print(Text(f"error: {exc}"), soft_wrap=True)
        return EXIT_FAILURE
    except OSError as exc:
        ctx.err.print(Text(f"error: cannot run {command[0]!r}: {exc.strerror or exc}"), soft_wrap=True)
        return EXIT_USAGE
    render_report(report, ctx.out)
    return EXIT_OK if report.passed else EXIT_FAILURE
