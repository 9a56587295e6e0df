"""The CLI's tables fit 80 columns without cutting ids (runs, states, runtimes, one state), and show more when wider."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console, RenderableType

from exosphere._cli_render import run_list_table, run_view, runtime_list_table
from exosphere._cli_states import state_view
from exosphere.models import RunModel, RunStatus, RuntimeModel, StateModel, StateStatus

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
RUN_ID = "7ced34febe0e40f99924d6a2f00cf2ca"
STATE_ID = f"{RUN_ID}-11"
RUNTIME_ID = "0b6f2a8e-1c3d-4e5f-8a9b-0c1d2e3f4a5b"


def _render(renderable: RenderableType, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert all(len(line) <= width for line in out.splitlines()), out
    return str(out)


def _run() -> RunModel:
    state = StateModel(
        state_id=STATE_ID, run_id=RUN_ID, identifier="summarize", node_name="SummarizeDocument",
        status=StateStatus.ERRORED, inputs={"text": "hello world"}, error={"type": "ValueError", "message": "boom"},
        runtime_name="worker-east-1", ran_ms=12,
    )  # fmt: skip
    return RunModel(
        run_id=RUN_ID, namespace="production", graph_name="summarize-documents", graph_version=3,
        status=RunStatus.FAILED, created_at=NOW, updated_at=NOW, state_counts={"ERRORED": 1}, states=[state],
    )  # fmt: skip


def test_runs_and_states_fit_80_columns_with_whole_ids() -> None:
    listed = _render(run_list_table([_run()]), 80)
    assert RUN_ID in listed
    shown = _render(run_view(_run()), 80)
    assert RUN_ID in shown and STATE_ID in shown
    assert "12 ms" in shown and "--json" in shown  # inputs and outputs are left to --json
    wide = _render(run_view(_run()), 160)
    assert STATE_ID in wide and "text=hello world" in wide and "--json" not in wide


def test_runtimes_fit_80_columns_without_cutting_ids() -> None:
    runtime = RuntimeModel(
        runtime_id=RUNTIME_ID, runtime_name="worker-east-1", namespace="production",
        node_names=["SummarizeDocument", "ExtractEntities"], max_concurrency=64, in_flight=12,
        connected_at=NOW, last_heartbeat=NOW,
    )  # fmt: skip
    out = _render(runtime_list_table([runtime]), 80)
    assert "…" not in out
    cells = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│"))
    assert RUNTIME_ID in cells  # folded over lines, never cut


def test_a_state_fits_80_columns_with_its_whole_id_and_traceback() -> None:
    run = _run()
    state = run.states[0].model_copy(update={"error": {**(run.states[0].error or {}), "traceback": "Traceback ..."}})
    shown = _render(state_view(run, state), 80)
    assert STATE_ID in shown and "ValueError: boom" in shown and "Traceback ..." in shown
