"""The ``exosphere`` command line: apply graph templates, trigger runs, and inspect, watch, cancel and retry them.

Examples::

    exosphere graph apply graph.yaml
    exosphere trigger my-ns my-graph --input text=hello --wait
    exosphere runs list my-ns --graph my-graph
    exosphere runs show RUN_ID --json

The connection options (``--address``, ``--api-key``, ``--tls-ca-file``) may come before or after the command and
default to ``EXOSPHERE_SCHEDULER_ADDRESS``, ``EXOSPHERE_API_KEY`` and ``EXOSPHERE_TLS_CA_FILE``.

Errors print one line to stderr, ``error: ...`` (a graph template's problems follow it, one per line), never a
traceback; set ``EXOSPHERE_DEBUG=1`` to see the traceback of an unexpected error. Exit codes:

* 0: done;
* 1: the scheduler failed the request or cannot be reached, or a run waited for ended FAILED or CANCELLED;
* 2: a usage or input error: bad arguments, an unreadable or invalid graph file, or a request the scheduler
  rejects as invalid (such as a graph template with problems);
* 130: interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from exosphere._cli_input import (
    UsageError,
    load_graph,
    non_negative_int,
    parse_pairs,
    positive_float,
    positive_int,
    text_type,
    validation_details,
)
from exosphere._cli_render import (
    RunProgress,
    counts_text,
    dump_json,
    graph_list_table,
    graph_view,
    run_list_table,
    run_status_text,
    run_view,
    runtime_list_table,
    waiting_text,
)
from exosphere.client import StateManager
from exosphere.config import DEFAULT_ADDRESS, ClientConfig
from exosphere.conformance.command import add_conformance_command
from exosphere.errors import (
    ConnectionFailedError,
    ExosphereError,
    ExosphereTimeoutError,
    GraphValidationError,
    InvalidArgumentError,
)
from exosphere.models import RunModel, RunStatus

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Calls by run or state id do not use the StateManager's namespace; the scheduler checks the run's own.
_ANY_NAMESPACE = "default"
# The scheduler returns at most this many runs per page.
_MAX_RUNS_PAGE = 1000


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}")


@dataclass(frozen=True)
class _Context:
    config: ClientConfig
    out: Console
    err: Console

    def manager(self, namespace: str) -> StateManager:
        return StateManager(namespace, self.config.address, self.config.api_key, tls_ca_file=self.config.tls_ca_file)


_Handler = Callable[[_Context, argparse.Namespace], Coroutine[Any, Any, int]]


def _run_exit_code(run: RunModel) -> int:
    return EXIT_FAILURE if run.status in (RunStatus.FAILED, RunStatus.CANCELLED) else EXIT_OK


async def _graph_apply(ctx: _Context, args: argparse.Namespace) -> int:
    graph = load_graph(args.file, args.namespace, args.name)
    assert graph.namespace is not None and graph.name is not None  # set by load_graph
    async with ctx.manager(graph.namespace) as sm:
        saved = await sm.upsert_graph(
            graph.name,
            graph.nodes,
            secrets=graph.secrets,
            retry_policy=graph.retry_policy,
            store_config=graph.store_config,
            triggers=graph.triggers,
        )
    ctx.out.print(
        f"applied graph [bold]{saved.name}[/] version [bold]{saved.version}[/] "
        f"in namespace {saved.namespace} ({len(saved.nodes)} nodes)",
        highlight=False,
    )
    return EXIT_OK


async def _graph_get(ctx: _Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        graph = await sm.get_graph(args.name)
    if args.json:
        dump_json(ctx.out, graph)
    else:
        ctx.out.print(graph_view(graph))
    return EXIT_OK


async def _graph_list(ctx: _Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        graphs = await sm.list_graphs()
    if args.json:
        dump_json(ctx.out, graphs)
    elif not graphs:
        ctx.err.print(f"no graphs in namespace {args.namespace}", highlight=False)
    else:
        ctx.out.print(graph_list_table(graphs))
    return EXIT_OK


async def _graph_delete(ctx: _Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        await sm.delete_graph(args.name, force=args.force)
    ctx.out.print(f"deleted graph {args.name} from namespace {args.namespace}", highlight=False)
    return EXIT_OK


async def _trigger(ctx: _Context, args: argparse.Namespace) -> int:
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
    return _run_exit_code(run)


async def _follow(ctx: _Context, sm: StateManager, run_id: str, timeout: float | None) -> RunModel:
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


async def _runs_list(ctx: _Context, args: argparse.Namespace) -> int:
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


async def _runs_show(ctx: _Context, args: argparse.Namespace) -> int:
    async with ctx.manager(_ANY_NAMESPACE) as sm:
        run = await sm.get_run(args.run_id)
    if args.json:
        dump_json(ctx.out, run)
    else:
        ctx.out.print(run_view(run))
    return EXIT_OK


async def _runs_watch(ctx: _Context, args: argparse.Namespace) -> int:
    last: RunModel | None = None
    async with ctx.manager(_ANY_NAMESPACE) as sm:
        with RunProgress(ctx.out) as view:
            async for run, changed in sm.watch(args.run_id):
                view.update(run, changed)
                last = run
        if last is None or last.status is RunStatus.PENDING:
            last = await sm.get_run(args.run_id)
    ctx.out.print(
        Text.assemble(f"run {last.run_id} ", run_status_text(last.status), "  ", counts_text(last.state_counts))
    )
    return _run_exit_code(last)


async def _runs_cancel(ctx: _Context, args: argparse.Namespace) -> int:
    async with ctx.manager(_ANY_NAMESPACE) as sm:
        run = await sm.cancel_run(args.run_id)
    ctx.out.print(Text.assemble(f"run {run.run_id} ", run_status_text(run.status)))
    return EXIT_OK


async def _runs_retry(ctx: _Context, args: argparse.Namespace) -> int:
    async with ctx.manager(_ANY_NAMESPACE) as sm:
        state_id = await sm.retry_state(args.state_id, request_id=args.request_id)
    ctx.out.out(state_id, highlight=False)
    return EXIT_OK


async def _nodes_list(ctx: _Context, args: argparse.Namespace) -> int:
    async with ctx.manager(args.namespace) as sm:
        nodes = sorted(await sm.list_nodes())
        online = {name for r in await sm.list_runtimes() if not r.draining for name in r.node_names}
    if args.json:
        dump_json(ctx.out, [{"name": n, "online": n in online} for n in nodes])
    elif not nodes:
        ctx.err.print(f"no nodes registered in namespace {args.namespace}", highlight=False)
    else:
        width = max(len(n) for n in nodes)
        for name in nodes:
            mark = Text("online", style="green") if name in online else Text("offline (no runtime)", style="red")
            ctx.out.print(Text.assemble(name.ljust(width + 2), mark), highlight=False, soft_wrap=True)
    return EXIT_OK


async def _runtimes_list(ctx: _Context, args: argparse.Namespace) -> int:
    namespace = args.namespace or _ANY_NAMESPACE
    async with ctx.manager(namespace) as sm:
        runtimes = await sm.list_runtimes(all_namespaces=not args.namespace)
    if args.json:
        dump_json(ctx.out, runtimes)
    elif not runtimes:
        where = f"in namespace {args.namespace}" if args.namespace else "in any namespace"
        ctx.err.print(f"no runtime connected {where}", highlight=False)
    else:
        ctx.out.print(runtime_list_table(runtimes))
    return EXIT_OK


# ---------------------------------------------------------------------- parser


def _connection_options() -> _Parser:
    # SUPPRESS leaves the options unset unless given, so they may come before or after the command.
    parser = _Parser(add_help=False)
    group = parser.add_argument_group("connection options")
    group.add_argument(
        "--address",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help=f"scheduler address (env EXOSPHERE_SCHEDULER_ADDRESS, default {DEFAULT_ADDRESS})",
    )
    group.add_argument("--api-key", default=argparse.SUPPRESS, metavar="KEY", help="API key (env EXOSPHERE_API_KEY)")
    group.add_argument(
        "--tls-ca-file",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help="CA certificate for TLS; plaintext without it (env EXOSPHERE_TLS_CA_FILE)",
    )
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("exosphere")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``exosphere`` argument parser; each command sets ``handler``."""
    common = _connection_options()
    parser = _Parser(
        prog="exosphere",
        description="Manage Exosphere graph templates and runs.",
        parents=[common],
        epilog="Run 'exosphere COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: argparse._SubParsersAction[_Parser], name: str, handler: _Handler, help_text: str
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    def add_json(sub: argparse.ArgumentParser, what: str) -> None:
        sub.add_argument("--json", action="store_true", help=f"print {what} as JSON")

    graph = commands.add_parser(
        "graph", parents=[common], help="apply, read, list and delete graph templates"
    ).add_subparsers(dest="graph_command", metavar="COMMAND", required=True)
    sub = command(graph, "apply", _graph_apply, "create or replace a graph template from a JSON or YAML file")
    sub.add_argument(
        "file",
        metavar="FILE",
        help="graph file ('-' for stdin) with namespace, name, nodes and optional secrets, retry_policy, "
        "store_config, triggers; a node's namespace defaults to the graph's; omitted secrets keep the stored ones",
    )
    sub.add_argument("--namespace", type=text_type, help="namespace, instead of the file's")
    sub.add_argument("--name", type=text_type, help="graph name, instead of the file's")
    sub = command(graph, "get", _graph_get, "show a graph template")
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("name", type=text_type, metavar="NAME")
    add_json(sub, "the graph")
    sub = command(graph, "list", _graph_list, "list the graph templates of a namespace")
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    add_json(sub, "the graphs")
    sub = command(graph, "delete", _graph_delete, "delete a graph template")
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("name", type=text_type, metavar="NAME")
    sub.add_argument("--force", action="store_true", help="also cancel its pending runs")

    sub = command(commands, "trigger", _trigger, "start a run of a graph and print its id")
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("graph", type=text_type, metavar="GRAPH")
    sub.add_argument("--input", action="append", metavar="KEY=VALUE", help="a run input (repeatable)")
    sub.add_argument("--store", action="append", metavar="KEY=VALUE", help="a store value (repeatable)")
    sub.add_argument("--start-delay", type=non_negative_int, default=0, metavar="MS", help="start after MS ms")
    sub.add_argument(
        "--wait", action="store_true", help="wait for the run to finish and show it; exit 1 unless it succeeded"
    )
    sub.add_argument("--timeout", type=positive_float, metavar="SECONDS", help="give up waiting after SECONDS")
    add_json(sub, "the run")

    runs = commands.add_parser(
        "runs", parents=[common], help="list, show, watch, cancel and retry runs"
    ).add_subparsers(dest="runs_command", metavar="COMMAND", required=True)
    sub = command(runs, "list", _runs_list, "list the runs of a namespace, newest first")
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    sub.add_argument("--graph", type=text_type, help="only runs of this graph")
    sub.add_argument("--status", choices=[s.value for s in RunStatus], help="only runs with this status")
    sub.add_argument("--limit", type=positive_int, default=20, metavar="N", help="at most N runs (default 20)")
    add_json(sub, "the runs")
    sub = command(runs, "show", _runs_show, "show a run and its states")
    sub.add_argument("run_id", type=text_type, metavar="RUN_ID")
    add_json(sub, "the run")
    sub = command(runs, "watch", _runs_watch, "follow a run until it finishes; exit 1 unless it succeeded")
    sub.add_argument("run_id", type=text_type, metavar="RUN_ID")
    sub = command(runs, "cancel", _runs_cancel, "cancel a run")
    sub.add_argument("run_id", type=text_type, metavar="RUN_ID")
    sub = command(runs, "retry", _runs_retry, "retry a failed state and print the new state's id")
    sub.add_argument("state_id", type=text_type, metavar="STATE_ID")
    sub.add_argument(
        "--request-id", type=text_type, metavar="ID", help="idempotency key: retrying twice with it retries once"
    )

    nodes = commands.add_parser("nodes", parents=[common], help="list registered nodes").add_subparsers(
        dest="nodes_command", metavar="COMMAND", required=True
    )
    sub = command(nodes, "list", _nodes_list, "list the nodes registered in a namespace")
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE")
    add_json(sub, "the nodes, each with whether a connected runtime hosts it")

    runtimes = commands.add_parser("runtimes", parents=[common], help="list connected runtimes").add_subparsers(
        dest="runtimes_command", metavar="COMMAND", required=True
    )
    sub = command(runtimes, "list", _runtimes_list, "list the runtimes connected now, their nodes and credit")
    sub.add_argument("namespace", type=text_type, metavar="NAMESPACE", nargs="?", help="only this namespace")
    add_json(sub, "the runtimes")

    add_conformance_command(commands)  # exosphere/conformance/: the kit's options and handler
    return parser


# ---------------------------------------------------------------------- main


def _print_error(console: Console, message: str, details: Sequence[str] = ()) -> None:
    first, *rest = message.strip().splitlines() or ["unknown error"]
    console.print(Text.assemble(("error:", "bold red"), " ", first), soft_wrap=True, highlight=False)
    for line in [*rest, *(f"  - {d}" for d in details)]:
        console.print(Text(line), soft_wrap=True, highlight=False)


def _config(args: argparse.Namespace) -> ClientConfig:
    config = ClientConfig.resolve(
        address=getattr(args, "address", None),
        api_key=getattr(args, "api_key", None),
        tls_ca_file=getattr(args, "tls_ca_file", None),
    )
    if not config.address.strip():
        raise UsageError("the scheduler address is empty")
    if config.tls_ca_file and not Path(config.tls_ca_file).is_file():
        raise UsageError(f"TLS CA file {config.tls_ca_file} does not exist")
    return config


def main(argv: Sequence[str] | None = None, *, stdout: Console | None = None, stderr: Console | None = None) -> int:
    """Run the ``exosphere`` command line.

    Args:
        argv: The arguments, without the program name; ``sys.argv[1:]`` when omitted.
        stdout: Where results go; the standard output when omitted.
        stderr: Where errors and progress go; the standard error when omitted.

    Returns:
        The exit code: 0 done, 1 failed, 2 usage or input error, 130 interrupted.
    """
    out = stdout or Console()
    err = stderr or Console(stderr=True)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_USAGE
    except UsageError as exc:
        _print_error(err, str(exc), exc.details)
        return EXIT_USAGE
    address = getattr(args, "address", None) or "the scheduler"
    try:
        config = _config(args)
        address = config.address
        handler: _Handler = args.handler
        return asyncio.run(handler(_Context(config=config, out=out, err=err), args))
    except UsageError as exc:
        _print_error(err, str(exc), exc.details)
        return EXIT_USAGE
    except GraphValidationError as exc:
        header = str(exc).splitlines()[0] if exc.errors else str(exc)
        _print_error(err, header, exc.errors)
        return EXIT_USAGE
    except ConnectionFailedError as exc:
        reason = " ".join(str(exc).removeprefix("scheduler unavailable: ").split())
        _print_error(err, f"cannot reach the scheduler at {address}: {reason}")
        return EXIT_FAILURE
    except InvalidArgumentError as exc:
        _print_error(err, str(exc))
        return EXIT_USAGE
    except ExosphereError as exc:
        _print_error(err, str(exc) or type(exc).__name__)
        return EXIT_FAILURE
    except ValidationError as exc:
        _print_error(err, f"invalid {exc.title}: {exc.error_count()} problem(s):", validation_details(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        _print_error(err, "interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("EXOSPHERE_DEBUG"):
            raise
        _print_error(err, f"unexpected {type(exc).__name__}: {exc} (set EXOSPHERE_DEBUG=1 for the traceback)")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
