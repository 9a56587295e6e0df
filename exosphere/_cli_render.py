"""Rich rendering of graphs, runs and states for the ``exosphere`` command line (see :mod:`exosphere.cli`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from exosphere.models import GraphModel, RunModel, RunStatus, RuntimeModel, StateModel, StateStatus

__all__ = [
    "RunProgress",
    "counts_text",
    "dump_json",
    "graph_list_table",
    "graph_view",
    "run_list_table",
    "run_status_text",
    "run_view",
    "runtime_list_table",
    "waiting_text",
]

STATE_STYLES: dict[str, str] = {
    StateStatus.CREATED.value: "dim",
    StateStatus.QUEUED.value: "cyan",
    StateStatus.EXECUTED.value: "blue",
    StateStatus.SUCCESS.value: "green",
    StateStatus.ERRORED.value: "red",
    StateStatus.RETRY_CREATED.value: "yellow",
    StateStatus.PRUNED.value: "magenta",
    StateStatus.NEXT_CREATED_ERROR.value: "red",
    StateStatus.TIMEDOUT.value: "red",
    StateStatus.CANCELLED.value: "yellow",
}

RUN_STYLES: dict[RunStatus, str] = {
    RunStatus.PENDING: "bold cyan",
    RunStatus.SUCCESS: "bold green",
    RunStatus.FAILED: "bold red",
    RunStatus.CANCELLED: "bold yellow",
}

# States still in flight; every other status is final for that attempt.
LIVE_STATES = frozenset({StateStatus.CREATED.value, StateStatus.QUEUED.value, StateStatus.EXECUTED.value})

# States whose failure is worth a line of its own in the watch view.
_FAILED_STATES = frozenset({StateStatus.ERRORED, StateStatus.TIMEDOUT, StateStatus.NEXT_CREATED_ERROR})

# Table cells show values up to this length; ``--json`` shows them whole.
_MAX_CELL = 80
# A state with more outputs than this shows the first ones and a count of the rest.
_MAX_OUTPUTS = 5


def dump_json(console: Console, value: BaseModel | Sequence[BaseModel] | Any) -> None:
    """Print ``value`` (a model, a list of models, or plain JSON data) as indented JSON, unwrapped and uncoloured."""
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, Sequence) and not isinstance(value, str):
        data = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
    else:
        data = value
    console.out(json.dumps(data, indent=2, ensure_ascii=False), highlight=False)


def _time(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _short(value: str) -> str:
    value = value.replace("\n", "\\n")
    return value if len(value) <= _MAX_CELL else value[: _MAX_CELL - 1] + "…"


def _pairs(values: Mapping[str, str]) -> str:
    return "\n".join(f"{k}={_short(v)}" for k, v in values.items())


def run_status_text(status: RunStatus) -> Text:
    """A run status, coloured."""
    return Text(status.value, style=RUN_STYLES.get(status, ""))


def _state_status_text(status: str) -> Text:
    return Text(status, style=STATE_STYLES.get(status, ""))


def counts_text(counts: Mapping[str, int]) -> Text:
    """State counts by status, like ``SUCCESS 3  ERRORED 1``, coloured."""
    text = Text()
    for status, count in sorted(counts.items()):
        if text:
            text.append("  ")
        text.append(f"{status} {count}", style=STATE_STYLES.get(status, ""))
    return text


def _details(rows: Sequence[tuple[str, RenderableType | str]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in rows:
        grid.add_row(key, value)
    return grid


# ---------------------------------------------------------------------- graphs


def graph_view(graph: GraphModel) -> RenderableType:
    """A graph template: its settings, then one row per node."""
    rows: list[tuple[str, RenderableType | str]] = [
        ("Graph", graph.name),
        ("Namespace", graph.namespace),
        ("Version", str(graph.version)),
        ("Updated", _time(graph.updated_at)),
    ]
    if graph.secret_names:
        rows.append(("Secrets", ", ".join(graph.secret_names)))
    if graph.retry_policy is not None:
        rows.append(("Retry policy", json.dumps(graph.retry_policy.model_dump(mode="json", exclude_none=True))))
    if graph.store_config is not None:
        store = graph.store_config
        if store.required_keys:
            rows.append(("Store keys", ", ".join(store.required_keys)))
        if store.default_values:
            rows.append(("Store defaults", _pairs(store.default_values)))
    for trigger in graph.triggers:
        rows.append(("Trigger", f"{trigger.expression} ({trigger.timezone})"))
    table = Table(title="Nodes", title_justify="left", expand=False)
    for column in ("Identifier", "Node", "Inputs", "Next", "Unites", "Timeout"):
        table.add_column(column)
    for node in graph.nodes:
        table.add_row(
            node.identifier,
            node.node_name if node.namespace == graph.namespace else f"{node.namespace}/{node.node_name}",
            _pairs(node.inputs),
            ", ".join(node.next_nodes or []),
            f"{node.unites.identifier} ({node.unites.strategy.value})" if node.unites else "",
            f"{node.timeout_ms} ms" if node.timeout_ms else "",
        )
    return Group(_details(rows), Text(), table)


def graph_list_table(graphs: Sequence[GraphModel]) -> Table:
    """One row per graph template."""
    table = Table()
    for column in ("Name", "Version", "Nodes", "Triggers", "Updated"):
        table.add_column(column)
    for graph in sorted(graphs, key=lambda g: g.name):
        table.add_row(
            graph.name, str(graph.version), str(len(graph.nodes)), str(len(graph.triggers)), _time(graph.updated_at)
        )
    return table


# ---------------------------------------------------------------------- runs


def run_list_table(runs: Sequence[RunModel]) -> Table:
    """One row per run, in the order given (the scheduler lists them newest first)."""
    table = Table()
    # Ids are never cut (a narrow terminal wraps the other columns): they are what the next command needs.
    table.add_column("Run", min_width=max((len(r.run_id) for r in runs), default=3), no_wrap=True)
    for column in ("Graph", "Status", "Created", "States"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(
            run.run_id,
            f"{run.graph_name} v{run.graph_version}",
            run_status_text(run.status),
            _time(run.created_at),
            counts_text(run.state_counts),
        )
    return table


def _outputs(state: StateModel) -> str:
    lines = [", ".join(f"{k}={_short(v)}" for k, v in output.items()) or "{}" for output in state.outputs]
    if len(lines) > _MAX_OUTPUTS:
        lines = [*lines[:_MAX_OUTPUTS], f"… (+{len(lines) - _MAX_OUTPUTS} more)"]
    return "\n".join(lines)


def _error(state: StateModel) -> str:
    if not state.error:
        return ""
    kind, message = state.error.get("type", ""), state.error.get("message", "")
    return _short(f"{kind}: {message}" if kind and message else kind or message)


def run_view(run: RunModel) -> RenderableType:
    """A run: a header with its status and graph, then one row per state."""
    rows: list[tuple[str, RenderableType | str]] = [
        ("Run", run.run_id),
        ("Graph", f"{run.graph_name} v{run.graph_version}"),
        ("Namespace", run.namespace),
        ("Status", run_status_text(run.status)),
        ("Created", _time(run.created_at)),
        ("Updated", _time(run.updated_at)),
    ]
    if run.store:
        rows.append(("Store", _pairs(run.store)))
    rows.append(("States", counts_text(run.state_counts) if run.state_counts else str(len(run.states))))
    if run.waiting_for_runtime:
        rows.append(("Waiting", waiting_text(run)))
    return Group(_details(rows), Text(), _StatesTable(run.states))


# Below this width `runs show` leaves inputs and outputs out of its table (they stay in --json).
WIDE = 140


class _StatesTable:
    """The states of a run, laid out for the terminal's width: every column on a wide one; on a narrow one (80
    columns) identifier and node, status and attempt share a cell, inputs and outputs are left out, and the state id
    (what `runs retry` needs) is never cut."""

    def __init__(self, states: Sequence[StateModel]) -> None:
        self._states = states

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        wide = options.max_width >= WIDE
        table = Table(title="States", title_justify="left")
        columns = ("Identifier", "Node", "Status", "Attempt", "Ran on", "Inputs", "Outputs", "Error") if wide else (
            "State", "Status", "Ran on", "Error"
        )  # fmt: skip
        for column in columns:
            table.add_column(column, overflow="fold")
        table.add_column("State id", min_width=max((len(s.state_id) for s in self._states), default=8), no_wrap=True)
        for state in self._states:
            ran = f"{state.runtime_name}\n{state.ran_ms} ms" if state.runtime_name else ""
            error = Text(_error(state), style="red")
            state_id = Text(state.state_id, style="dim")
            status = _state_status_text(state.status.value)
            if wide:
                table.add_row(
                    state.identifier, state.node_name, status, str(state.attempt), ran, _pairs(state.inputs),
                    _outputs(state), error, state_id,
                )  # fmt: skip
            else:
                attempt = Text.assemble(status, f"\nattempt {state.attempt}")
                table.add_row(f"{state.identifier}\n{state.node_name}", attempt, ran, error, state_id)
        yield table
        if not wide and self._states:
            yield Text("inputs and outputs: --json, or a terminal at least 140 columns wide", style="dim")


class RunProgress:
    """Live view of a run for ``runs watch``: a progress bar of final states over all states, and failures."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._progress = Progress(
            SpinnerColumn(finished_text="•"),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._task: TaskID | None = None
        self._seen: dict[str, StateStatus] = {}
        self._waiting: list[str] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._progress.stop()

    def update(self, run: RunModel, changed: Sequence[StateModel]) -> None:
        """Show one watch event: ``run`` with its counts by status, and the states that changed."""
        if self._task is None:  # started on the first event, so an unknown run shows only the error
            self._task = self._progress.add_task(run.run_id, total=None, counts="")
            self._progress.start()
        for state in changed:
            if state.status in _FAILED_STATES and self._seen.get(state.state_id) is not state.status:
                line = Text.assemble(
                    (f"{state.identifier} ", "bold"),
                    f"({state.node_name}, attempt {state.attempt}) ",
                    _state_status_text(state.status.value),
                )
                if _error(state):
                    line.append(f"  {_error(state)}", style="red")
                self._progress.console.print(line, soft_wrap=True)
            self._seen[state.state_id] = state.status
        if run.waiting_for_runtime and run.waiting_for_runtime != self._waiting:
            self._progress.console.print(waiting_text(run), soft_wrap=True)
        self._waiting = run.waiting_for_runtime
        total = sum(run.state_counts.values())
        done = sum(n for status, n in run.state_counts.items() if status not in LIVE_STATES)
        description = Text.assemble(f"{run.run_id} ", run_status_text(run.status))
        self._progress.update(
            self._task,
            description=description.markup,
            total=total or None,
            completed=done,
            counts=counts_text(run.state_counts).markup,
        )


def waiting_text(run: RunModel) -> Text:
    """Why a run does not move: nodes it has states ready for that no connected runtime hosts."""
    names = ", ".join(run.waiting_for_runtime)
    return Text(f"waiting for a runtime: no connected runtime hosts {names}", style="yellow")


# ---------------------------------------------------------------------- runtimes


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = max(0.0, (datetime.now(tz=value.tzinfo) - value).total_seconds())
    return f"{seconds:.1f}s ago" if seconds < 60 else f"{seconds / 60:.0f}m ago"


def runtime_list_table(runtimes: Sequence[RuntimeModel]) -> Table:
    """One row per connected runtime; nodes one per line, so the table fits 80 columns."""
    table = Table()
    for column in ("Runtime", "Namespace", "Nodes", "Credit", "Connected", "Heard"):
        table.add_column(column, overflow="fold")  # a narrow terminal wraps ids, never cuts them
    for r in sorted(runtimes, key=lambda r: (r.namespace, r.runtime_name, r.runtime_id)):
        name = Text(r.runtime_name)
        name.append(f"\n{r.runtime_id}", style="dim")
        if r.draining:
            name.append("\ndraining", style="yellow")
        table.add_row(
            name,
            r.namespace,
            "\n".join(r.node_names),
            f"{r.in_flight}/{r.max_concurrency}",
            _time(r.connected_at),
            _ago(r.last_heartbeat),
        )
    return table
