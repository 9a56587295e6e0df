"""The ``exosphere`` command line: apply graph templates, trigger runs, and inspect, watch, cancel and retry them.

Examples::

    exosphere graph apply graph.yaml
    exosphere trigger my-ns my-graph --input text=hello --wait
    exosphere runs list my-ns --graph my-graph
    exosphere runs show RUN_ID --json
    exosphere states show 00a3f9-2          # a run id may be shortened to a unique prefix

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
import importlib.metadata
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from exosphere import _cli_graphs, _cli_runs, _cli_runtimes, _cli_states
from exosphere._cli_base import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Commands,
    Context,
    Handler,
    Parser,
)
from exosphere._cli_input import UsageError, validation_details
from exosphere.config import DEFAULT_ADDRESS, ClientConfig
from exosphere.conformance import command as _cli_conformance
from exosphere.errors import ConnectionFailedError, ExosphereError, GraphValidationError, InvalidArgumentError

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

# Each command module adds its commands with ``register(commands, common)``, in this order; a new command is a new
# module with a ``register`` listed here.
COMMAND_MODULES: tuple[Callable[[Commands, Parser], None], ...] = (
    _cli_graphs.register,
    _cli_runs.register,
    _cli_states.register,
    _cli_runtimes.register,
    _cli_conformance.register,  # exosphere conformance: the kit of exosphere/conformance/
)


# ---------------------------------------------------------------------- parser


def _connection_options() -> Parser:
    # SUPPRESS leaves the options unset unless given, so they may come before or after the command.
    parser = Parser(add_help=False)
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
    parser = Parser(
        prog="exosphere",
        description="Manage Exosphere graph templates and runs.",
        parents=[common],
        epilog="Run 'exosphere COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_MODULES:
        register(commands, common)
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
        handler: Handler = args.handler
        return asyncio.run(handler(Context(config=config, out=out, err=err), args))
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
