"""What every ``exosphere`` command module shares: the exit codes, the context a handler gets, and how a command
is added to the parser (see :func:`exosphere.cli.build_parser`, which calls each module's ``register``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

from rich.console import Console

from exosphere._cli_input import UsageError
from exosphere.client import StateManager
from exosphere.config import ClientConfig
from exosphere.models import RunModel, RunStatus

__all__ = [
    "ANY_NAMESPACE",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Commands",
    "Context",
    "Handler",
    "Parser",
    "add_command",
    "add_json",
    "resolve_state_id",
    "run_exit_code",
    "split_state_id",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# Calls by run or state id do not use the StateManager's namespace; the scheduler checks the run's own.
ANY_NAMESPACE = "default"


class Parser(argparse.ArgumentParser):
    """An argument parser that raises :class:`UsageError` instead of printing and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}\n{self.format_usage().rstrip()}")


@dataclass(frozen=True)
class Context:
    """What a command handler gets besides its arguments: the connection settings and the two consoles."""

    config: ClientConfig
    out: Console
    err: Console

    def manager(self, namespace: str) -> StateManager:
        return StateManager(namespace, self.config.address, self.config.api_key, tls_ca_file=self.config.tls_ca_file)


Handler: TypeAlias = Callable[[Context, argparse.Namespace], Coroutine[Any, Any, int]]
# The sub-command group a command module adds its commands to.
Commands: TypeAlias = "argparse._SubParsersAction[Parser]"


def add_command(
    group: Commands, name: str, handler: Handler, help_text: str, common: Parser
) -> argparse.ArgumentParser:
    """Add command ``name`` to ``group``; it takes the connection options (``common``) and runs ``handler``."""
    sub = group.add_parser(name, parents=[common], help=help_text, description=help_text)
    sub.set_defaults(handler=handler)
    return sub


def add_json(sub: argparse.ArgumentParser, what: str) -> None:
    sub.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def run_exit_code(run: RunModel) -> int:
    return EXIT_FAILURE if run.status in (RunStatus.FAILED, RunStatus.CANCELLED) else EXIT_OK


def split_state_id(state_id: str) -> tuple[str, str]:
    """A state id as ``runs show`` prints it, ``<run id>-<number>``, as (run id or a unique prefix of it, number).

    Raises:
        UsageError: ``state_id`` has no ``-<number>`` part.
    """
    run_part, _, number = state_id.rpartition("-")
    if not run_part or not number.isdigit():
        raise UsageError(
            f"state id {state_id!r} is not <run id>-<number>: give it as `runs show` prints it (the run id may be "
            "shortened to a unique prefix)"
        )
    return run_part, number


async def resolve_state_id(sm: StateManager, state_id: str) -> str:
    """A state id (see :func:`split_state_id`) with its run id whole."""
    run_part, number = split_state_id(state_id)
    return f"{await sm.resolve_run_id(run_part)}-{number}"
