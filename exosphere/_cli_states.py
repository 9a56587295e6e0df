"""``exosphere states show``: one state whole, with its error's traceback (``runs show`` lists them in short)."""

from __future__ import annotations

import argparse

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from exosphere._cli_base import (
    ANY_NAMESPACE,
    EXIT_OK,
    Commands,
    Context,
    Parser,
    add_command,
    add_json,
    split_state_id,
)
from exosphere._cli_input import text_type
from exosphere._cli_render import dump_json, run_status_text
from exosphere.errors import StateNotFoundError
from exosphere.models import RunModel, StateModel

__all__ = ["register", "state_view"]


def _when(state: StateModel) -> str:
    if not state.runtime_name:
        return "not run yet"
    started = state.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if state.started_at else "-"
    return f"{state.runtime_name}, from {started}, took {state.ran_ms} ms"


def state_view(run: RunModel, state: StateModel) -> RenderableType:
    """A state: where it belongs, its status and who ran it, then its inputs, outputs and error with traceback."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows: list[tuple[str, RenderableType | str]] = [
        ("State", state.state_id),
        (
            "Run",
            Text.assemble(f"{run.run_id} ", run_status_text(run.status), f"  ({run.graph_name} v{run.graph_version})"),
        ),
        ("Node", f"{state.identifier} ({state.node_name})"),
        ("Status", Text(state.status.value)),
        ("Attempt", str(state.attempt)),
        ("Ran on", _when(state)),
    ]
    rows += [(f"input {k}", v) for k, v in state.inputs.items()]
    rows += [(f"output {i}" if len(state.outputs) > 1 else "output", ", ".join(f"{k}={v}" for k, v in o.items()))
             for i, o in enumerate(state.outputs)]  # fmt: skip
    if state.error:
        kind, message = state.error.get("type", ""), state.error.get("message", "")
        rows.append(("Error", Text(f"{kind}: {message}" if kind else message, style="red")))
    for key, value in rows:
        grid.add_row(key, value)
    traceback = (state.error or {}).get("traceback", "")
    return Group(grid, Text(), Text(traceback.rstrip(), style="dim")) if traceback else grid


async def _show(ctx: Context, args: argparse.Namespace) -> int:
    async with ctx.manager(ANY_NAMESPACE) as sm:
        run_part, number = split_state_id(args.state_id)
        run = await sm.get_run(run_part)  # the scheduler resolves a unique prefix of a run id
    state_id = f"{run.run_id}-{number}"
    state = next((s for s in run.states if s.state_id == state_id), None)
    if state is None:
        raise StateNotFoundError(state_id)
    if args.json:
        dump_json(ctx.out, state)
    else:
        ctx.out.print(state_view(run, state), soft_wrap=False)
    return EXIT_OK


def register(commands: Commands, common: Parser) -> None:
    states = commands.add_parser("states", parents=[common], help="show a state").add_subparsers(
        dest="states_command", metavar="COMMAND", required=True
    )
    sub = add_command(
        states, "show", _show, "show a state: inputs, outputs, who ran it, its error and traceback", common
    )
    sub.add_argument(
        "state_id", type=text_type, metavar="STATE_ID", help="<run id>-<number>; the run id may be a unique prefix"
    )
    add_json(sub, "the state")
