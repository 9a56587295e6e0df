"""``exosphere trigger`` and ``exosphere runs list|show|watch|cancel|retry``.

A run id may be given whole or by a unique prefix (the scheduler resolves it among the runs the key may read), and
a state id as ``<run id or unique prefix>-<number>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from rich.text import Text

from exosphere._cli_base import (
    ANY_NAMESPACE,
    EXIT_OK,
    Commands,
    Context,
    Parser,
    add_command,
    add_json,
    resolve_state_id,
    run_exit_code,
)
from exosphere._cli_input import UsageError, non_negative_int, parse_pairs, positive_float, positive_int, text_type
from exosphere._cli_render import (
    RunProgress,
    counts_text,
    dump_json,
    run_list_table,
    run_status_text,
    run_view,
    waiting_text,
)
from exosphere.client import StateManager
from exosphere.errors import ExosphereTimeoutError
from exosphere.models import RunModel, RunStatus

__all__ = ["register"]

# The scheduler returns at most this many runs per page.
_MAX_RUNS_PAGE = 1000
_RUN_ID_HELP = "a run id, or a unique prefix of one"


async def _trigger(ctx: Context, args: argparse.Namespace) -> int:
    inputs = parse_pairs(args.input, "--input")
    store = parse_pairs(args.store, "--store")
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout only applies with --wait")
    async with ctx.manager(args.namespace) as sm:
        response = await sm.trigger(args.graph, inputs=inputs, store=store, start_delay=args.start_delay)
        if not args.wait:
            if args.json:
                dump_json(ctx.out, response)
            else:
                ctx.out.out(response.run_id, highlight=False)
            return EXIT_OK
        ctx.err.print(f"run {response.run_id} started", highlight=False)  # at once: the id is known now
        run = await _follow(ctx, sm, response.run_id, args.timeout)
    if args.json:
        dump_json(ctx.out, run)
    else:
        ctx.out.print(run_view(run))
    return run_exit_code(run)


async def _follow(ctx: Context, sm: StateManager, run_id: str, timeout: float | None) -> RunModel:
    """Wait for the run to end, showing progress on a terminal and, anywhere, when it waits for a runtime."""
    waiting: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            with RunProgress(ctx.err) if ctx.err.is_terminal else contextlib.nullcontext() as view:
                async for run, _ in sm.watch(run_id, states=False):
                    if view is not None:
                        view.update(run, [])
                    elif run.waiting_for_runtime and run.waiting_for_runtime != waiting:
                        ctx.err.print(waiting_text(run), soft_wrap=True)
                    waiting = run.waiting_for_runtime
                    if run.status is not RunStatus.PENDING:
                        break
    except TimeoutError:
        raise ExosphereTimeoutError(f"run {run_id} still pending after {timeout}s") from None
    return await sm.get_run(run_id)


async def _list(ctx: Context, args: argparse.Namespace) -> int:
    runs: list[RunModel] = []
    token = ""
    async with ctx.manager(args.namespace) as sm:
        while len(runs) < args.limit:
            page, token = await sm.list_runs(
                args.graph, page_size=min(args.limit - len(runs), _MAX_RUNS_PAGE), page_token=token, status=args.status
            )
            runs.extend(page)
            if not token or not page:
                break
    runs = runs[: args.limit]
    if args.json:
        dump_json(ctx.out, runs)
    elif not runs:
        where = f"graph {args.graph} of namespace {args.namespace}" if args.graph else f"namespace {args.namespace}"
        status = f"{args.status} " if args.status else ""
        ctx.err.print(f"no {status}runs in {where}", highlight=False)
    else:
        ctx.out.print(run_list_table(runs))
    return EXIT_OK


async def _show(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(ANY_NAMESPACE) as sm:
        run = await sm.get_run(args.run_id)
    if args.json:
        dump_json(ctx.out, run)
    else:
        ctx.out.print(run_view(run))
    return EXIT_OK


async def _watch(ctx: Context, args: argparse.Namespace) -> int:
    last: RunModel | None = None
    async with ctx.manager(ANY_NAMESPACE) as sm:
        run_id = await sm.resolve_run_id(args.run_id)
        with RunProgress(ctx.out) as view:
            async for run, changed in sm.watch(run_id):
                view.update(run, changed)
                last = run
        if last is None or last.status is RunStatus.PENDING:
            last = await sm.get_run(run_id)
    ctx.out.print(
        Text.assemble(f"run {last.run_id} ", run_status_text(last.status), "  ", counts_text(last.state_counts))
    )
    return run_exit_code(last)


async def _cancel(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(ANY_NAMESPACE) as sm:
        run = await sm.cancel_run(await sm.resolve_run_id(args.run_id))
    ctx.out.print(Text.assemble(f"run {run.run_id} ", run_status_text(run.status)))
    return EXIT_OK


async def _retry(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(ANY_NAMESPACE) as sm:
        state_id = await sm.retry_state(await resolve_state_id(sm, args.state_id), request_id=args.request_id)
    ctx.out.out(state_id, highlight=False)
    return EXIT_OK


def register(commands: Commands, common: Parser) -> None:
    sub = add_command(commands, "trigger", _trigger, "start a run of a graph and print its id", common)
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("graph", type=text_type, metavar="GRAPH")
    sub.add_argument("--input", action="append", metavar="KEY=VALUE", help="a run input (repeatable)")
    sub.add_argument("--store", action="append", metavar="KEY=VALUE", help="a store value (repeatable)")
    sub.add_argument("--start-delay", type=non_negative_int, default=0, metavar="MS", help="start after MS ms")
    sub.add_argument(
        "--wait",
        action="store_true",
        help="print the run id at once, show progress, and show the run when it ends; exit 1 unless it succeeded",
    )
    sub.add_argument("--timeout", type=positive_float, metavar="SECONDS", help="give up waiting after SECONDS")
    add_json(sub, "the run")

    runs = commands.add_parser(
        "runs", parents=[common], help="list, show, watch, cancel and retry runs"
    ).add_subparsers(dest="runs_command", metavar="COMMAND", required=True)
    sub = add_command(runs, "list", _list, "list the runs of a namespace, newest first", common)
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("--graph", type=text_type, help="only runs of this graph")
    sub.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs with this status")
    sub.add_argument("--limit", type=positive_int, default=20, metavar="N", help="at most N runs (default 20)")
    add_json(sub, "the runs")
    sub = add_command(runs, "show", _show, "show a run and its states", common)
    sub.add_argument("run_id", type=text_type, metavar="RUN_ID", help=_RUN_ID_HELP)
    add_json(sub, "the run")
    sub = add_command(runs, "watch", _watch, "follow a run until it finishes; exit 1 unless it succeeded", common)
    sub.add_argument("run_id", type=text_type, metavar="RUN_ID", help=_RUN_ID_HELP)
    sub = add_command(runs, "cancel", _cancel, "cancel a run", common)
    sub.add_argument("run_id", type=text_type, metavar="RUN_ID", help=_RUN_ID_HELP)
    sub = add_command(runs, "retry", _retry, "retry a failed state and print the new state's id", common)
    sub.add_argument(
        "state_id", type=text_type, metavar="STATE_ID", help="<run id>-<number>; the run id may be a unique prefix"
    )
    sub.add_argument(
        "--request-id", type=text_type, metavar="ID", help="idempotency key: retrying twice with it retries once"
    )
